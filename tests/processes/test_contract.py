"""The worker-facing contract, compared with Perl's start_server 0.35 running
side by side: same options, same worker, same observations."""

from __future__ import annotations

import os
import re
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from harness.apps import REPORTER, signals_received, wait_for_reports
from harness.processes import (
    PERL_START_SERVER,
    START_SERVER,
    free_port,
    pid_alive,
    running,
    serving,
    wait_for_file,
    worker_env,
)

pytestmark = pytest.mark.perl

if not os.path.exists(PERL_START_SERVER):
    pytest.skip(
        "Perl start_server (libserver-starter-perl) is not installed", allow_module_level=True
    )


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def _sockets_of(report: dict[str, Any]) -> list[tuple[str, str, str, object]]:
    """(key, family, type, address) for each SERVER_STARTER_PORT entry, in order."""
    out = []
    for entry in report["env"]["SERVER_STARTER_PORT"].split(";"):
        key, fd = entry.rsplit("=", 1)
        info = report["fds"][fd]
        out.append((key, info["family"], info["type"], info["address"]))
    return out


def _scenario(
    program: str, out: Path, ports: list[str], paths: list[str], extra: list[str]
) -> dict[str, Any]:
    """Start, HUP twice, TERM; return what the workers and files showed."""
    out.mkdir()
    status_file = out / "status"
    argv = [
        program,
        *(f"--port={p}" for p in ports),
        *(f"--path={p}" for p in paths),
        f"--status-file={status_file}",
        *extra,
        "--",
        *REPORTER,
    ]
    env = worker_env(REPORT_DIR=str(out))
    result: dict[str, Any] = {}
    with running(argv, env=env) as daemon:
        first = wait_for_reports(out, 1)
        daemon.wait_for(r"starting new worker")
        for round_ in (1, 2):
            daemon.signal(signal.SIGHUP)
            daemon.wait_for(r"^old worker \d+ died", count=round_)
        workers = wait_for_reports(out, 3)
        result["status"] = wait_for_file(status_file, lambda text: text.count("\n") == 1)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
        daemon.wait_for(r"^exiting$")
        result["output"] = daemon.output()
    result["workers"] = workers
    result["first"] = first[0]
    result["signals"] = [signals_received(out, w["pid"]) for w in workers]
    result["status_after"] = status_file.exists()
    result["alive_after"] = [w["pid"] for w in workers if pid_alive(w["pid"])]
    return result


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("contract")
    tcp, host_tcp, pinned, udp = (free_port() for _ in range(4))
    ports = [str(tcp), f"127.0.0.1:{host_tcp}", f"127.0.0.1:{pinned}=9", f"u{udp}"]
    if _ipv6_loopback():
        ports.append(f"[::1]:{free_port()}")
    envdir = tmp / "envdir"
    envdir.mkdir()
    (envdir / "APP_SETTING").write_text("from-envdir\nsecond line ignored\n")
    extra = [f"--envdir={envdir}", "--kill-old-delay=0"]
    perl = _scenario(PERL_START_SERVER, tmp / "perl", ports, [str(tmp / "perl.sock")], extra)
    ours = _scenario(START_SERVER, tmp / "ours", ports, [str(tmp / "ours.sock")], extra)
    return perl, ours


def _normalise_paths(sockets: list[tuple[str, str, str, object]], name: str) -> list[object]:
    return [tuple(str(x).replace(name, "X.sock") for x in s) for s in sockets]


def test_same_keys_order_and_sockets(compared: tuple[dict[str, Any], dict[str, Any]]) -> None:
    perl, ours = compared
    assert _normalise_paths(_sockets_of(ours["first"]), "ours.sock") == _normalise_paths(
        _sockets_of(perl["first"]), "perl.sock"
    )


