"""Apps that are not gunicorn: asyncio, uvicorn (ASGI) and aiohttp on
inherited sockets, ready on READY=1, draining on TERM; and the drain's rule
for connections kept alive, one connection at a time.  (The socketserver
adapter, ``listener.adopt_socketserver``, is tested in test_listener.py and
through the README's http.server recipe in test_readme.py.)"""

from __future__ import annotations

import http.client
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.apps import APPS, KEEP_ALIVE_SERVERS, UVICORN_APP
from harness.http_clients import generation_of
from harness.processes import START_SERVER, free_port, restart, running, worker_env


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


def test_uvicorn_options_for_an_app_behind_a_proxy_reach_uvicorn() -> None:
    """The uvicorn options FastAPI apps behind a proxy need are uvicorn's own:
    a factory, root_path, trusted X-Forwarded-For, no Server header, no
    access log; and one uvicorn option with no meaning here is refused."""
    pytest.importorskip("uvicorn")
    port = free_port()
    adapter = [*UVICORN_APP[:3], "asgi_app:make_app", *UVICORN_APP[4:]]
    options = [
        "--factory",
        "--root-path=/api",
        "--forwarded-allow-ips=127.0.0.1",
        "--no-server-header",
        "--no-access-log",
        "--log-level=info",
    ]
    argv = [START_SERVER, f"--port=127.0.0.1:{port}", "--require-notify", "--"]
    with running([*argv, *adapter, *options], env=worker_env()) as daemon:
        daemon.wait_for(r"\(generation 1\) is ready")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/scope", headers={"X-Forwarded-For": "203.0.113.7"})
        response = conn.getresponse()
        body = response.read()
        conn.close()
        assert body == b"root_path=/api client=203.0.113.7\n"
        assert response.getheader("server") is None
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert not [line for line in daemon.lines if "GET /scope" in line], daemon.lines
    import subprocess

    refused = subprocess.run(
        [*UVICORN_APP, "--workers=4"], capture_output=True, text=True, timeout=60, check=False
    )
    assert refused.returncode == 2
    assert "unrecognized arguments: --workers=4" in refused.stderr


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


def test_uvicorn_worker_builds_on_the_uvicorn_worker_package_and_else_on_uvicorns() -> None:
    """Where the uvicorn-worker package is installed (this venv) the worker
    class builds on it, and importing it warns of nothing; where it is not
    (its import made to fail), on uvicorn.workers, whose DeprecationWarning
    is left for the user to see."""
    import subprocess

    show_base = (
        "import server_starter.uvicorn_worker as w; print(w.UvicornWorker.__bases__[0].__module__)"
    )
    installed = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", show_base],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout.split(".")[0] == "uvicorn_worker", installed.stdout
    absent = subprocess.run(
        [
            sys.executable,
            "-W",
            "always::DeprecationWarning",
            "-c",
            f"import sys; sys.modules['uvicorn_worker'] = None; {show_base}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert absent.returncode == 0, absent.stderr
    assert absent.stdout == "uvicorn.workers\n"
    assert "The `uvicorn.workers` module is deprecated" in absent.stderr


def _get(sock: socket.socket) -> tuple[int, bool]:
    """A GET of "/" on a kept-alive connection: (generation, closes after)."""
    sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.read()
    assert response.status == 200
    return int(response.headers["x-server-starter-generation"]), response.will_close


def _at_info_level(command: list[str]) -> list[str]:
    """gunicorn logs a failed close of a socket at INFO: let it say so."""
    return ["--log-level=info" if arg == "--log-level=warning" else arg for arg in command]


@pytest.mark.parametrize("name", KEEP_ALIVE_SERVERS)
def test_a_retiring_generation_serves_its_connections_then_ends_them(name: str) -> None:
    """The drain's rule: a request on a retiring generation's connection is
    served, its reply saying ``Connection: close``, then the server closes
    (a clean end, no reset); an idle connection is left open until it has
    been idle for the keep-alive timeout, then ends cleanly; then the
    retiring generation exits, with status 0."""
    port = free_port()
    argv = [START_SERVER, f"--port=127.0.0.1:{port}", "--require-notify", "--"]
    with (
        running([*argv, *_at_info_level(KEEP_ALIVE_SERVERS[name])], env=worker_env()) as daemon,
        socket.socket() as used,
        socket.socket() as idle,
    ):
        daemon.wait_for(r"\(generation 1\) is ready")
        for sock in (used, idle):
            sock.settimeout(20)
            sock.connect(("127.0.0.1", port))
            assert _get(sock) == (1, False)
        daemon.signal(signal.SIGHUP)
        daemon.wait_for(r"sending TERM to old workers")
        # Until the old worker has taken in its signal it keeps the
        # connection alive; from then on its reply says close.
        replies = [_get(used)]
        deadline = time.monotonic() + 10
        while replies[-1] == (1, False) and time.monotonic() < deadline:
            replies.append(_get(used))
        assert replies[-1] == (1, True), replies
        assert used.recv(1) == b""  # closed by the server, cleanly
        assert idle.recv(1) == b""  # once idle for its keep-alive timeout (bound: 20 s)
        daemon.wait_for(r"^old worker \d+ died, status:0 ", timeout=20)
        assert generation_of(port) == 2
        # gunicorn's close of a descriptor uvloop had closed already
        assert "Error while closing socket" not in daemon.output()


@pytest.mark.parametrize(
    ("app", "error"),
    [
        ("aiohttp_app:app", "no environment variable SERVER_STARTER_PORT"),
        ("aiohttp_app", "the app must be given as module:attribute, not 'aiohttp_app'"),
        ("aiohttp_app:nothing", "module 'aiohttp_app' has no attribute 'nothing'"),
        ("aiohttp_app:GENERATION", "is neither an aiohttp web.Application nor a function"),
        ("no_such_module:app", "No module named 'no_such_module'"),
    ],
)
def test_aiohttp_adapter_errors_are_one_line(app: str, error: str, tmp_path: Path) -> None:
    import subprocess

    env = worker_env()
    if "SERVER_STARTER_PORT" not in error:
        env["SERVER_STARTER_PORT"] = ""  # as under a start_server without --port
    result = subprocess.run(
        [sys.executable, "-m", "server_starter.aiohttp", app, f"--app-dir={APPS}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("server_starter.aiohttp: "), result.stderr
    assert error in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
