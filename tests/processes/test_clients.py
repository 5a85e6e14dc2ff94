"""The clients people really run under start_server: Starman (Perl's PSGI
server, through Net::Server::SS::PreFork) reloaded under load, and the notify
clients that make a generation ready under --require-notify."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from harness.apps import APPS
from harness.load import reloading, run_ab
from harness.processes import ROOT, START_SERVER, free_port, restart, running, worker_env
from harness.reporting import report

WORKERS = ROOT / "tests" / "workers"
REQUESTS = 50_000
STARMAN_SECONDS = 8


@pytest.mark.parametrize(
    "command",
    [
        pytest.param([sys.executable, str(WORKERS / "notifier.py"), "sdnotify"], id="sdnotify"),
        pytest.param(
            [sys.executable, str(WORKERS / "notifier.py"), "systemd"], id="systemd.daemon.notify"
        ),
        pytest.param([str(WORKERS / "notifier.sh")], id="systemd-notify"),
    ],
)
def test_notify_clients_make_a_generation_ready(tmp_path: Path, command: list[str]) -> None:
    pid_file = tmp_path / "pid"
    argv = [
        START_SERVER,
        f"--port=127.0.0.1:{free_port()}",
        f"--pid-file={pid_file}",
        "--require-notify",
        "--ready-timeout=20",
        "--",
        *command,
    ]
    with running(argv, env=worker_env()) as daemon:
        daemon.wait_for(r"\(generation 1\) is ready \(READY=1\)")
        result = restart(pid_file)
        assert result.returncode == 0, result.stderr
        assert daemon.matches(r"\(generation 2\) is ready \(READY=1\)")
        daemon.wait_for(r"^old worker \d+ died, status:0 ")


@pytest.mark.load
@pytest.mark.skipif(shutil.which("starman") is None, reason="Debian's starman is not installed")
def test_starman_reloads_under_load(tmp_path: Path, capsys: object) -> None:
    port, pid_file = free_port(), tmp_path / "pid"
    argv = [
        START_SERVER,
        f"--port=127.0.0.1:{port}",
        f"--pid-file={pid_file}",
        "--signal-on-hup=QUIT",  # Starman's graceful stop: finish requests, then exit
        "--",
        "starman",
        "--workers=4",
        "--preload-app",
        str(APPS / "hello.psgi"),
    ]
    with running(argv, env=worker_env()) as daemon:
        daemon.wait_for(r"\(generation 1\) is ready")
        with reloading(lambda: daemon.signal(1), every=0.5):
            # For a time, not a count: HUPs during a start coalesce, so the
            # generations follow the run's length, not ab's speed.
            result = run_ab(
                f"http://127.0.0.1:{port}/", 10_000_000, 200, tmp_path, seconds=STARMAN_SECONDS
            )
        generations = len(daemon.matches(r"starting new worker"))
        daemon.wait_for(r"^old worker \d+ died", count=generations - 1, timeout=60)
    report(
        capsys,
        f"Starman --workers=4 under --signal-on-hup=QUIT: ab -r -t {STARMAN_SECONDS} -c 200, "
        f"{generations} generations: {result['requests']} requests, "
        f"{max(result['failures_by_kind'].values())} lost ({result['failures_by_kind']})",
    )
    assert generations >= 5
    assert result["requests"] > 10_000
    assert result["refused"] == 0 and result["non_2xx"] == 0
    # Starman itself drops a request whose headers it is reading when its
    # graceful stop reaches the child (a read interrupted by the signal is not
    # retried; Starman 0.4016): at most about one per reload, never a refused
    # connection.  `--signal-on-hup=TERM` loses every request in progress.
    # (ab counts a lost request once for each kind of failure it shows.)
    lost = max(result["failures_by_kind"].values())
    assert lost <= generations, result["failures_by_kind"]
