"""The worker side on the release's own python3 and packages, under the
shipped units: Debian's gunicorn on a TCP and a unix socket, a too old
uvicorn refused in one line, and each adapter reloaded under load."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness.app_service import (
    Ab,
    install_app,
    installed_version,
    say,
)
from harness.apps import keep_alive_servers, readme_blocks
from harness.http_clients import http_get
from harness.load import KeepAliveLoad, reloading, run_ab
from harness.machine import Machine
from server_starter.uvicorn_drain import MINIMUM_UVICORN

GUNICORN_PORT = 8081


GUNICORN_SOCKET = "/run/gapp.sock"


def test_gunicorn_from_debian_under_systemd(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reference units with ExecStart= running Debian's python3-gunicorn,
    on a TCP and a unix socket."""
    # The README's lines for gunicorn, as written: its ExecStart= for
    # /srv/myapp/myapp.py, and SystemCallFilter=@setuid (gunicorn's workers
    # call setuid() with their own uid, which ~@privileged forbids).
    machine.run("mkdir", "-p", "/srv/myapp")
    machine.run("cp", "/srv/apps/wsgi_app.py", "/srv/myapp/myapp.py")
    install_app(
        machine,
        "gapp",
        [f"127.0.0.1:{GUNICORN_PORT}", GUNICORN_SOCKET],
        unit_lines=readme_blocks()["gunicorn-unit-lines"],
    )
    machine.run("systemctl", "start", "gapp.socket")
    unix_path = f"/proc/{machine.leader}/root{GUNICORN_SOCKET}"  # the host's way in
    assert http_get(GUNICORN_PORT, timeout=60)[2].split() == ["generation", "1"]
    # A worker may answer before systemd has heard READY=1, and a reload job
    # queued behind the start job is merged into it: wait for the start job.
    machine.run("systemctl", "start", "gapp.service")
    main_pid = machine.show("gapp", "MainPID")
    reloads, durations = 10, []
    with Ab(concurrency=200, port=GUNICORN_PORT) as ab:
        ab.wait_for_traffic()
        for number in range(2, reloads + 2):
            started = time.monotonic()
            machine.run("systemctl", "reload", "gapp")
            durations.append(time.monotonic() - started)
            status_text = machine.show("gapp", "StatusText")
            assert status_text.startswith(f"generation {number} (pid "), status_text
            status, _, _ = http_get(0, unix=unix_path)
            assert status == 200
    assert machine.show("gapp", "MainPID") == main_pid
    assert ab.complete > 1000, ab.output
    assert (ab.failed, ab.non_2xx) == (0, 0), ab.output
    machine.run("systemctl", "stop", "gapp.service")
    assert machine.run("test", "-S", GUNICORN_SOCKET, check=False).returncode == 0
    assert http_get(0, unix=unix_path, timeout=60)[2].split() == ["generation", "1"], (
        "not re-activated"
    )
    machine.run("systemctl", "stop", "gapp.service", "gapp.socket")
    say(
        capsys,
        machine,
        f"Debian's gunicorn {installed_version(machine, 'gunicorn')} -w 4 under systemd: "
        f"{reloads} reloads under ab -c 200: "
        f"{ab.complete} requests, {ab.failed} failed; reload took "
        f"{min(durations):.2f}-{max(durations):.2f}s; {GUNICORN_SOCKET} kept "
        "across reloads and stop",
    )


WORKER_PORT = 8083


# The servers of the worker side, run by the release's /usr/bin/python3 with
# its own packages (uvicorn, gunicorn, uvloop, aiohttp) and ours from the .deb.
WORKER_SIDE = keep_alive_servers("/usr/bin/python3", "/srv/apps")


# What ab asks each for: a path whose body has one length (ab counts another
# length as a failure), answered after 20 to 300 ms, and how many times:
# enough for several reloads (each 0.3 to 1.5 s, aiohttp's slowest to boot).
AB_RUNS = {
    "uvicorn adapter": ("/pause", 8_000),
    "gunicorn + UvicornWorker": ("/pause", 8_000),
    "example app": ("/slow", 12_000),
    "aiohttp adapter": ("/echo", 20_000),
    "asyncio recipe": ("/slow", 12_000),
}


