"""The example app's own contract: its replies, its processes, and how a
generation of several processes serves and drains as one (how it replaces
one and rolls: test_example_app_processes.py)."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time

from harness.apps import EXAMPLE_APP
from harness.http_clients import http_get
from harness.processes import children, pid_alive, serving, worker_env


def raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(request)
        reply = b""
        while chunk := client.recv(4096):
            reply += chunk
    return reply


def test_replies_as_the_seed_program() -> None:
    with serving(
        EXAMPLE_APP, "--require-notify", env=worker_env(EXAMPLE_APP_PROCESSES="1")
    ) as daemon:
        port = daemon.port
        status, headers, body = http_get(port, "/")
        assert (status, body) == (200, "Hello from a HandleFunc #1!\n")
        assert headers["x-server-starter-generation"] == "1"
        assert headers["content-type"] == "text/plain; charset=utf-8"
        assert headers["server"].startswith("server-starter-example Python/")
        assert http_get(port, "/endpoint")[2] == "Hello from a HandleFunc #2!\n"
        assert http_get(port, "/slow?x=1")[2] == "Hello, Python!\n"
        assert http_get(port, "/nowhere")[0] == 404
        assert raw_request(port, b"POST / HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 200 ")
        assert raw_request(port, b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        # HEAD: the head a GET gets, with its length, and no body.
        for path, length in ((b"/", 28), (b"/nowhere", 10)):
            head = raw_request(port, b"HEAD " + path + b" HTTP/1.0\r\n\r\n")
            assert b"\r\nContent-Length: %d\r\n" % length in head
            assert head.endswith(b"\r\n\r\n")
        # A bare-LF client, and one that sends its request in pieces.
        assert raw_request(port, b"GET / HTTP/1.0\n\n").endswith(b"#1!\n")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            for piece in (b"GET /end", b"point HTTP/1.0\r\n", b"\r\n"):
                client.sendall(piece)
                time.sleep(0.05)
            assert client.makefile("rb").read().endswith(b"#2!\n")


def test_processes_serve_together_and_drain_together() -> None:
    with serving(
        EXAMPLE_APP, "--require-notify", env=worker_env(EXAMPLE_APP_PROCESSES="3")
    ) as daemon:
        port = daemon.port
        worker = int(daemon.wait_for(r"starting new worker (\d+)").group(1))
        # The worker is the parent: it serves nothing, its three processes do.
        forked = children(worker)
        assert len(forked) == 3
        # The processes share the accepting: hold many connections at once,
        # see who answers.  Which process the kernel wakes is up to it (one
        # may take a whole burst), so ask again, up to ten bursts.
        answered: set[str] = set()
        lock = threading.Lock()

        def ask() -> None:
            pid = http_get(port, "/slow")[1]["x-worker-pid"]
            with lock:
                answered.add(pid)

        for _ in range(10):
            threads = [threading.Thread(target=ask) for _ in range(60)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            if len(answered) >= 2:
                break
        assert answered <= {str(pid) for pid in forked}
        assert len(answered) >= 2, answered
        # A request in flight in any process is finished by the drain.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"GET /slow HTTP/1.0\r\n\r\n")
            reader = client.makefile("rb")
            assert reader.readline().startswith(b"HTTP/1.0 200")
            daemon.signal(signal.SIGTERM)
            assert reader.read().endswith(b"Hello, Python!\n")
        assert daemon.wait() == 0
    assert daemon.matches(rf"^worker {worker} died, status:0")
    assert daemon.matches(r"\(generation 1\): SIGTERM: draining its 3 processes")
    assert len(daemon.matches(r"\(generation 1\): process \d+ stopped \(exit code 0\)")) == 3
    assert not any(pid_alive(pid) for pid in forked)


def test_a_bad_process_count_is_one_clear_line() -> None:
    result = subprocess.run(
        EXAMPLE_APP,
        capture_output=True,
        text=True,
        timeout=30,
        env=worker_env(SERVER_STARTER_PORT="", EXAMPLE_APP_PROCESSES="none"),
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == (
        "example app: EXAMPLE_APP_PROCESSES must be a whole number from 1, not 'none'\n"
    )


def test_a_bad_body_limit_is_one_clear_line() -> None:
    result = subprocess.run(
        EXAMPLE_APP,
        capture_output=True,
        text=True,
        timeout=30,
        env=worker_env(SERVER_STARTER_PORT="", EXAMPLE_APP_MAX_BODY="1M"),
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == (
        "example app: EXAMPLE_APP_MAX_BODY must be a whole number of bytes, not '1M'\n"
    )
