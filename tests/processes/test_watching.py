"""What an operator sees and steers, with real processes: a new generation
that dies on probation (during --kill-old-delay) under load, ``--status``
and ``--status --json``, the metrics file, and --max-draining with
websocket clients that never leave."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.apps import APPS, EXAMPLE_APP
from harness.http_clients import generation_of
from harness.load import run_ab
from harness.processes import (
    ROOT,
    START_SERVER,
    free_port,
    restart,
    run_start_server,
    running,
    worker_env,
)
from harness.reporting import report

REQUESTS = 60_000  # about 5 s here: longer than the probation
GIVES_UP = [sys.executable, str(ROOT / "tests" / "workers" / "gives_up.py")]
SCHEMA = json.loads((ROOT / "docs" / "status.schema.json").read_text())


def status(pid_file: Path) -> tuple[int, dict[str, Any], str]:
    """``--status --json`` (checked against the documented schema), its exit
    code, and the table ``--status`` prints."""
    as_json = run_start_server("--status", "--json", f"--pid-file={pid_file}")
    table = run_start_server("--status", f"--pid-file={pid_file}")
    assert as_json.returncode == table.returncode, (as_json.stderr, table.stderr)
    assert as_json.stderr == table.stderr == ""
    data = json.loads(as_json.stdout)
    jsonschema.validate(data, SCHEMA)
    return as_json.returncode, data, table.stdout


def metrics(path: Path) -> dict[str, float]:
    """The metrics file, as Prometheus's own parser reads it: sample name
    with its labels, to value."""
    samples = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


@pytest.mark.load
def test_a_generation_dying_on_probation_leaves_the_old_one_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port, pid_file, envdir = free_port(), tmp_path / "pid", tmp_path / "env"
    envdir.mkdir()
    metrics_file = tmp_path / "metrics.prom"
    argv = [
        START_SERVER,
        f"--port=127.0.0.1:{port}",
        f"--pid-file={pid_file}",
        f"--envdir={envdir}",
        f"--metrics-file={metrics_file}",
        "--kill-old-delay=5",
        "--",
        *GIVES_UP,
    ]
    with running(argv, env=worker_env()) as daemon:
        old = int(daemon.wait_for(r"worker (\d+) \(generation 1\) is ready").group(1))
        code, before, table = status(pid_file)
        assert code == 0 and before["serving_generation"] == 1
        assert f"{old}  serving" in table
        (envdir / "GIVE_UP_AFTER").write_text("1.5\n")  # the broken deploy
        load: dict[str, Any] = {}
        ab = threading.Thread(
            target=lambda: load.update(run_ab(f"http://127.0.0.1:{port}/", REQUESTS, 200, tmp_path))
        )
        ab.start()
        try:
            result = restart(pid_file)
            overlapped = ab.is_alive()  # the whole probation ran under the load
        finally:
            (envdir / "GIVE_UP_AFTER").unlink()
            ab.join(60)
        assert overlapped
        assert result.returncode == 1, result.stderr
        assert "generation 2 died" in result.stderr
        assert "within --kill-old-delay" in result.stderr
        assert f"generation 1 (pid {old}) keeps serving" in result.stderr
        daemon.wait_for(rf"worker {old} \(generation 1\) serves again")
        code, after, table = status(pid_file)
        assert code == 0
        assert [(g["generation"], g["pid"], g["state"]) for g in after["generations"]] == [
            (1, old, "serving")
        ]
        assert after["last_reload"]["outcome"] == "failed"
        assert "within --kill-old-delay" in after["last_reload"]["reason"]
        assert after["next_retry_at"] is None  # no restart loop
        assert after["worker_exits"]["probation"] == 1
        assert "last reload: generation 2 failed" in table
        assert generation_of(port) == 1
        figures = metrics(metrics_file)
        assert figures["server_starter_serving_generation"] == 1
        assert figures["server_starter_last_reload_successful"] == 0
        assert figures['server_starter_reloads_total{outcome="failed"}'] == 1
        assert figures['server_starter_worker_exits_total{reason="probation"}'] == 1
        # Never signalled, and nothing started since: the log says so.
        assert daemon.matches(rf"sending \w+ to worker {old}") == []
        assert len(daemon.matches(r"starting new worker")) == 2
        # The next reload tries again, and the fixed code takes over.
        result = restart(pid_file)
        assert result.returncode == 0, result.stderr
        assert "generation 3 is serving" in result.stderr
        assert metrics(metrics_file)["server_starter_last_reload_successful"] == 1
    figures = {k: load[k] for k in ("requests", "failed", "non_2xx", "resets", "latency_ms")}
    report(capsys, f"a generation dying on probation, under ab -r -c 200: {figures}")
    assert load["requests"] == REQUESTS
    assert load["failed"] == 0 and load["resets"] == 0, load


def test_status_exit_codes_and_refusals(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    gone = run_start_server("--status", f"--pid-file={pid_file}")
    assert gone.returncode == 1
    assert gone.stderr.startswith("start_server: --status: no start_server runs")
    assert "Traceback" not in gone.stderr
    # Never an abbreviation: --status is not --status-file, --stat nothing.
    for argv in (["--stat"], ["--json"], ["--status", "--restart"]):
        refused = run_start_server(*argv, f"--pid-file={pid_file}")
        assert refused.returncode == 2, (argv, refused.stderr)
        assert "Traceback" not in refused.stderr
    envdir = tmp_path / "env"
    envdir.mkdir()
    (envdir / "EXAMPLE_APP_FAIL").write_text("no database\n")
    argv = [
        START_SERVER,
        f"--port=127.0.0.1:{free_port()}",
        f"--pid-file={pid_file}",
        f"--envdir={envdir}",
        "--",
        *EXAMPLE_APP,
    ]
    with running(argv, env=worker_env()) as daemon:
        daemon.wait_for(r"retrying in 1s")
        code, data, table = status(pid_file)  # nothing serves: 3, as systemctl status
        assert code == 3
        assert data["serving_generation"] is None and data["failure_streak"] >= 1
        assert "serving: no generation" in table and "next retry: in" in table


def test_max_draining_stops_the_oldest_generations(tmp_path: Path) -> None:
    port, pid_file = free_port(), tmp_path / "pid"
    metrics_file = tmp_path / "metrics.prom"
    argv = [
        START_SERVER,
        f"--port=127.0.0.1:{port}",
        f"--pid-file={pid_file}",
        f"--metrics-file={metrics_file}",
        "--require-notify",
        "--signal-on-hup=USR1",  # the graceful drain: waits for every websocket
        "--max-draining=2",
        "--",
        sys.executable,
        str(APPS / "websocket_app.py"),
    ]
    reloads = 10

    async def clients() -> list[str]:
        """A websocket client on each generation, none ever leaving: each
        reload leaves the one before draining for good."""
        greetings = []
        async with aiohttp.ClientSession() as session:
            held = []
            for number in range(reloads + 1):
                ws = await session.ws_connect(f"http://127.0.0.1:{port}/ws")
                held.append(ws)
                greetings.append(await ws.receive_str(timeout=10))
                if number < reloads:
                    result = await asyncio.to_thread(restart, pid_file)
                    assert result.returncode == 0, result.stderr
            # Each stopped generation closed its websocket, going away.
            closed = [ws for ws in held if (await _closed(ws))]
            assert len(closed) == reloads - 2
        return greetings

    with running(argv, env=worker_env()) as daemon:
        daemon.wait_for(r"is ready \(READY=1\)")
        greetings = asyncio.run(clients())
        assert greetings == [f"generation {n}" for n in range(1, reloads + 2)]
        stopped = daemon.wait_for(r"evicting the oldest", count=reloads - 2)
        assert "more than 2 old generations draining (--max-draining)" in stopped.string
        daemon.wait_for(r"^old worker \d+ died", count=reloads - 2)
        _, data, table = status(pid_file)
        states = [g["state"] for g in data["generations"]]
        assert states == ["draining", "draining", "serving"], table
        figures = metrics(metrics_file)
        assert figures['server_starter_generations{state="draining"}'] == 2
        assert figures['server_starter_generations{state="evicted"}'] == 0
        assert figures['server_starter_worker_exits_total{reason="evicted"}'] == reloads - 2


async def _closed(ws: aiohttp.ClientWebSocketResponse) -> bool:
    """Whether the server closed this websocket (bounded: a held one times out)."""
    try:
        message = await ws.receive(timeout=0.5 if ws.closed else 5)
    except TimeoutError:
        return False
    return message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
