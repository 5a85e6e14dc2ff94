"""Apps that are not gunicorn: asyncio and uvicorn (ASGI) on inherited
sockets, ready on READY=1, draining on TERM.  (The socketserver adapter is
the example app's, tested throughout.)"""

from __future__ import annotations

import http.client
import signal
import socket
import sys
import threading
from pathlib import Path

import pytest

from support import (
    APPS,
    START_SERVER,
    UVICORN_APP,
    free_port,
    generation_of,
    restart,
    running,
    worker_env,
)


def _line_request(port: int, result: list[bytes], in_flight: threading.Event) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        reader = client.makefile("rb")
        assert reader.readline() == b"accepted\n"
        client.sendall(b"hello\n")
        in_flight.set()
        result.append(reader.readline())


def test_asyncio_app_reloads_and_drains(tmp_path: Path) -> None:
    port, pid_file = free_port(), tmp_path / "pid"
    argv = [
        START_SERVER,
        f"--port=127.0.0.1:{port}",
        f"--path={tmp_path / 's.sock'}",
        f"--pid-file={pid_file}",
        "--require-notify",
        "--",
        sys.executable,
        str(APPS / "asyncio_app.py"),
    ]
    with running(argv, env=worker_env()) as daemon:
        daemon.wait_for(r"\(generation 1\) is ready \(READY=1\)")
        assert restart(pid_file).returncode == 0
        result: list[bytes] = []
        in_flight = threading.Event()
        daemon.wait_for(r"^old worker \d+ died")
        client = threading.Thread(target=_line_request, args=(port, result, in_flight))
        client.start()
        assert in_flight.wait(10)
        daemon.signal(signal.SIGTERM)  # while the request sleeps in the handler
        client.join(20)
        assert daemon.wait() == 0
    assert result == [b"generation 2\n"]


def test_uvicorn_app_reloads_and_drains(tmp_path: Path) -> None:
    pytest.importorskip("uvicorn")
    port, pid_file = free_port(), tmp_path / "pid"
    argv = [
        START_SERVER,
        f"--port=127.0.0.1:{port}",
        f"--pid-file={pid_file}",
        "--require-notify",
        "--",
        *UVICORN_APP,
    ]
    with running(argv, env=worker_env()) as daemon:
        daemon.wait_for(r"\(generation 1\) is ready \(READY=1\)")
        assert generation_of(port) == 1
        assert restart(pid_file).returncode == 0
        # The old generation has been signalled, not yet reaped: until it has
        # closed its listener, it may take a new connection and serve it.
        daemon.wait_for(r"^old worker \d+ died")
        assert generation_of(port) == 2
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/slow")
        response = conn.getresponse()  # the headers: the request is in flight for 0.3 s more
        daemon.signal(signal.SIGTERM)
        body = response.read()
        conn.close()
        assert daemon.wait() == 0
    assert (response.status, body) == (200, b"generation 2\n")


def test_uvicorn_outside_start_server_is_a_clear_error() -> None:
    pytest.importorskip("uvicorn")
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "server_starter.uvicorn", "asgi_app:app"],
        capture_output=True,
        text=True,
        timeout=60,
        env=worker_env(),
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("server_starter.uvicorn: no environment variable")
