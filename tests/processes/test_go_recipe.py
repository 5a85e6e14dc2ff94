"""docs/go.md as written: its Go program, built with the page's commands by
Debian's Go, served with the page's start_server command and reloaded with
its --restart command under hundreds of concurrent connections (ab, one
connection per request) and HTTP/1.1 clients reusing their connections, as
a proxy's pool does.  Its unit line runs in the booted systemd
(booted/test_go_app.py)."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import pytest

from harness.apps import readme_blocks
from harness.go_recipe import GO, build_go_recipe
from harness.load import KeepAliveLoad, reloading, run_ab
from harness.processes import (
    as_a_user_runs_it,
    free_port,
    reloads_done,
    run_shell,
    running,
    worker_env,
)
from harness.reporting import report

pytestmark = pytest.mark.skipif(GO is None, reason="Go missing (Debian's golang-go: make deps)")

BLOCKS = readme_blocks()
REQUESTS = 20_000
CONCURRENCY = 200
RELOAD_EVERY = 0.4  # seconds


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of main.go and the binary the page's commands built."""
    return build_go_recipe(tmp_path_factory.mktemp("go-recipe")).parent


def test_the_program_refuses_to_run_outside_start_server(built: Path) -> None:
    env = {k: v for k, v in worker_env().items() if k != "SERVER_STARTER_PORT"}
    alone = subprocess.run(
        [str(built / "myapp")], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert alone.returncode == 1
    assert "run me under start_server" in alone.stderr


@pytest.mark.load
def test_the_go_recipe_reloads_under_load_without_a_failure(
    built: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    [serve] = BLOCKS["go-run"].splitlines()
    [reload] = BLOCKS["go-reload"].splitlines()
    assert "--port 8080 " in serve
    port = free_port()
    serve = serve.replace("--port 8080 ", f"--port 127.0.0.1:{port} ")
    env = as_a_user_runs_it()
    answers: list[subprocess.CompletedProcess[str]] = []

    def reload_as_written() -> None:
        answers.append(run_shell(reload, built, env, timeout=60))

    with running(["sh", "-c", f"exec {serve}"], env=env, cwd=built) as daemon:
        daemon.wait_for(r"\(generation 1\) is ready \(READY=1\)", timeout=30)
        with (
            KeepAliveLoad(port, "/", threads=20) as kept_alive,
            reloading(reload_as_written, every=RELOAD_EVERY),
        ):
            figures = run_ab(f"http://127.0.0.1:{port}/", REQUESTS, CONCURRENCY, built, timeout=120)
        reloads = len(answers)
        daemon.wait_for(r"\(generation \d+\) is ready", count=reloads + 1)
        # Every old generation drains (its kept-alive clients told
        # "Connection: close", or gone) and exits by itself.
        daemon.wait_for(r"^old worker \d+ died", count=reloads, timeout=30)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    output = daemon.output()
    exits = re.findall(r"^old worker \d+ died, status:(\d+)", output, re.M)
    report(
        capsys,
        f"Go recipe: {reloads} reloads under ab -c {CONCURRENCY} and 20 keep-alive clients; "
        f"ab {figures['requests']} requests, {figures['failed']} failed, "
        f"{figures['non_2xx']} non-2xx, {figures['resets']} reset; keep-alive "
        f"{kept_alive.served} served on {kept_alive.connections} connections, "
        f"{len(kept_alive.failures)} failed, {kept_alive.clean_closes} closed under a request",
    )
    assert figures["requests"] == REQUESTS
    assert (figures["failed"], figures["non_2xx"], figures["resets"]) == (0, 0, 0), figures
    assert kept_alive.failures == [], kept_alive.failures[:5]
    assert kept_alive.clean_closes == 0  # no connection ended under a request
    assert kept_alive.connections < kept_alive.served  # connections were reused
    assert reloads >= 3
    assert [answer.returncode for answer in answers] == [0] * len(answers), answers[-1].stderr
    assert reloads_done(daemon) == reloads
    assert exits == ["0"] * reloads, output[-3000:]
    assert "SIGKILL" not in output
    assert "shutdown:" not in output  # Shutdown found nothing left to wait for
