"""An idle superdaemon makes no wake-ups, and is no bigger than Perl's."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.apps import EXAMPLE_APP
from harness.processes import PERL_START_SERVER, ROOT, START_SERVER, process_figures, serving
from harness.reporting import report

IDLE_WINDOW = 5.0  # seconds of observation; the assertion is a count, not a duration


def _wait_until_blocked_in_epoll(pid: int, timeout: float = 10.0) -> None:
    """The ready line is logged mid-iteration; the loop then goes back to
    epoll_wait, which itself counts one voluntary switch.  Start counting
    only once it sits there."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}/wchan").read_text() != "do_epoll_wait":
        assert time.monotonic() < deadline, "the superdaemon never went idle"
        time.sleep(0.01)


@pytest.mark.parametrize("watched", [False, True], ids=["plain", "status-and-metrics-files"])
def test_idle_superdaemon_never_wakes_up(tmp_path: Path, watched: bool) -> None:
    """Also with the files a monitoring system reads: they are written at
    events only, never on a timer."""
    files = [f"--status-file={tmp_path / 'status'}", f"--metrics-file={tmp_path / 'm.prom'}"]
    with serving(EXAMPLE_APP, *(files if watched else [])) as daemon:
        _wait_until_blocked_in_epoll(daemon.pid)
        before = process_figures(daemon.pid)
        written = (tmp_path / "m.prom").stat().st_mtime_ns if watched else 0
        time.sleep(IDLE_WINDOW)  # the measurement window itself
        after = process_figures(daemon.pid)
        if watched:
            assert (tmp_path / "m.prom").stat().st_mtime_ns == written
            assert "server_starter_serving_generation 1\n" in (tmp_path / "m.prom").read_text()
    assert after["voluntary_switches"] == before["voluntary_switches"]


@pytest.mark.skipif(not os.path.exists(PERL_START_SERVER), reason="Perl start_server missing")
def test_resident_memory_at_most_perls(capsys: pytest.CaptureFixture[str]) -> None:
    # Byte-compiled, as the package installs it (dh_python3 compiles at
    # install): compiling from source at each start, as it does where
    # PYTHONDONTWRITEBYTECODE is set, would count the compiler's garbage.
    compiled = subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "src" / "server_starter")],
        check=False,
    )
    assert compiled.returncode == 0
    rss = {}
    for name, program in (("perl", PERL_START_SERVER), ("ours", START_SERVER)):
        with serving(EXAMPLE_APP, program=program, ready=r"starting new worker") as daemon:
            daemon.signal(1)  # one reload, so both have run their whole reload path
            daemon.wait_for(r"^old worker \d+ died")
            rss[name] = process_figures(daemon.pid)["rss_kib"]
    assert rss["ours"] <= rss["perl"], rss
    report(
        capsys, f"resident memory after a reload: ours {rss['ours']} KiB, Perl's {rss['perl']} KiB"
    )