def test_listening_state_and_pinned_descriptor(
    compared: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    for result in compared:
        report = result["first"]
        entries = dict(e.rsplit("=", 1) for e in report["env"]["SERVER_STARTER_PORT"].split(";"))
        pinned = [key for key in entries if entries[key] == "9"]
        assert len(pinned) == 1
        for fd in entries.values():
            info = report["fds"][fd]
            if info["type"] == "stream":
                assert info["listening"], info


def test_generation_counts_every_spawn(compared: tuple[dict[str, Any], dict[str, Any]]) -> None:
    for result in compared:
        gens = [w["env"]["SERVER_STARTER_GENERATION"] for w in result["workers"]]
        assert gens == ["1", "2", "3"]


def test_status_file_lists_the_live_worker(
    compared: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    for result in compared:
        last = result["workers"][-1]
        assert result["status"] == f"3:{last['pid']}\n"
        assert not result["status_after"], "the status file is removed on exit"


def test_signals_on_hup_and_term(compared: tuple[dict[str, Any], dict[str, Any]]) -> None:
    perl, ours = compared
    assert ours["signals"] == perl["signals"] == [["TERM"], ["TERM"], ["TERM"]]
    assert ours["alive_after"] == perl["alive_after"] == []


def test_perl_variables_and_envdir_reach_workers(
    compared: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    perl, ours = compared
    names = (
        "ENVDIR",
        "KILL_OLD_DELAY",
        "ENABLE_AUTO_RESTART",
        "AUTO_RESTART_INTERVAL",
        "APP_SETTING",
    )
    for report_p, report_o in zip(perl["workers"], ours["workers"], strict=True):
        seen_p = {n: report_p["env"].get(n) for n in names}
        seen_o = {n: report_o["env"].get(n) for n in names}
        seen_p["ENVDIR"] = seen_p["ENVDIR"] and Path(seen_p["ENVDIR"]).name
        seen_o["ENVDIR"] = seen_o["ENVDIR"] and Path(seen_o["ENVDIR"]).name
        assert seen_o == seen_p
        assert seen_o["APP_SETTING"] == "from-envdir"


def test_perl_log_lines_kept(compared: tuple[dict[str, Any], dict[str, Any]]) -> None:
    perl, ours = compared
    for pattern in (
        r"^start_server \(pid:\d+\) starting now\.\.\.$",
        r"^starting new worker \d+$",
        r"^received HUP, spawning a new worker$",
        r"^new worker is now running, sending TERM to old workers:\d+$",
        r"^killing old workers$",
        r"^old worker \d+ died, status:0",
        r"^received TERM, sending TERM to all workers:\d+$",
        r"^worker \d+ died, status:0",
        r"^exiting$",
        r"^socket is duplicated to file descriptor 9$",
    ):
        for result in (perl, ours):
            assert any(re.search(pattern, line) for line in result["output"].splitlines()), (
                pattern,
                result["output"],
            )


def test_only_listeners_and_stdio_are_inherited(
    compared: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    _perl, ours = compared
    for report in ours["workers"]:
        listening = {e.rsplit("=", 1)[1] for e in report["env"]["SERVER_STARTER_PORT"].split(";")}
        assert set(report["fds"]) == {"0", "1", "2"} | listening, report["fds"]


def test_signal_on_hup_is_configurable(tmp_path: Path) -> None:
    """--signal-on-hup=USR1 --signal-on-term=INT: which signals the workers get."""
    results = []
    for name, program in (("perl", PERL_START_SERVER), ("ours", START_SERVER)):
        out = tmp_path / name
        out.mkdir()
        signals = ["--signal-on-hup=USR1", "--signal-on-term=INT"]
        env = worker_env(REPORT_DIR=str(out))
        with serving(
            REPORTER, *signals, env=env, program=program, ready="starting new worker"
        ) as daemon:
            wait_for_reports(out, 1)
            daemon.signal(signal.SIGHUP)
            daemon.wait_for(r"^old worker \d+ died")
            daemon.signal(signal.SIGTERM)
            assert daemon.wait() == 0
        workers = wait_for_reports(out, 2)
        results.append([signals_received(out, w["pid"]) for w in workers])
    assert results[0] == results[1] == [["USR1"], ["INT"]]
