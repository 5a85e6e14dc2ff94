"""Stopping: drains in-flight requests, kills what ignores its signal, and
never orphans a worker whatever signal ends the superdaemon."""

from __future__ import annotations

import http.client
import re
import signal
import socket
import sys
from pathlib import Path

import pytest

from harness.apps import APPS, EXAMPLE_APP, REPORTER, wait_for_reports
from harness.processes import (
    START_SERVER,
    Terminal,
    free_port,
    pid_alive,
    run_start_server,
    serving,
    worker_env,
)


def test_stop_drains_a_request_in_flight(tmp_path: Path) -> None:
    pid_file, status_file = tmp_path / "pid", tmp_path / "status"
    with serving(EXAMPLE_APP, f"--pid-file={pid_file}", f"--status-file={status_file}") as daemon:
        port = daemon.port
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"GET /slow HTTP/1.0\r\n\r\n")
            received = b""
            while b"Hello, " not in received:  # the handler has flushed and is now sleeping
                chunk = client.recv(4096)
                assert chunk, received
                received += chunk
            daemon.signal(signal.SIGTERM)
            while chunk := client.recv(4096):
                received += chunk
        assert received.startswith(b"HTTP/1.0 200")
        assert received.endswith(b"Hello, Python!\n")
        assert daemon.wait() == 0
        daemon.wait_for(r"^exiting$")
    assert not pid_file.exists()
    assert not status_file.exists()


# A request each app answers in two parts, 0.1 to 0.5 s apart: its head and
# first part say it is in flight.
IN_FLIGHT = {
    "example app": (EXAMPLE_APP, "/slow", b"Hello, Python!\n"),
    "gunicorn": (
        [
            *[sys.executable, "-m", "gunicorn", "-c", "python:server_starter.gunicorn"],
            *[f"--chdir={APPS}", "-w", "2", "wsgi_app:app"],
        ],
        "/stream",
        b"first part\nsecond part\n",
    ),
    "asyncio recipe": ([sys.executable, str(APPS / "asyncio_http_app.py")], "/stream", b"hello\n"),
}


@pytest.mark.parametrize("name", IN_FLIGHT)
def test_ctrl_c_in_a_terminal_drains_like_sigint(name: str) -> None:
    """start_server in a pseudo-terminal, as a person runs it: Ctrl-C makes
    the terminal signal its whole foreground process group, yet the workers
    hear only the superdaemon's TERM: the request in flight is answered in
    full, nothing prints a traceback, and start_server exits 0."""
    worker, path, body = IN_FLIGHT[name]
    port = free_port()
    argv = [START_SERVER, f"--port=127.0.0.1:{port}", "--require-notify", "--", *worker]
    with Terminal(argv, env=worker_env()) as terminal:
        terminal.wait_for(r"is ready")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path)
        response = conn.getresponse()
        first = response.read1()  # the head and a first part: in flight
        terminal.type(b"\x03")  # Ctrl-C
        rest = response.read()
        conn.close()
        assert terminal.wait() == 0, terminal.output
    assert (response.status, first + rest) == (200, body)
    assert "Traceback" not in terminal.output, terminal.output
    assert "KeyboardInterrupt" not in terminal.output, terminal.output
    assert re.search(r"received INT, sending TERM to all workers:\d+", terminal.output)


def test_worker_ignoring_term_is_killed_after_the_stop_timeout(tmp_path: Path) -> None:
    env = worker_env(REPORT_DIR=str(tmp_path), REPORTER_IGNORE="TERM")
    with serving(REPORTER, "--stop-timeout=1", env=env) as d:
        (worker,) = wait_for_reports(tmp_path, 1)
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
        d.wait_for(r"still running 1s after its signal, sending KILL")
        d.wait_for(r"worker \d+ died, status:9 \(killed by SIGKILL\)")
    assert not pid_alive(worker["pid"])


def test_old_generation_ignoring_its_signal_is_killed(tmp_path: Path) -> None:
    env = worker_env(REPORT_DIR=str(tmp_path), REPORTER_IGNORE="TERM")
    with serving(REPORTER, "--stop-timeout=1", "--interval=0.2", env=env) as d:
        d.signal(signal.SIGHUP)
        d.wait_for(r"\(generation 2\) is ready")
        d.wait_for(r"worker \d+ \(generation 1\) still running 1s after its signal, sending KILL")
        d.wait_for(r"^old worker \d+ died, status:9")
        assert d.proc.poll() is None


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGQUIT, signal.SIGTERM])
def test_no_signal_orphans_a_worker(tmp_path: Path, stop_signal: signal.Signals) -> None:
    sock_path = tmp_path / "app.sock"
    with serving(
        REPORTER, f"--path={sock_path}", env=worker_env(REPORT_DIR=str(tmp_path))
    ) as daemon:
        (worker,) = wait_for_reports(tmp_path, 1)
        assert sock_path.is_socket()
        daemon.signal(stop_signal)
        assert daemon.wait() == 0
        name = stop_signal.name.removeprefix("SIG")
        daemon.wait_for(rf"^received {name}, sending TERM to all workers:{worker['pid']}$")
    assert not pid_alive(worker["pid"])
    assert not sock_path.exists(), "the unix socket start_server created is removed"


def test_stop_command_waits_for_exit(tmp_path: Path) -> None:

    pid_file = tmp_path / "pid"
    env = worker_env(REPORT_DIR=str(tmp_path))
    with serving(REPORTER, f"--pid-file={pid_file}", env=env) as daemon:
        result = run_start_server("--stop", f"--pid-file={pid_file}")
        assert result.returncode == 0, result.stderr
        assert daemon.proc.poll() is not None, "--stop returned before start_server exited"
