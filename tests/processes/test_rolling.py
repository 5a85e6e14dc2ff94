"""Rolling reloads (--max-surge) with real gunicorn: the new generation
takes the serving one's workers over one at a time under load, the
service never runs more than the steady state plus the surge, and a
release that breaks midway leaves the old generation serving, grown back
to its whole."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest

from harness.apps import APPS, gunicorn_argv
from harness.http_clients import generation_of
from harness.load import KeepAliveLoad, Load
from harness.processes import (
    ROOT,
    START_SERVER,
    Daemon,
    free_port,
    grandchildren,
    restart,
    run_start_server,
    running,
    sampled_peak,
    worker_env,
)

PYTHONS = {
    "debian": "/usr/bin/python3",  # python3-gunicorn 20.1
    "pypi": str(ROOT / ".venv" / "bin" / "python"),  # the newest gunicorn, with uvicorn-worker
}
WORKERS = 4


def start_server_argv(port: int, pid_file: Path, *options: str) -> list[str]:
    return [
        START_SERVER,
        f"--port=127.0.0.1:{port}",
        f"--pid-file={pid_file}",
        "--require-notify",
        "--ready-timeout=20",
        *options,
        "--",
    ]


def gunicorn(python: str, *args: str, app: str = "wsgi_app:app") -> list[str]:
    return gunicorn_argv(python, "-w", str(WORKERS), *args, app=app)


def env(**extra: str) -> dict[str, str]:
    return worker_env(PYTHONPATH=str(ROOT / "src"), **extra)


@pytest.mark.load
@pytest.mark.parametrize(
    ("python", "worker"),
    [
        ("debian", ["-k", "sync"]),
        ("pypi", ["-k", "sync"]),
        ("pypi", ["-k", "gthread", "--threads", "4"]),
        ("pypi", ["-k", "sync", "--preload"]),
        ("pypi", ["-k", "server_starter.uvicorn_worker.UvicornWorker"]),
    ],
    ids=["debian-sync", "pypi-sync", "pypi-gthread", "pypi-preload", "pypi-uvicorn"],
)
def test_gunicorn_rolls_worker_by_worker_under_load(
    python: str, worker: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port, pid_file = free_port(), tmp_path / "pid"
    app = "asgi_app:app" if "uvicorn" in worker[-1] else "wsgi_app:app"
    argv = [
        *start_server_argv(port, pid_file, "--max-surge=1"),
        *gunicorn(PYTHONS[python], *worker, app=app),
    ]
    reloads = 3
    with running(argv, env=env(WSGI_APP_IMPORT_SECONDS="0.3")) as daemon:
        daemon.wait_for(r"\(generation 1\) is ready \(READY=1\)")
        with (
            sampled_peak(partial(grandchildren, daemon.pid)) as counted,
            Load(port, threads=50) as load,
        ):
            for number in range(2, reloads + 2):
                started = time.monotonic()
                result = restart(pid_file)
                took = time.monotonic() - started
                assert result.returncode == 0, result.stderr + daemon.output()[-3000:]
                assert f"generation {number} is serving" in result.stderr
                # As reloads come in life: the last one's old worker has drained.
                daemon.wait_for(r"^old worker \d+ died", count=number - 1, timeout=30)
        assert generation_of(port) == reloads + 1
        log = daemon.output()
    assert load.failures == [], load.failures[:5]
    assert load.total() > 0
    assert log.count("rolling it in, 1 at a time (--max-surge)") == reloads
    assert len(re.findall(r"sending TTIN to worker \d+ \(generation \d+", log)) == reloads * 3
    assert len(re.findall(r"sending TTOU to worker \d+ \(generation \d+", log)) == reloads * 3
    assert counted.peak <= WORKERS + 1, counted.peak  # never the whole overlap's 8
    with capsys.disabled():
        print(
            f"\n    [measured] gunicorn {python} {' '.join(worker)} -w {WORKERS}, --max-surge=1: "
            f"{reloads} reloads, {load.total()} requests, 0 failed; at most "
            f"{counted.peak} workers at once; last reload {took:.2f}s"
        )


@pytest.mark.parametrize("python", sorted(PYTHONS))
@pytest.mark.parametrize("breaks", ["crashes", "hangs"])
def test_a_release_that_breaks_midway_leaves_the_old_generation_whole(
    python: str, breaks: str, tmp_path: Path
) -> None:
    """The new release's second worker fails at import (gunicorn then halts)
    or hangs in it (past --ready-timeout): the reload fails with why, the
    old generation serves throughout and is grown back to its whole."""
    port, pid_file, envdir, boots = free_port(), tmp_path / "pid", tmp_path / "env", tmp_path
    envdir.mkdir()
    argv = [
        *start_server_argv(port, pid_file, "--max-surge=1", f"--envdir={envdir}"),
        *gunicorn(PYTHONS[python], "-k", "sync"),
    ]
    argv[argv.index("--ready-timeout=20")] = "--ready-timeout=3"
    with running(argv, env=env()) as daemon:
        daemon.wait_for(r"\(generation 1\) is ready \(READY=1\)")
        (envdir / "WSGI_APP_BOOTS_DIR").write_text(f"{boots}\n")
        if breaks == "hangs":
            (envdir / "WSGI_APP_FAILING_HANGS").write_text("1\n")
        with Load(port, threads=20) as load:
            result = restart(pid_file)
            assert result.returncode == 1, result.stderr
            if breaks == "crashes":
                # gunicorn stops its booted worker before it exits: 0 or 1 left.
                expected = r"exited during its roll with [01] of 4 workers ready, exit code \d"
            else:
                expected = r"had 1 of 4 workers ready, and no more within 3s \(--ready-timeout\)"
            assert re.search(f"generation 2 failed to start: {expected}", result.stderr), (
                result.stderr
            )
            assert "the old generation keeps serving" in result.stderr
            # It broke at step 2: its first worker was ready, the second asked for.
            daemon.wait_for(r"sending TTIN to worker \d+ \(generation 2, 1 of 4 workers ready\)")
            # Grown back: the one worker it gave up is replaced.
            daemon.wait_for(r"sending TTIN to worker \d+ \(generation 1, 3 of 4 workers ready\)")
            daemon.wait_for(r"\(generation 1\) is whole again \(4 of 4 workers ready\)")
        status = subprocess.run(
            [START_SERVER, "--status", f"--pid-file={pid_file}"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout
        assert re.search(r"\n  1 .* serving .* 4 of 4 workers ready", status), status
        assert generation_of(port) == 1
    assert load.failures == [], load.failures[:5]
    assert load.total() > 0


@contextmanager
def rolling_slowly(tmp_path: Path) -> Iterator[tuple[Daemon, Path, int]]:
    """gunicorn -w 4 whose workers take 1 s to import, so that a roll takes
    seconds: long enough to act in its middle."""
    port, pid_file = free_port(), tmp_path / "pid"
    argv = [
        *start_server_argv(port, pid_file, "--max-surge=1"),
        *gunicorn(PYTHONS["pypi"], "-k", "sync"),
    ]
    with running(argv, env=env(WSGI_APP_IMPORT_SECONDS="1")) as daemon:
        daemon.wait_for(r"\(generation 1\) is ready \(READY=1\)", timeout=30)
        yield daemon, pid_file, port


def restart_in_background(pid_file: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [START_SERVER, "--restart", f"--pid-file={pid_file}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_an_upgrade_during_a_roll_carries_it_on(tmp_path: Path) -> None:
    """The superdaemon becomes the installed version in place mid-roll: the
    new image goes on rolling, and answers the client that asked for the
    reload; no request fails."""
    with rolling_slowly(tmp_path) as (daemon, pid_file, port), Load(port, threads=20) as load:
        reloading = restart_in_background(pid_file)
        daemon.wait_for(r"sending TTIN to worker \d+ \(generation 2, 1 of 4")
        upgraded = run_start_server("--upgrade", f"--pid-file={pid_file}", timeout=60)
        assert upgraded.returncode == 0, upgraded.stderr
        assert "upgraded in place" in upgraded.stderr
        output, _ = reloading.communicate(timeout=60)
        assert reloading.returncode == 0, output + daemon.output()[-3000:]
        assert "generation 2 is serving" in output
        log = daemon.output()
        after = log[log.index("upgraded in place") :]
        assert re.search(r"sending TTIN to worker \d+ \(generation 2, [23] of 4", after), after
        assert "(generation 2) is ready (all 4 workers ready)" in after
        assert generation_of(port) == 2
    assert load.failures == [], load.failures[:5]


def test_a_reload_asked_during_a_roll_rolls_after_it(tmp_path: Path) -> None:
    with rolling_slowly(tmp_path) as (daemon, pid_file, port), Load(port, threads=20) as load:
        first = restart_in_background(pid_file)
        daemon.wait_for(r"rolling it in")
        daemon.signal(signal.SIGHUP)
        daemon.wait_for(r"generation 2 is still starting; will reload again once it is ready")
        output, _ = first.communicate(timeout=60)
        assert first.returncode == 0, output
        daemon.wait_for(r"\(generation 3\) is ready with 1 of 4 workers", timeout=30)
        daemon.wait_for(r"\(generation 3\) is ready \(all 4 workers ready\)", timeout=60)
        assert generation_of(port) == 3
    assert load.failures == [], load.failures[:5]


def test_a_stop_during_a_roll_drains_both_generations(tmp_path: Path) -> None:
    with rolling_slowly(tmp_path) as (daemon, pid_file, port), Load(port, threads=20) as load:
        reloading = restart_in_background(pid_file)
        daemon.wait_for(r"sending TTIN to worker \d+ \(generation 2")
        load.stop.set()  # the requests in flight now must finish during the drain
        daemon.signal(signal.SIGTERM)
        output, _ = reloading.communicate(timeout=60)
        assert reloading.returncode == 1
        assert "start_server is stopping" in output
        assert daemon.wait(timeout=60) == 0
    log = daemon.output()
    assert re.search(r"received TERM, sending TERM to all workers:\d+,\d+", log), log[-2000:]
    assert not re.search(r"sending TT(IN|OU)", log[log.index("received TERM") :])
    assert load.failures == [], load.failures[:5]


def test_a_program_that_reports_no_workers_is_reloaded_whole_said_once(tmp_path: Path) -> None:
    """The asyncio recipe: one process, READY=1 and no worker count."""
    port, pid_file = free_port(), tmp_path / "pid"
    argv = [
        *start_server_argv(port, pid_file, "--max-surge=1"),
        PYTHONS["pypi"],
        str(APPS / "asyncio_http_app.py"),
    ]
    with running(argv, env=env()) as daemon:
        daemon.wait_for(r"\(generation 1\) is ready \(READY=1\)")
        with KeepAliveLoad(port, "/", threads=20) as load:
            for number in (2, 3):
                result = restart(pid_file)
                assert result.returncode == 0, result.stderr
                assert f"generation {number} is serving" in result.stderr
        log = daemon.output()
    assert log.count("reports no workers (X_SERVER_STARTER_WORKERS)") == 1
    assert "takes part in no rolling reload; reloads overlap whole generations" in log
    assert "SERVER_STARTER_START_WORKERS" not in log
    assert not re.search(r"sending TT(IN|OU)", log)
    assert load.failures == [], load.failures[:5]
    assert load.served > 0
