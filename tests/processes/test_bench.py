"""The benchmark harness itself (``make bench MODE=smoke``): a tiny run of
every host scenario, whose JSON must be complete.  The figures of a real run
come from ``make bench``; here only the harness and the zero-failure claim
are checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.processes import ROOT

pytestmark = pytest.mark.load


def test_smoke_run_writes_complete_results(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "benchmark.py"), "--mode=smoke", f"--out={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (json_path,) = tmp_path.glob("*.json")
    (png_path,) = tmp_path.glob("*.png")
    assert png_path.stat().st_size > 10_000
    results = json.loads(json_path.read_text())
    assert results["mode"] == "smoke"
    assert set(results["machine"]) >= {"nproc", "kernel", "perl_server_starter", "ab"}
    assert results["systemd"] == {"skipped": "not run in smoke mode"}

    contenders = results["reference"]["contenders"]
    assert len(contenders) == 8
    requests = results["profile"]["requests"]
    for name, figures in contenders.items():
        assert figures["requests"] == requests, name
        assert figures["requests_per_second"] > 0
        assert 100 <= figures["latency_ms"]["p50"] <= figures["latency_ms"]["p99"]
        assert figures["latency_ms"]["p99"] <= figures["latency_ms"]["max"]
        if figures["app"] == "example app":  # the ratios compare the baseline's app only
            assert figures["throughput_vs_baseline"] > 0
        else:
            assert figures["throughput_vs_baseline"] is None
        assert "samples" not in figures
    ours = contenders["ours: start_server, HUP every 1 s"]
    assert ours["reloads"] >= 1 and len(ours["reload_moments"]) == ours["reload_requests"]
    for name, figures in contenders.items():
        if "uvicorn's UvicornWorker" in name or "close() then wait" in name:
            continue  # the ways that lose connections, measured for comparison
        assert figures["reloads"] >= (0 if "baseline" in name else 1), name
        failures = (figures["failed"], figures["non_2xx"], figures["refused"], figures["resets"])
        assert failures == (0, 0, 0, 0), name

    assert len(results["latency"]) == 6
    for figures in results["latency"].values():
        assert figures["repeats"] == results["profile"]["latency_repeats"]
        for key in ("old_signalled_s", "new_answers_s", "nobody_accepting_s"):
            assert set(figures[key]) == {"median", "min", "max"}
    slow = results["profile"]["slow_boot"]
    # Ours signals the old generation only once the new one is ready.
    strict = results["latency"][f"ours --require-notify, app ready in {slow:g} s"]
    assert strict["old_signalled_s"]["min"] >= slow

    for name, figures in results["footprint"].items():
        assert figures["idle_rss_kib"] > 1000
        if name == "ours" or "stalled_after_reloads" not in figures:  # Perl's may stall
            assert figures["reloads"] == results["profile"]["footprint_reloads"], name
        assert figures["cpu_ms_per_reload"] >= 0
    behind = results["behind_nginx"]["contenders"]
    assert len(behind) == 8  # the Go program is built only for quick and full runs
    ours = ("uvicorn adapter", "our UvicornWorker", "aiohttp adapter", "example app", "asyncio")
    for name, loads in behind.items():
        for load, figures in loads.items():
            assert figures["requests"] > 0, (name, load)
            assert figures["reloads"] >= 1, (name, load)
            if any(mine in name for mine in ours):
                errors = {k: figures[k] for k in ("non_2xx", "proxy_errors")}
                assert errors == {"non_2xx": 0, "proxy_errors": 0}, (name, load)
    assert "| contender |" in result.stdout, "the markdown table is printed"
    assert "| app under ours |" in result.stdout


def test_memory_smoke_run_writes_complete_results(tmp_path: Path) -> None:
    """``make bench MODE=memory`` in small (2 workers of 20 MB, 0.3 s
    imports, 5 s of ab): every way to reload is measured, none fails a
    request, and the rolling reload peaks lower than the whole overlap.
    Its timing and p99 gates are the benchmark's to judge, not CI's."""
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "benchmark.py"),
            "--mode=memory-smoke",
            f"--out={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (json_path,) = tmp_path.glob("*-memory-smoke.json")
    results = json.loads(json_path.read_text())
    assert results["mode"] == "memory-smoke"
    assert {"gunicorn", "uwsgi", "nproc", "kernel"} <= set(results["machine"])
    workers = results["profile"]["workers"]
    contenders = results["contenders"]
    assert len(contenders) == 6
    for name, figures in contenders.items():
        steady, reload = figures["steady"], figures["reload"]
        assert steady["requests"] > 0 and reload["requests"] > 0, name
        assert steady["pss_mib"] > 0 and reload["peak_pss_mib"] > 0, name
        assert reload["reload_s"] is not None, (name, figures["series"])
        assert reload["old_gone_s"] <= reload["reload_s"], name
        assert reload["requests_during"] > 0 and reload["p99_during_ms"] > 0, name
        assert reload["failed"] == 0, name
        assert figures["exited_during_the_run"] is None, name
        assert figures["series"], name
        assert "/tmp" not in figures["command"] and str(ROOT) not in figures["command"]
        if name.startswith("start_server"):
            assert reload["non_2xx"] == 0, name
    overlap = contenders["start_server + gunicorn (whole overlap, today's default)"]
    rolling = contenders["start_server --max-surge=1 + gunicorn"]
    assert rolling["reload"]["peak_ratio"] < overlap["reload"]["peak_ratio"]
    assert rolling["reload"]["most_workers"] <= workers + 1
    # It rolled: one worker given up and one grown for each but the first.
    assert rolling["superdaemon_signals"] == {"TTIN": workers - 1, "TTOU": workers - 1}
    gated = [name for name, figures in contenders.items() if "gates" in figures]
    assert gated == [
        "start_server --max-surge=1 + gunicorn",
        "start_server --max-surge=1 + gunicorn --preload",
    ]
    for name in gated:
        gates = contenders[name]["gates"]
        assert set(gates) == {"peak_pss_ratio", "failed", "non_2xx", "p99_ratio", "reload_s"}
        assert all(isinstance(gate["pass"], bool) for gate in gates.values()), name
        assert gates["failed"]["pass"] and gates["non_2xx"]["pass"], name
    assert "| way |" in result.stdout, "the markdown table is printed"
