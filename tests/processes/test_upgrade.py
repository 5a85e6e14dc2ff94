"""The superdaemon upgrading itself in place (``start_server --upgrade``):
same pid, same sockets, workers never signalled, under load, at every point
of a generation's life; and a broken new version changes nothing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from harness.apps import EXAMPLE_APP
from harness.http_clients import generation_of, http_get
from harness.load import run_ab
from harness.processes import (
    ROOT,
    START_SERVER,
    free_port,
    process_figures,
    run_start_server,
    running,
    serving,
    worker_env,
)
from harness.reporting import report


def upgrade(pid_file: Path) -> subprocess.CompletedProcess[str]:
    return run_start_server("--upgrade", f"--pid-file={pid_file}", timeout=60)


def answering_worker(port: int) -> tuple[int, int]:
    """(generation, worker pid) of the process that answers."""
    _, headers, _ = http_get(port)
    return int(headers["x-server-starter-generation"]), int(headers["x-worker-pid"])


@pytest.mark.load
def test_twenty_upgrades_under_load_lose_nothing(tmp_path: Path, capsys: object) -> None:
    pid_file = tmp_path / "pid"
    upgrades = 20
    with serving(EXAMPLE_APP, f"--pid-file={pid_file}", "--require-notify") as daemon:
        port = daemon.port
        worker = answering_worker(port)
        results: list[subprocess.CompletedProcess[str]] = []
        rss: list[float] = []

        def upgrade_repeatedly() -> None:
            for _ in range(upgrades):
                results.append(upgrade(pid_file))
                rss.append(process_figures(daemon.pid)["rss_kib"])

        thread = threading.Thread(target=upgrade_repeatedly)
        thread.start()
        load = run_ab(f"http://127.0.0.1:{port}/slow", 20_000, 200, tmp_path)
        thread.join(120)
        while thread.is_alive() or len(results) < upgrades:
            thread.join(120)  # the load ended first: let the upgrades finish
        assert [r.returncode for r in results] == [0] * upgrades, [r.stderr for r in results]
        assert all("upgraded in place from" in r.stderr for r in results)
        assert answering_worker(port) == worker, "a worker was replaced"
        assert len(daemon.matches(r"^start_server upgraded in place")) == upgrades
        assert not daemon.matches(r"sending \w+ to worker")
    assert load["failed"] == 0 and load["resets"] == 0, load["failures_by_kind"]
    assert max(rss) - min(rss) < 1024, rss  # each upgrade is a fresh image: no growth
    report(
        capsys,
        f"{upgrades} upgrades in place under ab -r -n 20000 -c 200 /slow: "
        f"{load['requests']} requests, {load['failed']} failed, {load['resets']} resets; "
        f"the worker untouched; superdaemon RSS {min(rss):.0f}-{max(rss):.0f} KiB",
    )


def test_upgrade_while_a_reload_is_starting_answers_the_reload(tmp_path: Path) -> None:
    """A generation still starting (and the client waiting for its reload)
    is carried over: its READY=1 reaches the new image, which answers."""
    pid_file, envdir = tmp_path / "pid", tmp_path / "env"
    envdir.mkdir()
    options = [f"--pid-file={pid_file}", f"--envdir={envdir}", "--require-notify"]
    with serving(EXAMPLE_APP, *options) as daemon:
        (envdir / "EXAMPLE_APP_BOOT_SECONDS").write_text("3\n")
        restart = subprocess.Popen(
            [START_SERVER, "--restart", f"--pid-file={pid_file}"],
            stderr=subprocess.PIPE,
            text=True,
            env=worker_env(),
        )
        daemon.wait_for(r"^starting new worker \d+$", count=2)
        result = upgrade(pid_file)
        assert result.returncode == 0, result.stderr
        _, restart_err = restart.communicate(timeout=60)
        assert restart.returncode == 0, restart_err
        assert "generation 2 is serving" in restart_err
        daemon.wait_for(r"\(generation 2\) is ready \(READY=1\)")
        daemon.wait_for(r"^old worker \d+ died")
        assert generation_of(daemon.port) == 2
        assert daemon.proc.poll() is None


def test_upgrade_while_old_generations_retire_and_drain(tmp_path: Path) -> None:
    """Deadlines survive the exec: the retiring generation is signalled after
    its --kill-old-delay by the new image, and its exit is reaped there."""
    pid_file = tmp_path / "pid"
    options = [f"--pid-file={pid_file}", "--kill-old-delay=2", "--require-notify"]
    with serving(EXAMPLE_APP, *options) as daemon:
        port = daemon.port
        daemon.signal(signal.SIGHUP)
        daemon.wait_for(r"^sleeping 2 secs before killing old workers$")
        result = upgrade(pid_file)
        assert result.returncode == 0, result.stderr
        daemon.wait_for(r"^start_server upgraded in place")
        daemon.wait_for(r"^killing old workers$")
        daemon.wait_for(r"^old worker \d+ died, status:0")
        assert generation_of(port) == 2
        assert daemon.proc.poll() is None


def test_a_worker_exiting_during_the_exec_is_reaped_with_its_status(tmp_path: Path) -> None:
    """SIGKILL the worker right before the upgrade: whichever image sees its
    exit logs the real status, and a new generation replaces it."""
    pid_file = tmp_path / "pid"
    with serving(EXAMPLE_APP, f"--pid-file={pid_file}") as daemon:
        _, worker = answering_worker(daemon.port)
        os.kill(worker, signal.SIGKILL)
        result = upgrade(pid_file)
        assert result.returncode == 0, result.stderr
        daemon.wait_for(rf"worker {worker} died unexpectedly with status:9 \(killed by SIGKILL\)")
        daemon.wait_for(r"\(generation 2\) is ready", timeout=20)


def test_a_broken_new_version_changes_nothing(tmp_path: Path) -> None:
    """The installed version (a copy on PYTHONPATH here) fails to import: the
    running one keeps serving, says why, and --upgrade exits 1 with the reason."""
    installed = tmp_path / "site"
    shutil.copytree(ROOT / "src" / "server_starter", installed / "server_starter")
    env = worker_env(PYTHONPATH=str(installed))
    pid_file = tmp_path / "pid"
    with serving(EXAMPLE_APP, f"--pid-file={pid_file}", env=env) as daemon:
        port = daemon.port
        worker = answering_worker(port)
        with (installed / "server_starter" / "superdaemon" / "host.py").open("a") as broken:
            broken.write("\nraise ImportError('a broken build of host.py')\n")
        result = upgrade(pid_file)  # the client runs the good copy
        assert result.returncode == 1
        assert result.stderr == (
            "start_server: the new version fails its check: "
            "ImportError: a broken build of host.py\n"
        )
        daemon.wait_for(r"^upgrade refused, start_server \S+ keeps running: the new version fails")
        assert answering_worker(port) == worker
        assert run_start_server("--restart", f"--pid-file={pid_file}").returncode == 0
        assert generation_of(port) == 2


def test_sigusr2_upgrades_too(tmp_path: Path) -> None:
    with serving(EXAMPLE_APP) as daemon:
        port = daemon.port
        worker = answering_worker(port)
        daemon.signal(signal.SIGUSR2)
        daemon.wait_for(r"^start_server upgraded in place from \S+ to \S+ \(pid \d+\)")
        assert answering_worker(port) == worker
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


# The version before --status and the metrics (hand-over format 1 only, and
# options taken abbreviated), as users have it installed.
EARLIER = "5aed8b6"


def earlier_source(tmp_path: Path) -> Path:
    """That version's src/, from this clone's history."""
    out = tmp_path / "earlier"
    out.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", EARLIER, "src"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        pytest.skip(f"{EARLIER} is not in this clone's history")
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out / "src"


def test_an_earlier_version_upgrades_to_this_one_and_is_refused_the_way_back(
    tmp_path: Path,
) -> None:
    """``installed`` stands for the package's files, which apt replaces
    under the running superdaemon: a link to one version's source or the
    other's.  Each superdaemon runs from it (PYTHONPATH), and the in-place
    upgrade imports the hand-over's code and runs the check from it."""
    earlier, installed = earlier_source(tmp_path), tmp_path / "installed"
    env = worker_env(PYTHONPATH=str(installed))

    def install(source: Path) -> None:
        installed.unlink(missing_ok=True)
        installed.symlink_to(source)

    def command(*options: str) -> list[str]:
        return [sys.executable, "-m", "server_starter.superdaemon.cli", *options]

    port, pid_file = free_port(), tmp_path / "pid"
    install(earlier)
    # Abbreviated, as the earlier version (and Perl's) took them.
    argv = command(f"--port=127.0.0.1:{port}", f"--pid={pid_file}", "--kill-old=0", "--")
    with running([*argv, *EXAMPLE_APP], env=env) as daemon:
        daemon.wait_for(r"is ready")
        install(ROOT / "src")
        result = run_start_server("--upgrade", f"--pid-file={pid_file}", env=env, timeout=60)
        assert result.returncode == 0, result.stderr
        daemon.wait_for(r"upgraded in place")
        result = run_start_server("--restart", f"--pid-file={pid_file}", env=env, timeout=60)
        assert result.returncode == 0, result.stderr
        assert generation_of(port) == 2
        status = run_start_server("--status", f"--pid-file={pid_file}", env=env)
        assert status.returncode == 0 and "serving: generation 2" in status.stdout

    port, pid_file = free_port(), tmp_path / "pid2"
    install(ROOT / "src")
    metrics = f"--metrics-file={tmp_path / 'metrics.prom'}"
    argv = command(f"--port=127.0.0.1:{port}", f"--pid-file={pid_file}", metrics, "--")
    with running([*argv, *EXAMPLE_APP], env=env) as daemon:
        daemon.wait_for(r"is ready")
        install(earlier)
        result = run_start_server("--upgrade", f"--pid-file={pid_file}", env=env, timeout=60)
        assert result.returncode == 1
        assert "the installed version is an earlier one" in result.stderr
        install(ROOT / "src")  # for the clients below
        daemon.wait_for(r"upgrade refused")
        status = run_start_server("--status", f"--pid-file={pid_file}", env=env)
        assert status.returncode == 0 and "serving: generation 1" in status.stdout
        assert daemon.proc.poll() is None
