"""``systemctl stop`` and ``restart`` under load, the superdaemon's death
(kill -9, a segfault, a bug) with its workers drained by ExecStopPost=, and
megabytes of the workers' output reaching the journal without blocking."""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.app_service import (
    PORT,
    Ab,
    generation,
    journal,
    say,
)
from harness.machine import Machine
from harness.processes import ROOT


def test_stop_completes_requests_in_flight(machine: Machine) -> None:
    with socket.create_connection(("127.0.0.1", PORT), timeout=30) as client:
        client.sendall(b"GET /slow HTTP/1.0\r\n\r\n")
        received = b""
        while b"Hello, " not in received:
            chunk = client.recv(4096)
            assert chunk, received
            received += chunk
        stopping = threading.Thread(target=machine.run, args=("systemctl", "stop", "app"))
        stopping.start()
        while chunk := client.recv(4096):
            received += chunk
        stopping.join(120)
    assert received.endswith(b"Hello, Python!\n"), received
    assert machine.run("systemctl", "is-active", "app", check=False).stdout.strip() == "inactive"
    assert machine.show("app", "MainPID") == "0"
    leftover = machine.sh(
        "cat /sys/fs/cgroup/system.slice/app.service/cgroup.procs 2>/dev/null", check=False
    ).stdout
    assert leftover.strip() == ""
    assert machine.run("systemctl", "is-active", "app.socket").stdout.strip() == "active"
    assert generation(machine) == 1, "the next connection starts a fresh superdaemon"


LIST_APP_PROCESSES = """
import os
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\\0")
        parent = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1]
        cgroup = open(f"/proc/{pid}/cgroup").read().strip().rsplit(":", 1)[1]
    except OSError:
        continue
    if any(arg.endswith(b"/server-starter-example") for arg in argv):
        print(pid, parent, cgroup)
"""


# Loaded by every python3 of app.service through PYTHONPATH (a drop-in):
# the superdaemon's reload raises, as a bug in it would.
PROVOKED_BUG = """\
import server_starter.superdaemon.supervisor


def request_reload(self, answer, announcement):
    raise RuntimeError("a bug in the superdaemon, provoked by the test")


server_starter.superdaemon.supervisor.Supervisor.request_reload = request_reload
"""


BUG_DROP_IN = "/etc/systemd/system/app.service.d/provoked-bug.conf"


def superdaemon_restarted(machine: Machine, old_pid: str, timeout: float = 60) -> None:
    """Until systemd runs a new superdaemon and the unit is active again:
    systemd offers no wait on a restart, so poll."""
    deadline = time.monotonic() + timeout
    while (
        machine.show("app", "MainPID") in ("0", old_pid)
        or machine.run("systemctl", "is-active", "app", check=False).stdout.strip() != "active"
    ):
        assert time.monotonic() < deadline, "systemd did not restart the service"
        time.sleep(0.1)


