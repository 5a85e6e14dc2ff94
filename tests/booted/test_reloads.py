"""``systemctl reload`` under load, and systemctl's honesty about it: a failed
reload reported as failed, every way of reloading seen begin and end, the
journal as the restart log, and why the unit is not Type=notify-reload."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from harness.app_service import (
    Ab,
    generation,
    journal,
    old_generations_gone,
    say,
    unit_state,
)
from harness.machine import Machine


def test_reload_under_load_fails_no_request(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    main_pid = machine.show("app", "MainPID")
    first = generation(machine)
    reloads, durations = 20, []
    with Ab(concurrency=200) as ab:
        ab.wait_for_traffic()
        for number in range(1, reloads + 1):
            started = time.monotonic()
            machine.run("systemctl", "reload", "app")
            durations.append(time.monotonic() - started)
            # The reload returned: the new generation is the one serving.
            status_text = machine.show("app", "StatusText")
            assert status_text.startswith(f"generation {first + number} (pid "), status_text
            assert machine.show("app", "MainPID") == main_pid
    assert ab.complete > 1000, ab.output
    assert (ab.failed, ab.non_2xx) == (0, 0), ab.output
    assert generation(machine) == first + reloads
    say(
        capsys,
        machine,
        f"{reloads} x systemctl reload under ab -c 200: {ab.complete} requests, "
        f"{ab.failed} failed, {ab.non_2xx} non-2xx; reload took "
        f"{min(durations):.2f}-{max(durations):.2f}s",
    )


def test_failed_reload_reports_failure_and_keeps_serving(machine: Machine) -> None:
    before = generation(machine)
    machine.sh("echo 'broken deploy' > /etc/app/env/EXAMPLE_APP_FAIL")
    try:
        result = machine.run("systemctl", "reload", "app", check=False)
        assert result.returncode != 0
        assert unit_state(machine) == ("active", "running")
        assert generation(machine) == before
        messages = [e["MESSAGE"] for e in journal(machine, "-n", "50")]
        assert any("refusing to start: broken deploy" in m for m in messages), messages
        failed = journal(machine, "SERVER_STARTER_EVENT=failed")
        assert failed and failed[-1]["PRIORITY"] == "3"
        assert "seems to have failed to start" in failed[-1]["MESSAGE"]
        assert "failed to start, retrying in" in machine.show("app", "StatusText")
    finally:
        machine.sh("rm -f /etc/app/env/EXAMPLE_APP_FAIL")
    machine.run("systemctl", "reload", "app")
    old_generations_gone(machine)
    assert generation(machine) > before


def states_while(machine: Machine, action: threading.Thread) -> set[tuple[str, str]]:
    """The unit's states seen while ``action`` runs (bounded)."""
    seen = set()
    action.start()
    deadline = time.monotonic() + 60
    while action.is_alive():
        assert time.monotonic() < deadline, "the action did not end"
        seen.add(unit_state(machine))
    action.join()
    return seen


