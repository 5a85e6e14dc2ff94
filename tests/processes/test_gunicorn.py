"""gunicorn as a generation (server_starter.gunicorn), with Debian's gunicorn
20.1 and the newest from PyPI: reloads under load, a broken deploy, a unix
socket that survives."""

from __future__ import annotations

import os
import re
import statistics
from pathlib import Path

import pytest

from harness.apps import gunicorn_argv
from harness.http_clients import generation_of, http_get
from harness.load import Load
from harness.processes import ROOT, START_SERVER, Daemon, free_port, restart, running, worker_env

PYTHONS = {
    "debian": "/usr/bin/python3",  # with python3-gunicorn 20.1
    "pypi": str(ROOT / ".venv-gunicorn" / "bin" / "python"),  # newest gunicorn
}


def gunicorn_version(python: str) -> str:
    import subprocess

    result = subprocess.run(
        [python, "-c", "import gunicorn; print(gunicorn.__version__)"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.stdout.strip() or f"missing ({result.stderr.strip()[-200:]})"


@pytest.fixture(params=sorted(PYTHONS))
def python(request: pytest.FixtureRequest) -> str:
    path = PYTHONS[request.param]
    version = gunicorn_version(path)
    assert re.match(r"\d+\.", version), f"gunicorn for {request.param}: {version}"
    if request.param == "debian":
        assert version.startswith("20.1"), version
    return path


def env(**extra: str) -> dict[str, str]:
    # The Debian interpreter finds server_starter through PYTHONPATH, as it
    # would find the installed package.
    return worker_env(PYTHONPATH=str(ROOT / "src"), **extra)


def reload_timeline(daemon: Daemon) -> list[tuple[int, float, float]]:
    """Per reload: (generation, when it was ready, when its predecessor was signalled)."""
    ready = {int(m.group(1)): t for t, m in daemon.arrivals(r"\(generation (\d+)\) is ready")}
    signalled = {
        int(m.group(1)): t
        for t, m in daemon.arrivals(r"^sending TERM to worker \d+ \(generation (\d+)\)")
    }
    return [(gen, ready[gen], signalled[gen - 1]) for gen in sorted(ready) if gen - 1 in signalled]


@pytest.mark.load
@pytest.mark.parametrize(
    "worker",
    [["-k", "sync", "-w", "4"], ["-k", "gthread", "-w", "2", "--threads", "4"]],
    ids=["sync", "gthread"],
)
def test_fifty_reloads_under_load(
    python: str, worker: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port, pid_file = free_port(), tmp_path / "pid"
    argv = [
        START_SERVER,
        f"--port=127.0.0.1:{port}",
        f"--pid-file={pid_file}",
        "--require-notify",
        "--ready-timeout=30",
        "--",
        *gunicorn_argv(python, *worker),
    ]
    reloads, durations = 50, []
    with running(argv, env=env()) as daemon:
        daemon.wait_for(r"\(generation 1\) is ready \(READY=1\)")
        with Load(port, threads=8) as load:
            for number in range(reloads):
                import time

                started = time.monotonic()
                result = restart(pid_file)
                assert result.returncode == 0, result.stderr + daemon.output()[-3000:]
                durations.append(time.monotonic() - started)
                assert f"generation {number + 2} is serving" in result.stderr
        daemon.wait_for(r"^old worker \d+ died", count=reloads, timeout=60)
        assert generation_of(port) == reloads + 1
        timeline = reload_timeline(daemon)
    assert load.failures == [], load.failures[:5]
    assert len(timeline) == reloads
    # The new generation was ready before the old one was signalled, every time.
    assert all(ready <= signalled for _gen, ready, signalled in timeline), timeline
    assert len(load.generations) >= reloads // 2
    with capsys.disabled():
        print(
            f"\n    [measured] gunicorn {gunicorn_version(python)} {' '.join(worker)}: "
            f"{reloads} reloads, {load.total()} requests, {len(load.failures)} failed; "
            f"reload request to ready+signalled: median "
            f"{statistics.median(durations):.2f}s, max {max(durations):.2f}s"
        )


def test_broken_deploy_fails_fast_and_old_generation_serves(python: str, tmp_path: Path) -> None:
    port, pid_file, envdir = free_port(), tmp_path / "pid", tmp_path / "env"
    envdir.mkdir()
    argv = [
        START_SERVER,
        f"--port=127.0.0.1:{port}",
        f"--pid-file={pid_file}",
        f"--envdir={envdir}",
        "--require-notify",
        "--ready-timeout=30",
        "--",
        *gunicorn_argv(python, "-w", "2"),
    ]
    with running(argv, env=env()) as daemon:
        daemon.wait_for(r"is ready \(READY=1\)")
        (envdir / "WSGI_APP_BROKEN").write_text("1\n")
        result = restart(pid_file)
        assert result.returncode == 1
        # gunicorn halts on a worker boot error: exit code 3 (20.1) or 1 (27).
        assert re.search(
            r"generation 2 failed to start: exited before it was ready, "
            r"exit code [13];",
            result.stderr,
        ), result.stderr
        assert generation_of(port) == 1
        daemon.wait_for(r"RuntimeError: WSGI_APP_BROKEN is set: this deploy is broken")
        daemon.wait_for(r"Worker failed to boot")
        (envdir / "WSGI_APP_BROKEN").unlink()
        result = restart(pid_file)
        assert result.returncode == 0, result.stderr
        daemon.wait_for(r"^old worker \d+ died")  # until then it may still accept
        assert generation_of(port) >= 3


def test_unix_socket_survives_reloads(python: str, tmp_path: Path) -> None:
    port, pid_file, sock = free_port(), tmp_path / "pid", str(tmp_path / "app.sock")
    argv = [
        START_SERVER,
        f"--port=127.0.0.1:{port}",
        f"--path={sock}",
        f"--pid-file={pid_file}",
        "--require-notify",
        "--",
        *gunicorn_argv(python, "-w", "1"),
    ]
    with running(argv, env=env()) as daemon:
        daemon.wait_for(r"is ready")
        for number in range(2, 12):
            assert restart(pid_file).returncode == 0
            daemon.wait_for(r"^old worker \d+ died", count=number - 1)
            assert os.path.exists(sock), "gunicorn unlinked the inherited unix socket"
            status, headers, _ = http_get(0, unix=sock)
            assert (status, headers["x-server-starter-generation"]) == (200, str(number))


def test_gunicorn_outside_start_server_is_a_clear_error(python: str) -> None:
    import subprocess

    result = subprocess.run(
        gunicorn_argv(python), capture_output=True, text=True, timeout=60, env=env(), check=False
    )
    assert result.returncode != 0
    assert "no environment variable SERVER_STARTER_PORT" in result.stderr + result.stdout
