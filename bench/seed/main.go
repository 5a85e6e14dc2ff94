// The seed articles' Go program: two HandleFuncs and the graceful-shutdown
// benchmark's /slow, served on the sockets a start_server passed (parsed
// here from SERVER_STARTER_PORT, as lestrrat-go/server-starter's
// listener.ListenAll does), stopped on SIGTERM with http.Server.Shutdown,
// which closes idle keep-alive connections at once.  /echo reads the body
// and answers after 20 ms, like the Python test apps.  READY=1 goes to
// NOTIFY_SOCKET once it serves.
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func listenAll() ([]net.Listener, error) {
	var listeners []net.Listener
	for _, entry := range strings.Split(os.Getenv("SERVER_STARTER_PORT"), ";") {
		if entry == "" {
			continue
		}
		i := strings.LastIndex(entry, "=")
		fd, err := strconv.Atoi(entry[i+1:])
		if i < 0 || err != nil {
			return nil, fmt.Errorf("bad SERVER_STARTER_PORT entry %q", entry)
		}
		l, err := net.FileListener(os.NewFile(uintptr(fd), entry[:i]))
		if err != nil {
			return nil, err
		}
		listeners = append(listeners, l)
	}
	return listeners, nil
}

// notifyReady tells the superdaemon this generation serves (sd_notify's
// READY=1), so that it does not wait for --interval.
func notifyReady() {
	path := os.Getenv("NOTIFY_SOCKET") // Go's net takes "@name" as abstract
	if path == "" {
		return
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		log.Printf("NOTIFY_SOCKET: %v", err)
		return
	}
	defer conn.Close()
	conn.Write([]byte("READY=1"))
}

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "Hello from a HandleFunc #1!\n")
	})
	http.HandleFunc("/endpoint", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "Hello from a HandleFunc #2!\n")
	})
	http.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "Hello, ")
		w.(http.Flusher).Flush()
		time.Sleep(100 * time.Millisecond)
		fmt.Fprintf(w, "Go!\n")
	})
	http.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		time.Sleep(20 * time.Millisecond)
		fmt.Fprintf(w, "read %6d\n", n)
	})
	listeners, err := listenAll()
	if err != nil || len(listeners) == 0 {
		log.Fatalf("no listener from SERVER_STARTER_PORT: %v", err)
	}
	server := &http.Server{}
	var serving sync.WaitGroup
	for _, l := range listeners {
		serving.Add(1)
		go func(l net.Listener) {
			defer serving.Done()
			server.Serve(l)
		}(l)
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM)
	notifyReady()
	<-stop
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	server.Shutdown(ctx)
	serving.Wait()
}
