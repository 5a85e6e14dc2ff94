"""A soak: reload after reload under continuous load, with the example app
and the uvicorn adapter.  No request may fail, every generation is logged
exactly once, and the superdaemon's descriptors, threads and memory stay
flat from the first hundredth of the run to the last.

``make test`` runs a short soak (SOAK_RELOADS, default 100 reloads per app);
``make soak`` runs 1,000 and prints the figures the README quotes."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from harness.apps import EXAMPLE_APP, UVICORN_APP
from harness.load import Load
from harness.processes import process_figures, serving
from harness.reporting import report
from server_starter.superdaemon.control import request

RELOADS = int(os.environ.get("SOAK_RELOADS", "100"))
PAUSE = 0.2  # between one reload's answer and the next request
SAMPLES = 10  # of the superdaemon's resources, evenly over the run
APPS = {"example app": EXAMPLE_APP, "uvicorn adapter": UVICORN_APP}


def resources(pid: int) -> tuple[int, int, int]:
    """The superdaemon's open descriptors, threads and RSS (KiB)."""
    status = Path(f"/proc/{pid}/status").read_text()
    threads = int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    rss = int(process_figures(pid)["rss_kib"])
    return len(os.listdir(f"/proc/{pid}/fd")), threads, rss


def slope(samples: list[tuple[int, int]]) -> float:
    """Least-squares growth per reload of (reload number, value) samples."""
    n = len(samples)
    mean_x = sum(x for x, _ in samples) / n
    mean_y = sum(y for _, y in samples) / n
    spread = sum((x - mean_x) ** 2 for x, _ in samples)
    return sum((x - mean_x) * (y - mean_y) for x, y in samples) / spread


@pytest.mark.parametrize("app", list(APPS))
def test_reloads_under_load_lose_nothing_and_leak_nothing(
    app: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command = APPS[app]
    control, status_file = tmp_path / "control.sock", tmp_path / "status"
    options = [f"--control-socket={control}", f"--status-file={status_file}", "--require-notify"]
    every = max(1, RELOADS // SAMPLES)
    samples: dict[str, list[tuple[int, int]]] = {"fds": [], "threads": [], "rss_kib": []}
    started = time.monotonic()
    with serving(command, *options, timeout=60) as daemon:
        port = daemon.port
        with Load(port, threads=50) as load:
            for number in range(1, RELOADS + 1):
                request(str(control), "reload", 60)
                if number % every == 0:
                    # Sampled with no generation draining (its socket, its pidfd).
                    daemon.wait_for(r"^old worker \d+ died", count=number, timeout=60)
                    fds, threads, rss = resources(daemon.pid)
                    for key, value in (("fds", fds), ("threads", threads), ("rss_kib", rss)):
                        samples[key].append((number, value))
                time.sleep(PAUSE)
        seconds = time.monotonic() - started
        last = RELOADS + 1
        daemon.wait_for(rf"\(generation {last}\) is ready")
        # Every generation started, became ready and was logged exactly once.
        for event in (r"starting new worker \d+", r"\(generation (\d+)\) is ready"):
            assert len(daemon.matches(event)) == last, event
        ready = [int(m.group(1)) for m in daemon.matches(r"\(generation (\d+)\) is ready")]
        assert ready == list(range(1, last + 1))
        status = status_file.read_text().splitlines()
        assert status[-1].startswith(f"{last}:") and len(status) == len(set(status))
    assert load.failures == [], load.failures[:5]
    assert load.total() > RELOADS
    # Flat: the descriptors and threads of the first sample and the last are
    # the same; the memory grows by less than 1 KiB a reload.
    for key in ("fds", "threads"):
        values = {value for _, value in samples[key]}
        assert len(values) == 1, (key, samples[key])
    rss_slope = slope(samples["rss_kib"])
    assert rss_slope < 1.0, samples["rss_kib"]
    report(
        capsys,
        f"soak, {app}: {RELOADS} reloads in {seconds:.0f} s under 50 clients: "
        f"{load.total()} requests, {len(load.failures)} failed; superdaemon "
        f"{samples['fds'][0][1]} descriptors and {samples['threads'][0][1]} thread(s) "
        f"throughout, RSS {samples['rss_kib'][0][1]}-{max(v for _, v in samples['rss_kib'])} "
        f"KiB (slope {rss_slope:+.3f} KiB per reload)",
    )