LIBRARIES = {
    "uvicorn adapter": "uvicorn",
    "gunicorn + UvicornWorker": "gunicorn",
    "aiohttp adapter": "aiohttp",
}


def uvicorn_recent_enough(machine: Machine) -> bool:
    version = installed_version(machine, "uvicorn")
    return tuple(map(int, version.split(".")[:2])) >= MINIMUM_UVICORN


def test_a_too_old_uvicorn_is_refused_in_one_line(machine: Machine) -> None:
    """Debian 12's python3-uvicorn (0.17.6): the adapter says what it needs
    in one line and exits 1; gunicorn's worker class says the same."""
    if uvicorn_recent_enough(machine):
        pytest.skip(f"{machine.suite.release}'s python3-uvicorn is recent enough")
    version = installed_version(machine, "uvicorn")
    adapter_argv = ["python3", "-m", "server_starter.uvicorn", "asgi_app:app", "--app-dir=/srv"]
    adapter = machine.run(*adapter_argv, check=False)
    assert adapter.returncode == 1
    assert adapter.stderr == (
        f"server_starter.uvicorn: uvicorn {version} is too old: the drain needs uvicorn "
        "0.22 or later (Debian 12's python3-uvicorn is 0.17.6; pip install 'uvicorn>=0.22' "
        "in a venv)\n"
    )
    worker = machine.run("python3", "-c", "import server_starter.uvicorn_worker", check=False)
    assert worker.returncode == 1
    assert f"UvicornTooOld: uvicorn {version} is too old" in worker.stderr


@pytest.mark.parametrize("name", WORKER_SIDE)
def test_the_worker_side_on_the_releases_own_python(
    name: str, machine: Machine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each adapter under the shipped units, on the release's python3 and
    packages: ``systemctl reload`` every 0.4 s under ab -c 250 (a
    connection per request) and 80 HTTP/1.1 clients reusing their
    connections, at once; nothing fails, no kept-alive connection ends
    unserved, the kernel resets none."""
    if "uvicorn" in " ".join(WORKER_SIDE[name]) and not uvicorn_recent_enough(machine):
        pytest.skip(f"{machine.suite.release}'s python3-uvicorn is too old for the adapter")
    extra = "SystemCallFilter=@setuid\n" if "gunicorn" in name else ""
    install_app(machine, "wapp", [f"127.0.0.1:{WORKER_PORT}"], " ".join(WORKER_SIDE[name]), extra)
    machine.run("systemctl", "start", "wapp.socket", "wapp.service")
    try:
        with (
            KeepAliveLoad(WORKER_PORT, "/slow", threads=40) as slow,
            KeepAliveLoad(WORKER_PORT, "/", threads=40) as fast,
            reloading(lambda: machine.run("systemctl", "reload", "wapp"), 0.4),
        ):
            path, requests = AB_RUNS[name]
            ab = run_ab(f"http://127.0.0.1:{WORKER_PORT}{path}", requests, 250, tmp_path)
        reloads = int(machine.show("wapp", "StatusText").split()[1]) - 1
        python = machine.run("python3", "-c", "import sys; print(sys.version.split()[0])").stdout
    finally:
        machine.run("systemctl", "stop", "wapp.service", "wapp.socket")
    keep_alive = (slow.failures + fast.failures, slow.clean_closes + fast.clean_closes)
    assert ab["requests"] == requests, ab
    assert (ab["failed"], ab["non_2xx"], ab["resets"]) == (0, 0, 0), (ab, keep_alive)
    assert keep_alive == ([], 0)
    assert slow.served > 0 and fast.served > 0
    assert reloads >= 3
    library = ""
    if name in LIBRARIES:
        library = f", {LIBRARIES[name]} {installed_version(machine, LIBRARIES[name])}"
    say(
        capsys,
        machine,
        f"{name} (Python {python.strip()}{library}): {reloads} systemctl reloads under "
        f"ab -c 250 {path} and 80 keep-alive clients: ab {ab['requests']} requests, "
        f"{ab['failed']} failed, {ab['resets']} reset; keep-alive {slow.served + fast.served} "
        f"served, {slow.clean_closes + fast.clean_closes} ended unserved",
    )