def test_restart_and_the_superdaemons_death_fail_no_request(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    # /slow keeps about 200 requests in flight at every moment.
    with Ab(concurrency=200, path="/slow") as restart_load:
        restart_load.wait_for_traffic()
        restart_load.keep_going(1)
        machine.run("systemctl", "restart", "app")
        restart_load.wait_for_traffic()
        restart_load.keep_going(1)
    machine.sh(
        f"mkdir -p /etc/app/bug && cat > /etc/app/bug/sitecustomize.py <<'EOF'\n{PROVOKED_BUG}EOF"
    )
    machine.sh(f"mkdir -p {os.path.dirname(BUG_DROP_IN)}")
    machine.sh(f"printf '[Service]\\nEnvironment=PYTHONPATH=/etc/app/bug\\n' > {BUG_DROP_IN}")
    machine.run("systemctl", "daemon-reload")
    machine.run("systemctl", "restart", "app")
    deaths: dict[str, Callable[[str], object]] = {
        "kill -9": lambda pid: machine.sh(f"kill -KILL {pid}"),
        "a segfault (SIGSEGV)": lambda pid: machine.sh(f"kill -SEGV {pid}"),
        "an unhandled exception": lambda pid: machine.run(
            "systemctl", "reload", "app", check=False
        ),
    }
    loads: dict[str, Ab] = {}
    cursor = machine.run("journalctl", "--show-cursor", "-n", "0", "-q").stdout.split()[-1]
    try:
        for death, provoke in deaths.items():
            # Five starts in ten seconds hit systemd's crash-loop guard
            # (StartLimitBurst=): this test packs its deaths into seconds.
            machine.run("systemctl", "reset-failed", "app")
            with Ab(concurrency=200, path="/slow") as loads[death]:
                loads[death].wait_for_traffic()
                loads[death].keep_going(1)
                old_pid = machine.show("app", "MainPID")
                provoke(old_pid)
                superdaemon_restarted(machine, old_pid)
                loads[death].wait_for_traffic()
                loads[death].keep_going(1)
    finally:  # the tests after this one need a superdaemon without the bug
        machine.run("rm", "-f", BUG_DROP_IN)
        machine.run("systemctl", "daemon-reload")
        machine.run("systemctl", "reset-failed", "app")
        machine.run("systemctl", "restart", "app")
    # Each death: systemd ran ExecStopPost=, which drained the dead
    # superdaemon's workers before the restart.
    drained = [
        entry["MESSAGE"]
        for entry in journal(machine, f"--after-cursor={cursor}")
        if "start_server died" in entry.get("MESSAGE", "")
    ]
    assert len(drained) == 3, drained
    for line in drained[:2]:
        assert re.search(r"sent SIGTERM to its workers [\d ]+: all exited", line), line
    assert "killed/KILL" in drained[0] and "/SEGV" in drained[1], drained
    # On its way out, the superdaemon with a bug sent its workers TERM itself
    # (they may have drained before ExecStopPost= looked).
    assert "exited/1" in drained[2], drained
    assert re.search(r"sent SIGTERM to its workers [\d ]+: all exited|no worker", drained[2])
    bug = [
        e for e in journal(machine, f"--after-cursor={cursor}") if "RuntimeError" in e["MESSAGE"]
    ]
    assert bug and "provoked by the test" in bug[0]["MESSAGE"], "the bug's traceback is logged"
    # No worker of a dead superdaemon survives: every example-app process is
    # the new superdaemon or descends from it, in app.service's cgroup.
    main_pid = machine.show("app", "MainPID")
    listing = machine.run("python3", "-c", LIST_APP_PROCESSES).stdout
    processes = [line.split() for line in listing.splitlines() if line]
    parents = {pid: parent for pid, parent, _ in processes}
    assert main_pid in parents, processes
    for pid, parent, cgroup in processes:
        ancestor = pid
        while ancestor in parents and ancestor != main_pid:
            ancestor = parents[ancestor]
        assert ancestor == main_pid, f"orphan: {pid} (parent {parent}) {cgroup}"
        assert cgroup.endswith("/app.service"), cgroup
    for load in (restart_load, *loads.values()):
        assert load.complete > 100, load.output
        assert (load.failed, load.refused) == (0, 0), load.output
    say(
        capsys,
        machine,
        f"systemctl restart under ab -c 200 /slow: {restart_load.complete} requests, "
        f"{restart_load.failed} failed, {restart_load.refused} refused",
    )
    for death, load in loads.items():
        say(
            capsys,
            machine,
            f"the superdaemon's death by {death} under ab -c 200 /slow: {load.complete} "
            f"requests, {load.failed} failed, {load.refused} refused, longest "
            f"{load.longest_ms} ms; its workers drained by "
            f"ExecStopPost=, systemd restarted it, none orphaned",
        )


NOISE_LINE = "noise " + "x" * 4000  # one write each, under PIPE_BUF: never split


NOISE_LINES = 5_000_000 // (len(NOISE_LINE) + 1)  # 5 MB


NOISY_APP = f"""#!/bin/sh
# The example app, after starting 5 MB of 4000-byte lines to stderr.
python3 /usr/local/bin/noise {NOISE_LINES} "{NOISE_LINE}" &
exec /usr/bin/server-starter-example
"""


def test_megabytes_of_worker_output_reach_the_journal_and_block_nothing(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    dropin = Path("/run/systemd/system/app.service.d/noisy.conf")
    exec_start = machine.show("app", "ExecStart")
    command = re.search(r"argv\[\]=(.*?) ;", exec_start)
    assert command is not None, exec_start
    noisy = command[1].replace("/usr/bin/server-starter-example", "/usr/local/bin/noisy-app")
    noise = (ROOT / "tests" / "workers" / "noise.py").read_text()
    machine.run("tee", "/usr/local/bin/noise", input=noise)
    machine.run("tee", "/usr/local/bin/noisy-app", input=NOISY_APP)
    machine.run("chmod", "755", "/usr/local/bin/noisy-app")
    machine.run("mkdir", "-p", str(dropin.parent))
    machine.run("tee", str(dropin), input=f"[Service]\nExecStart=\nExecStart={noisy}\n")
    try:
        machine.run("systemctl", "daemon-reload")
        machine.run("systemctl", "restart", "app")
        invocation = machine.show("app", "InvocationID")  # the same across reloads
        with Ab(concurrency=50) as ab:
            ab.wait_for_traffic()
            for _ in range(3):
                machine.run("systemctl", "reload", "app")
            ab.keep_going(1)
        count_lines = (
            f"journalctl _SYSTEMD_INVOCATION_ID={invocation} -o cat | grep -cx '{NOISE_LINE}'"
        )
        deadline = time.monotonic() + 60  # the last generation may still be writing
        while (lines := int(machine.sh(count_lines, check=False).stdout)) < 4 * NOISE_LINES:
            assert time.monotonic() < deadline, f"{lines} of {4 * NOISE_LINES} noise lines"
            time.sleep(0.5)
    finally:
        machine.run("rm", "-f", str(dropin))
        machine.run("systemctl", "daemon-reload")
        machine.run("systemctl", "restart", "app")
    assert lines == 4 * NOISE_LINES
    assert ab.complete > 100 and (ab.failed, ab.non_2xx) == (0, 0), ab.output
    say(
        capsys,
        machine,
        f"4 generations writing 5 MB each to stderr, 3 systemctl reloads under ab -c 50: "
        f"{ab.complete} requests, {ab.failed} failed; all {lines} lines whole in the journal",
    )
