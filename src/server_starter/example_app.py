"""The example app: the seed articles' Go program, ported.

Serves ``/`` and ``/endpoint`` (the two HandleFuncs) and ``/slow`` (the
graceful-shutdown benchmark handler: writes "Hello, ", flushes, sleeps
100 ms, writes the rest) on every inherited stream socket, tells the
superdaemon it is ready, and on SIGTERM stops accepting, finishes the
requests in flight and exits 0.

Every response carries ``X-Server-Starter-Generation`` and
``X-Worker-Pid`` so a client can see which generation answered.

Configuration (environment, e.g. through ``--envdir``, so it can change
between reloads):

- ``EXAMPLE_APP_FAIL``: if set and not empty, exit 1 at start with this text
  (a broken deploy).
- ``EXAMPLE_APP_BOOT_SECONDS``: sleep this long before serving (a slow boot).
- ``EXAMPLE_APP_MESSAGE``: replaces "Hello" in the replies.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import listener


class Handler(BaseHTTPRequestHandler):
    server_version = "server-starter-example"
    timeout = 10  # a client that connects and says nothing cannot hold up a drain
    # One request per connection: draining never waits on idle keep-alives.
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        greeting = os.environ.get("EXAMPLE_APP_MESSAGE", "Hello")
        if self.path == "/":
            self._reply(f"{greeting} from a HandleFunc #1!\n")
        elif self.path == "/endpoint":
            self._reply(f"{greeting} from a HandleFunc #2!\n")
        elif self.path == "/slow":
            self._reply(f"{greeting}, ", rest="Python!\n", pause=0.1)
        else:
            self.send_error(404)

    def _reply(self, body: str, rest: str = "", pause: float = 0.0) -> None:
        first, second = body.encode(), rest.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(first) + len(second)))
        self.send_header("X-Server-Starter-Generation", str(listener.generation() or 0))
        self.send_header("X-Worker-Pid", str(os.getpid()))
        self.end_headers()
        self.wfile.write(first)
        if second:
            self.wfile.flush()
            time.sleep(pause)
            self.wfile.write(second)

    def log_message(self, format: str, *args: object) -> None:
        pass  # access logs would drown the superdaemon's lifecycle log


class Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the request threads: that is the drain
    block_on_close = True

    def get_request(self) -> tuple[socket.socket, object]:
        conn, address = self.socket.accept()
        conn.setblocking(True)
        return conn, address or ("unix", 0)

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client hung up mid-reply (a load tool stopping): no traceback
        super().handle_error(request, client_address)


def main() -> int:
    failure = os.environ.get("EXAMPLE_APP_FAIL")
    if failure:
        print(f"example app: refusing to start: {failure}", file=sys.stderr)
        return 1
    try:
        sockets = [s for s in listener.listen_all() if s.type == socket.SOCK_STREAM]
    except listener.NotUnderServerStarter as err:
        print(f"example app: {err}", file=sys.stderr)
        return 1
    if not sockets:
        print("example app: no stream socket in SERVER_STARTER_PORT", file=sys.stderr)
        return 1

    # Block the stop signals before any thread starts (threads inherit the
    # mask), then wait for them synchronously: a handler could run late,
    # because the kernel may deliver the signal to a request thread.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    boot = float(os.environ.get("EXAMPLE_APP_BOOT_SECONDS", "0") or 0)
    if boot > 0 and signal.sigtimedwait(stop_signals, boot) is not None:
        return 0

    # adopt_socketserver creates no socket of its own, which also matters to a
    # unit with RestrictAddressFamilies=AF_UNIX.
    servers = [listener.adopt_socketserver(Server, Handler, sock) for sock in sockets]
    threads = [
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2}) for s in servers
    ]
    for thread in threads:
        thread.start()
    listener.notify_ready(f"generation {listener.generation()} serving")
    signal.sigwait(stop_signals)
    listener.notify_stopping()
    for server in servers:
        server.shutdown()  # stop accepting; the listening socket stays open for the next generation
    for server in servers:
        server.server_close()  # waits for in-flight requests
    return 0


if __name__ == "__main__":
    sys.exit(main())
