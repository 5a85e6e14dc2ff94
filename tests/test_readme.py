"""The README's quick start and recipes run as written.

A fenced block preceded by ``<!-- readme-test: NAME -->`` is taken from the
README verbatim: the quick start's commands are run in a shell in the
checkout (``make demo`` in one session, the second terminal's commands in
another), each app recipe is saved as ``app.py`` and served under
start_server with reloads under load.  A marker without a block, or a test
of this file without its block, fails."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support import (
    START_SERVER,
    free_port,
    reloading,
    reloads_done,
    restart,
    run_ab,
    running,
    worker_env,
)

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^<!-- readme-test: ([\w-]+) -->\n```(\w*)\n(.*?)^```$", re.M | re.S)


def readme_blocks() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    blocks = {name: body for name, _, body in MARKER.findall(text)}
    assert len(blocks) == text.count("<!-- readme-test:"), "a marker not followed by a block"
    return blocks


BLOCKS = readme_blocks()
RECIPES = ["asyncio-recipe", "http-server-recipe"]


def test_every_marked_block_is_run_here() -> None:
    assert set(BLOCKS) == {"quick-start-serve", "quick-start-reload", *RECIPES}


def test_the_quick_start_as_written() -> None:
    """`make demo` in one terminal; curl, reload, curl in a second; Ctrl-C."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))}
    # Daemon: its own process group (as a terminal's job), its output read
    # as it comes.
    with running(["sh", "-c", BLOCKS["quick-start-serve"]], env=env, cwd=ROOT) as demo:
        try:
            demo.wait_for(r"\(generation 1\) is ready", timeout=120)
            second = subprocess.run(
                ["sh", "-ec", BLOCKS["quick-start-reload"]],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        finally:
            os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C sends the terminal's job
        demo.wait(60)
        output = demo.output()
    assert second.returncode == 0, second.stderr
    assert re.findall(r"(?i)^x-server-starter-generation: (\d+)", second.stdout, re.M) == [
        "1",
        "2",
    ], second.stdout
    assert "generation 2 is serving; sent TERM to worker" in second.stderr
    assert "received INT, sending TERM to all workers:" in output
    assert output.rstrip().endswith("exiting"), output[-2000:]
    assert not (ROOT / "demo.pid").exists()


@pytest.mark.parametrize("name", RECIPES)
def test_a_recipe_as_written_reloads_under_load_without_a_failure(
    name: str, tmp_path: Path
) -> None:
    (tmp_path / "app.py").write_text(BLOCKS[name])
    port, pid_file = free_port(), tmp_path / "pid"
    argv = [
        START_SERVER,
        f"--port=127.0.0.1:{port}",
        f"--pid-file={pid_file}",
        f"--dir={tmp_path}",
        "--require-notify",
        "--",
        sys.executable,
        "app.py",
    ]
    with running(argv, env=worker_env()) as daemon:
        daemon.wait_for(r"\(generation 1\) is ready \(READY=1\)")
        with reloading(lambda: restart(pid_file), every=0.5):
            figures = run_ab(f"http://127.0.0.1:{port}/", 6000, 100, tmp_path)
        reloads = reloads_done(daemon)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert "Traceback" not in daemon.output()
    assert figures["requests"] == 6000
    assert (figures["failed"], figures["non_2xx"], figures["resets"]) == (0, 0, 0), figures
    assert reloads >= 3
