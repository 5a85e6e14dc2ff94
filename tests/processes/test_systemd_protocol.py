"""What the superdaemon tells systemd, observed on a NOTIFY_SOCKET the test
owns (playing PID 1's part), and ExecReload='s way in: the control socket in
$RUNTIME_DIRECTORY, with no pid file."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from harness.apps import REPORTER, wait_for_reports
from harness.notify_socket import FakeManager
from harness.processes import START_SERVER, free_port, run_start_server, running, worker_env


def test_notify_protocol_and_reload_through_runtime_directory(tmp_path: Path) -> None:
    manager = FakeManager(tmp_path / "notify")
    runtime = tmp_path / "run"
    runtime.mkdir()
    reports = tmp_path / "reports"
    reports.mkdir()
    env = worker_env(
        NOTIFY_SOCKET=str(manager.path),
        RUNTIME_DIRECTORY=str(runtime),
        REPORT_DIR=str(reports),
        REPORTER_NOTIFY="1",
    )
    argv = [START_SERVER, f"--port=127.0.0.1:{free_port()}", "--", *REPORTER]
    with running(argv, env=env) as daemon:
        ready = manager.until("READY")
        assert ready["READY"] == "1"
        assert ready["STATUS"].startswith("generation 1 (pid ")
        (first,) = wait_for_reports(reports, 1)
        assert first["env"]["NOTIFY_SOCKET"] != str(manager.path)
        assert first["env"]["NOTIFY_SOCKET"].startswith("@server-starter/")

        reload = run_start_server("--restart", env=env)
        assert reload.returncode == 0, reload.stderr
        reloading = manager.until("RELOADING")
        assert reloading["RELOADING"] == "1"
        assert int(reloading["MONOTONIC_USEC"]) > 0
        ready = manager.until("READY")
        assert "generation 2 (pid " in ready["STATUS"]
        daemon.wait_for(r"^old worker \d+ died")

        daemon.signal(signal.SIGTERM)
        stopping = manager.until("STOPPING")
        assert stopping["STOPPING"] == "1"
        assert daemon.wait() == 0
    assert not (runtime / "start_server.sock").exists()
    assert os.listdir(runtime) == []


def test_failed_reload_tells_systemd_it_is_ready_again(tmp_path: Path) -> None:
    manager = FakeManager(tmp_path / "notify")
    reports = tmp_path / "reports"
    reports.mkdir()
    flag = tmp_path / "exit-now"
    env = worker_env(
        NOTIFY_SOCKET=str(manager.path),
        RUNTIME_DIRECTORY=str(tmp_path),
        REPORT_DIR=str(reports),
        REPORTER_NOTIFY="1",
    )
    script = f'[ -e "{flag}" ] && exit 3; exec "$@"'
    argv = [
        START_SERVER,
        f"--port=127.0.0.1:{free_port()}",
        "--",
        "sh",
        "-c",
        script,
        "sh",
        *REPORTER,
    ]
    with running(argv, env=env):
        manager.until("READY")
        flag.write_text("")
        reload = run_start_server("--restart", env=env)
        assert reload.returncode == 1
        assert "generation 2 failed to start: exited before it was ready, exit code 3" in (
            reload.stderr
        )
        manager.until("RELOADING")
        ready = manager.until("READY")
        assert ready["STATUS"].startswith("reload failed: generation 2")
        assert "generation 1 (pid " in ready["STATUS"]
