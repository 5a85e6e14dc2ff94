"""apt upgrades under load: the superdaemon upgraded in place (same MainPID,
same worker), a broken installed version refused, the app's package
upgraded by a reload, and 0.1.0's flat layout both ways."""

from __future__ import annotations

import time

import pytest

from harness.app_service import (
    PORT,
    Ab,
    apt_install,
    apt_install_server_starter,
    generation,
    journal,
    old_generations_gone,
    say,
)
from harness.debs import FLAT, UPGRADE, VERSION
from harness.http_clients import http_get
from harness.machine import Machine


def test_apt_upgrade_of_server_starter_upgrades_the_superdaemon_in_place(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    """apt installs a newer server-starter under load: its postinst makes the
    running superdaemon exec the new version with its state.  Same MainPID,
    same worker, no request failed; a reload right after runs on the new code."""
    main_pid = machine.show("app", "MainPID")
    _, headers, _ = http_get(PORT, timeout=60)
    worker = (headers["x-server-starter-generation"], headers["x-worker-pid"])
    with Ab(concurrency=200) as ab:
        ab.wait_for_traffic()
        installed = apt_install_server_starter(machine, UPGRADE)
        ab.keep_going(1.0)
    assert f"upgraded in place from {VERSION} to {UPGRADE}" in installed.stdout, installed.stdout
    assert machine.show("app", "MainPID") == main_pid, "the upgrade restarted the service"
    _, headers, _ = http_get(PORT)
    assert (headers["x-server-starter-generation"], headers["x-worker-pid"]) == worker
    assert ab.complete > 1000, ab.output
    assert (ab.failed, ab.non_2xx, ab.refused) == (0, 0, 0), ab.output
    (event,) = journal(machine, "SERVER_STARTER_EVENT=upgrade", f"_PID={main_pid}", "-n", "1")
    assert (event["SERVER_STARTER_OLD_VERSION"], event["SERVER_STARTER_NEW_VERSION"]) == (
        VERSION,
        UPGRADE,
    )
    machine.run("systemctl", "reload", "app")
    status_text = machine.show("app", "StatusText")
    assert status_text.startswith(f"generation {int(worker[0]) + 1} (pid "), status_text
    (reload,) = journal(machine, "SERVER_STARTER_EVENT=ready", "-n", "1")
    assert int(reload["__REALTIME_TIMESTAMP"]) > int(event["__REALTIME_TIMESTAMP"])
    old_generations_gone(machine)
    say(
        capsys,
        machine,
        f"apt install of server-starter {UPGRADE} under ab -c 200: {ab.complete} requests, "
        f"{ab.failed} failed, 0 refused; MainPID {main_pid} and worker {worker[1]} unchanged",
    )


def test_a_broken_installed_version_is_refused_and_the_old_one_serves(machine: Machine) -> None:
    """The installed code fails to import: asked to upgrade (SIGUSR2 to the
    main process: the command itself would not import either), the running
    superdaemon keeps serving and the journal says why."""
    module = "/usr/lib/python3/dist-packages/server_starter/superdaemon/host.py"
    main_pid = machine.show("app", "MainPID")
    machine.run("cp", module, "/root/host.py.good")
    machine.run("sh", "-c", f"echo \"raise ImportError('a broken build')\" >> {module}")
    try:
        machine.run("systemctl", "kill", "--kill-whom=main", "--signal=USR2", "app")
        # journald files an entry a moment after it is sent: wait for it, bounded.
        deadline = time.monotonic() + 20
        while not [
            e
            for e in journal(machine, "SERVER_STARTER_EVENT=upgrade")
            if "upgrade refused" in e["MESSAGE"] and "ImportError: a broken build" in e["MESSAGE"]
        ]:
            assert time.monotonic() < deadline, machine.run(
                "journalctl", "-u", "app", "-n", "15", "--no-pager"
            ).stdout
            time.sleep(0.1)
    finally:
        machine.run("cp", "/root/host.py.good", module)
    assert machine.show("app", "MainPID") == main_pid
    assert machine.show("app", "ActiveState") == "active"
    assert http_get(PORT)[0] == 200


def test_upgrade_under_load_reloads_instead_of_restarting(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    main_pid = machine.show("app", "MainPID")
    before = generation(machine)
    with Ab(concurrency=200) as ab:
        ab.wait_for_traffic()
        apt_install(machine, UPGRADE)
    assert (
        machine.run("dpkg-query", "-W", "-f=${Version}", "server-starter-example").stdout == UPGRADE
    )
    assert machine.show("app", "MainPID") == main_pid, "the upgrade restarted the service"
    old_generations_gone(machine)
    assert generation(machine) == before + 1
    assert ab.complete > 100, ab.output
    assert (ab.failed, ab.non_2xx) == (0, 0), ab.output
    say(
        capsys,
        machine,
        f"apt install of the upgrade under ab -c 200: {ab.complete} requests, {ab.failed} failed",
    )


def test_the_flat_layout_of_0_1_0_upgrades_in_place_to_todays(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    """0.1.0 as released kept every module in one folder; today's superdaemon
    lives in server_starter.superdaemon.  Both ways in place: apt installs
    the flat build (its postinst makes today's superdaemon exec it), then
    today's again under load: the same MainPID throughout, no request failed."""
    main_pid = machine.show("app", "MainPID")
    down = apt_install(machine, FLAT, "--allow-downgrades")
    assert f"upgraded in place from {UPGRADE} to {FLAT}" in down.stdout, down.stdout
    with Ab(concurrency=200) as ab:
        ab.wait_for_traffic()
        up = apt_install(machine, UPGRADE)
        ab.keep_going(1.0)
    assert f"upgraded in place from {FLAT} to {UPGRADE}" in up.stdout, up.stdout
    assert machine.show("app", "MainPID") == main_pid, "an upgrade restarted the service"
    assert (ab.failed, ab.non_2xx, ab.refused) == (0, 0, 0), ab.output
    machine.run("systemctl", "reload", "app")  # the new layout's reload works
    say(
        capsys,
        machine,
        f"in place from today's layout to 0.1.0's flat one and back, under ab -c 200: "
        f"{ab.complete} requests, {ab.failed} failed; MainPID {main_pid} throughout",
    )
