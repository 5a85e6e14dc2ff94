"""Reloads with the example app: under load, and when the new generation fails."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness.apps import EXAMPLE_APP
from harness.http_clients import generation_of, http_get
from harness.load import Load
from harness.processes import ROOT, START_SERVER, free_port, restart, running, serving, worker_env


@pytest.mark.load
@pytest.mark.parametrize("path", ["/", "/slow"])
def test_reloads_under_load_fail_no_request(tmp_path: Path, path: str) -> None:
    pid_file = tmp_path / "pid"
    reloads = 20
    with serving(EXAMPLE_APP, f"--pid-file={pid_file}", ready=r"is ready \(READY=1\)") as daemon:
        port = daemon.port
        with Load(port, path=path) as load:
            for number in range(reloads):
                result = restart(pid_file)
                assert result.returncode == 0, result.stderr
                assert f"generation {number + 2} is serving" in result.stderr
        daemon.wait_for(r"^old worker \d+ died", count=reloads)
        assert generation_of(port) == reloads + 1
    assert load.failures == [], load.failures[:5]
    assert load.total() > 100
    seen = sorted(load.generations)
    assert seen[0] == 1 and seen[-1] <= reloads + 1
    assert len(seen) >= reloads // 2, f"too few generations answered: {seen}"


def test_hup_during_reload_is_coalesced(tmp_path: Path) -> None:
    """Three HUPs while a slow generation boots: one more reload, not three."""
    envdir = tmp_path / "env"
    envdir.mkdir()
    with serving(EXAMPLE_APP, f"--envdir={envdir}") as daemon:
        (envdir / "EXAMPLE_APP_BOOT_SECONDS").write_text("1.5\n")
        daemon.signal(1)
        daemon.wait_for(r"starting new worker", count=2)
        for _ in range(3):
            daemon.signal(1)
        daemon.wait_for(r"will reload again once it is ready")
        (envdir / "EXAMPLE_APP_BOOT_SECONDS").unlink()
        daemon.wait_for(r"worker \d+ \(generation 3\) is ready", timeout=30)
        daemon.wait_for(r"^old worker \d+ died", count=2)
        assert generation_of(daemon.port) == 3
        assert len(daemon.matches(r"starting new worker")) == 3


def test_failed_generation_keeps_the_old_one(tmp_path: Path) -> None:
    pid_file, envdir = tmp_path / "pid", tmp_path / "env"
    envdir.mkdir()
    options = [f"--pid-file={pid_file}", f"--envdir={envdir}", "--backoff-max=60"]
    with serving(EXAMPLE_APP, *options) as daemon:
        port = daemon.port
        (envdir / "EXAMPLE_APP_FAIL").write_text("broken deploy\n")
        result = restart(pid_file)
        assert result.returncode == 1
        assert "generation 2 failed to start" in result.stderr
        assert "exit code 1" in result.stderr
        assert "old generation keeps serving" in result.stderr
        assert "Traceback" not in result.stderr
        assert generation_of(port) == 1
        daemon.wait_for(r"refusing to start: broken deploy")
        daemon.wait_for(r"new worker \d+ seems to have failed to start, exit status:256")
        daemon.wait_for(r"retrying in 1s")
        (envdir / "EXAMPLE_APP_FAIL").unlink()
        result = restart(pid_file)
        assert result.returncode == 0, result.stderr
        daemon.wait_for(r"^old worker \d+ died")  # until then it may still accept
        assert generation_of(port) >= 3


def test_require_notify_times_out_a_hanging_generation(tmp_path: Path) -> None:
    pid_file, envdir = tmp_path / "pid", tmp_path / "env"
    envdir.mkdir()
    options = [f"--pid-file={pid_file}", f"--envdir={envdir}", "--require-notify"]
    with serving(
        EXAMPLE_APP, *options, "--ready-timeout=2", ready=r"is ready \(READY=1\)"
    ) as daemon:
        (envdir / "EXAMPLE_APP_BOOT_SECONDS").write_text("600\n")
        result = restart(pid_file)
        assert result.returncode == 1
        assert "no READY=1 within 2s" in result.stderr
        assert generation_of(daemon.port) == 1
        daemon.wait_for(r"failed to start, exit status:9 \(killed by SIGKILL\)")


def test_worker_binding_the_port_itself_is_explained(tmp_path: Path) -> None:
    port = free_port()
    binds_itself = [sys.executable, str(ROOT / "tests" / "workers" / "binds_itself.py")]
    argv = [START_SERVER, f"--port=127.0.0.1:{port}", "--", *binds_itself]
    with running(argv, env=worker_env(PORT_TO_BIND=str(port))) as daemon:
        daemon.wait_for(r"Address already in use")
        daemon.wait_for(r"hint: .* binds the port itself")
        daemon.wait_for(r"retrying in 1s")
        daemon.wait_for(r"retrying in 2s", timeout=10)
        # Nothing serves, but the socket is held: connections wait, none is refused.
        assert daemon.proc.poll() is None


def test_first_unexpected_death_respawns_at_once(tmp_path: Path) -> None:
    with serving(EXAMPLE_APP) as daemon:
        _, headers, _ = http_get(daemon.port)
        import os
        import signal

        os.kill(int(headers["x-worker-pid"]), signal.SIGKILL)
        daemon.wait_for(r"died unexpectedly with status:9 \(killed by SIGKILL\), restarting")
        daemon.wait_for(r"\(generation 2\) is ready")
        assert generation_of(daemon.port) == 2


def test_auto_restart_replaces_the_worker_periodically(tmp_path: Path) -> None:
    options = ["--enable-auto-restart", "--auto-restart-interval=1", "--kill-old-delay=0"]
    with serving(EXAMPLE_APP, *options) as daemon:
        daemon.wait_for(r"^autorestart triggered \(interval=1\)$")
        daemon.wait_for(r"\(generation 2\) is ready")
        daemon.wait_for(r"^old worker \d+ died")
        assert generation_of(daemon.port) >= 2


def test_a_release_deployed_by_swapping_a_symlink_serves_after_a_reload(tmp_path: Path) -> None:
    """The README's deploy: --dir names a symlink to the current release;
    each generation starts in the directory it points to when it starts.
    A release that cannot start fails the reload and the old one serves."""
    releases = tmp_path / "releases"
    launcher = (
        "import os, runpy\n"
        "os.environ['EXAMPLE_APP_MESSAGE'] = os.path.basename(os.getcwd())\n"
        "runpy.run_module('server_starter.example_app', run_name='__main__')\n"
    )
    for name, program in [
        ("one", launcher),
        ("two", launcher),
        ("broken", "raise SystemExit(3)\n"),
    ]:
        (releases / name).mkdir(parents=True)
        (releases / name / "app.py").write_text(program)
    current = tmp_path / "current"

    def deploy(name: str) -> None:  # atomically, as the README shows
        (tmp_path / "current.new").symlink_to(releases / name)
        (tmp_path / "current.new").rename(current)

    deploy("one")
    pid_file = tmp_path / "pid"
    options = [f"--pid-file={pid_file}", f"--dir={current}", "--require-notify"]
    with serving([sys.executable, "app.py"], *options) as daemon:
        port = daemon.port
        assert http_get(port)[2].startswith("one from")
        deploy("two")
        assert restart(pid_file).returncode == 0
        assert http_get(port)[2].startswith("two from")
        deploy("broken")
        failed = restart(pid_file)
        assert failed.returncode == 1
        assert "exit code 3" in failed.stderr
        assert http_get(port)[2].startswith("two from")  # the old release serves on
        deploy("two")  # rolled back
        assert restart(pid_file).returncode == 0
        assert http_get(port)[2].startswith("two from")