def test_every_way_of_reloading_reports_honestly(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    """While a new generation boots, systemd shows the unit "reloading";
    ``reload-or-restart`` and ``try-reload-or-restart`` reload (MainPID
    stays); a HUP sent past systemd, and one that supersedes a reload in
    progress, are reloads systemd sees begin and end (RELOADING=1 with
    MONOTONIC_USEC=, then READY=1): the unit is back to "active (running)"
    and the next ``systemctl reload`` is answered, not left waiting."""
    main_pid = machine.show("app", "MainPID")
    before = generation(machine)
    machine.sh("echo 2 > /etc/app/env/EXAMPLE_APP_BOOT_SECONDS")
    try:
        reload = threading.Thread(target=machine.run, args=("systemctl", "reload", "app"))
        seen = states_while(machine, reload)
        assert ("reloading", "reload") in seen or ("reloading", "reload-notify") in seen, seen
        assert generation(machine) == before + 1
        # A HUP straight to the superdaemon while systemctl's reload runs: the
        # one in progress completes, the next follows, each said to systemd.
        reload = threading.Thread(target=machine.run, args=("systemctl", "reload", "app"))
        reload.start()
        while unit_state(machine)[0] != "reloading":
            assert reload.is_alive(), "the reload ended before it was seen"
        machine.run("systemctl", "kill", "--kill-whom=main", "--signal=HUP", "app")
        reload.join(60)
        deadline = time.monotonic() + 60
        while generation(machine) != before + 3 or unit_state(machine) != ("active", "running"):
            assert time.monotonic() < deadline, (generation(machine), unit_state(machine))
            time.sleep(0.1)
    finally:
        machine.run("rm", "-f", "/etc/app/env/EXAMPLE_APP_BOOT_SECONDS")
    for verb in ("reload-or-restart", "try-reload-or-restart", "reload"):
        number = generation(machine)
        machine.run("systemctl", verb, "app", timeout=30)
        assert generation(machine) == number + 1, verb
        assert unit_state(machine) == ("active", "running"), verb
    assert machine.show("app", "MainPID") == main_pid
    old_generations_gone(machine)
    say(
        capsys,
        machine,
        f"systemctl reload seen as {sorted(seen)}; a HUP during it, reload-or-restart, "
        "try-reload-or-restart: each a reload, MainPID unchanged, back to active (running)",
    )


def test_journal_is_the_restart_log(machine: Machine) -> None:
    entries = journal(machine)
    by_event: dict[str, list[dict[str, str]]] = {}
    for entry in entries:
        if "SERVER_STARTER_EVENT" in entry:
            by_event.setdefault(entry["SERVER_STARTER_EVENT"], []).append(entry)
    for event in ("spawn", "ready", "drain", "exit"):
        worker_entries = [e for e in by_event.get(event, []) if "SERVER_STARTER_WORKER_PID" in e]
        assert len(worker_entries) >= 20, (event, len(worker_entries))
        for entry in worker_entries:
            assert entry["SERVER_STARTER_GENERATION"].isdigit()
            assert entry["SERVER_STARTER_WORKER_PID"].isdigit()
    # Every generation that became ready was spawned, and one spawn per generation.
    spawned = [e["SERVER_STARTER_GENERATION"] for e in by_event["spawn"]]
    assert len(spawned) == len(set(spawned))
    ready = {e["SERVER_STARTER_GENERATION"] for e in by_event["ready"]}
    assert ready <= set(spawned)
    reloads = journal(machine, "SERVER_STARTER_EVENT=reload")
    assert len(reloads) >= 20
    assert {e["SERVER_STARTER_EVENT"] for e in reloads} == {"reload"}


def systemd_version(machine: Machine) -> int:
    first = machine.run("systemctl", "--version").stdout.split()
    return int(first[1])


NOTIFY_RELOAD = "/run/systemd/system/app.service.d/notify-reload.conf"


def test_notify_reload_would_hide_failures_or_reload_twice(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    """Why app.service stays Type=notify with ExecReload= on systemd 253 and
    later: Type=notify-reload without ExecReload= reports a reload whose
    new generation fails as a success (READY=1 is all it waits for), and
    with ExecReload= kept systemd both signals and runs it: two generations
    per reload."""
    if systemd_version(machine) < 253:
        pytest.skip("Type=notify-reload is systemd 253 and later")
    outcomes = {}
    machine.run("mkdir", "-p", str(Path(NOTIFY_RELOAD).parent))
    try:
        for name, dropin in (
            ("without ExecReload=", "[Service]\nType=notify-reload\nExecReload=\n"),
            ("with ExecReload=", "[Service]\nType=notify-reload\n"),
        ):
            machine.run("tee", NOTIFY_RELOAD, input=dropin)
            machine.run("systemctl", "daemon-reload")
            machine.run("systemctl", "restart", "app")
            assert machine.show("app", "Type") == "notify-reload"
            before = generation(machine)
            machine.run("systemctl", "reload", "app")
            old_generations_gone(machine)
            made = generation(machine) - before
            machine.sh("echo 'broken deploy' > /etc/app/env/EXAMPLE_APP_FAIL")
            try:
                failed = machine.run("systemctl", "reload", "app", check=False).returncode
            finally:
                machine.run("rm", "-f", "/etc/app/env/EXAMPLE_APP_FAIL")
            outcomes[name] = (made, failed)
    finally:
        machine.run("rm", "-f", NOTIFY_RELOAD)
        machine.run("systemctl", "daemon-reload")
        machine.run("systemctl", "restart", "app")
        # Three starts within seconds: the crash test to come must not meet
        # systemd's start rate limit (StartLimitBurst=5 in 10 s).
        machine.run("systemctl", "reset-failed", "app")
    assert machine.show("app", "Type") == "notify"
    # (generations one reload made, exit status of a reload that failed)
    assert outcomes["without ExecReload="] == (1, 0), outcomes
    assert outcomes["with ExecReload="] == (2, 1), outcomes
    say(
        capsys,
        machine,
        "Type=notify-reload, measured: without ExecReload= a failed reload exits 0; "
        "with it every reload starts 2 generations; shipped: Type=notify + ExecReload=",
    )
