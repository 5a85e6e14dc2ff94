"""The worker-side API on real sockets, and options that shape the worker's
world (--dir, --log-file with a pipe)."""

from __future__ import annotations

import socket
import socketserver
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.processes import START_SERVER, free_port, running, wait_for_file, worker_env
from server_starter import listener
from server_starter.contract import PortVariableError


@pytest.fixture
def sockets(tmp_path: Path) -> Iterator[list[socket.socket]]:
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(tmp_path / "s.sock"))
    unix.listen()
    made = [tcp, udp, unix]
    try:
        tcp6 = socket.create_server(("::1", 0), family=socket.AF_INET6)
        made.append(tcp6)
    except OSError:
        pass
    yield made
    for sock in made:
        sock.close()


def test_listen_all_returns_every_kind(sockets: list[socket.socket], tmp_path: Path) -> None:
    env = {"SERVER_STARTER_PORT": ";".join(f"key{i}={s.fileno()}" for i, s in enumerate(sockets))}
    assert list(listener.ports(env)) == [f"key{i}" for i in range(len(sockets))]
    found = listener.listen_all(env)
    try:
        kinds = [(s.family, s.type) for s in found]
        assert kinds == [(s.family, s.type) for s in sockets]
        assert [s.getsockname() for s in found] == [s.getsockname() for s in sockets]
    finally:
        for sock in found:
            sock.detach()  # the fixture owns the descriptors


def test_clear_errors_outside_a_superdaemon() -> None:
    with pytest.raises(listener.NotUnderServerStarter, match="start this program under"):
        listener.ports({})
    with pytest.raises(PortVariableError, match="not an open socket"):
        listener.listen_all({"SERVER_STARTER_PORT": "8080=987"})
    with pytest.raises(PortVariableError, match="malformed"):
        listener.ports({"SERVER_STARTER_PORT": "8080"})
    assert listener.generation({}) is None
    assert listener.generation({"SERVER_STARTER_GENERATION": "7"}) == 7


def test_notify_ready_without_a_superdaemon_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert listener.notify_ready() is False


def test_dir_and_piped_log_file(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    log = tmp_path / "piped.log"
    code = "import os; print('cwd=' + os.getcwd(), flush=True); import time; time.sleep(600)"
    argv = [
        START_SERVER,
        f"--port=127.0.0.1:{free_port()}",
        f"--dir={workdir}",
        f"--log-file=| cat >> {log}",
        "--",
        sys.executable,
        "-c",
        code,
    ]
    with running(argv, env=worker_env()) as daemon:
        # Everything goes through the pipe, so wait on the file it feeds.
        text = wait_for_file(log, lambda t: "is ready" in t and f"cwd={workdir}" in t)
        assert "starting new worker" in text
        daemon.signal(15)
        assert daemon.wait() == 0
    assert daemon.output() == ""


@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_adopt_socketserver_serves_the_socket_it_is_given(tmp_path: Path, family: str) -> None:
    """No socket of its own (TCPServer's __init__ would bind one); requests
    on the given one, answered; accept never blocks (a generation sharing
    the socket may win the connection first)."""
    import http.server
    import threading

    if family == "tcp":
        sock = socket.create_server(("127.0.0.1", 0))
        server_class: type[socketserver.TCPServer] = http.server.ThreadingHTTPServer
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(tmp_path / "s.sock"))
        sock.listen()
        server_class = socketserver.ThreadingUnixStreamServer

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "6")
            self.end_headers()
            self.wfile.write(b"hello\n")

        def log_message(self, *args: object) -> None:
            pass

    server = listener.adopt_socketserver(server_class, Hello, sock)
    assert server.socket is sock and server.server_address == sock.getsockname()
    assert sock.getblocking() is False
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        with socket.socket(sock.family) as client:
            client.settimeout(10)
            client.connect(sock.getsockname())
            client.sendall(b"GET / HTTP/1.0\r\n\r\n")
            reply = b""
            while chunk := client.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.0 200") and reply.endswith(b"hello\n")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert sock.fileno() == -1  # server_close() closed the adopted socket
