"""End to end in a booted systemd, on each supported Debian release (12:
systemd 252, Python 3.11; 13: systemd 257, Python 3.13): the .debs installed
with apt, the app driven with systemctl and journalctl, real load from ab and
wrk on the host.

For each release the tests run in file order against one container:
installation first, removal last."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.debs import FLAT, UPGRADE, VERSION
from harness.machine import SUITES, Machine, booted, reference_service
from harness.support import (
    ROOT,
    KeepAliveLoad,
    ab_figures,
    http_get,
    keep_alive_servers,
    readme_blocks,
    reloading,
    report,
    run_ab,
)
from server_starter.uvicorn_drain import MINIMUM_UVICORN

pytestmark = [
    pytest.mark.systemd,
    pytest.mark.timeout(900),  # the first test also builds the .debs and the root file systems
    pytest.mark.skipif(os.geteuid() != 0, reason="booting a container needs root"),
    pytest.mark.skipif(shutil.which("systemd-nspawn") is None, reason="systemd-container missing"),
]

PORT = 8080  # app.socket's ListenStream=


class Ab:
    """ab on the host against the container's socket, stopped with SIGINT
    (ab then prints its results for what it did)."""

    def __init__(self, concurrency: int = 200, path: str = "/", port: int = PORT) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            [
                "ab",
                "-r",
                "-q",
                "-c",
                str(concurrency),
                # -t implies -n 50000: -n must come after it.
                "-t",
                "300",
                "-n",
                "100000000",
                "-s",
                "30",
                f"http://127.0.0.1:{port}{path}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = ""

    def __enter__(self) -> Ab:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        self.output, _ = self.proc.communicate(timeout=60)

    @property
    def figures(self) -> dict[str, Any]:
        return ab_figures(self.output)

    @property
    def complete(self) -> int:
        return int(self.figures["requests"])

    @property
    def failed(self) -> int:
        return int(self.figures["failed"])

    @property
    def non_2xx(self) -> int:
        return int(self.figures["non_2xx"])

    @property
    def refused(self) -> int:
        return int(self.figures["refused"])

    @property
    def longest_ms(self) -> int:
        match = re.search(r"^\s*100%\s+(\d+)", self.output, re.M)
        return int(match.group(1)) if match else 0

    def keep_going(self, seconds: float) -> None:
        """Let the load run on (a load duration, not a synchronisation)."""
        time.sleep(seconds)

    def wait_for_traffic(self, timeout: float = 30) -> None:
        """Until ab's connections are being answered."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if http_get(self.port)[0] == 200:
                return
        raise AssertionError("no traffic")


@pytest.fixture(scope="module", params=list(SUITES))
def machine(
    request: pytest.FixtureRequest, debs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Machine]:
    """One container per release; pytest runs every test of this file against
    the first, powers it off, then against the next."""
    log = tmp_path_factory.mktemp(f"machine-{request.param}") / "console.log"
    binds = [(debs, "/debs"), (ROOT / "tests" / "apps", "/srv/apps")]
    with booted(SUITES[request.param], binds, log) as booted_machine:
        yield booted_machine


def say(capsys: pytest.CaptureFixture[str], machine: Machine, figures: str) -> None:
    """A figure of the run, named by the release it was measured on."""
    report(capsys, f"{machine.suite.release}: {figures}")


def apt_get(machine: Machine, *arguments: str) -> subprocess.CompletedProcess[str]:
    return machine.run("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", *arguments, timeout=300)


def apt_install_server_starter(machine: Machine, version: str) -> subprocess.CompletedProcess[str]:
    return apt_get(machine, "install", "-y", f"/debs/server-starter_{version}_all.deb")


def apt_install(machine: Machine, version: str, *options: str) -> subprocess.CompletedProcess[str]:
    return apt_get(
        machine,
        "install",
        "-y",
        *options,
        f"/debs/server-starter_{version}_all.deb",
        f"/debs/server-starter-example_{version}_all.deb",
    )


def generation(machine: Machine) -> int:
    return int(http_get(PORT)[1]["x-server-starter-generation"])


def old_generations_gone(machine: Machine, timeout: float = 30) -> None:
    """Until the signalled generations have exited: before that one of them
    may still take a connection.  systemd offers no wait on STATUS=, so poll."""
    deadline = time.monotonic() + timeout
    while "draining" in (status := machine.show("app", "StatusText")):
        assert time.monotonic() < deadline, status
        time.sleep(0.1)


def installed_version(machine: Machine, module: str) -> str:
    """A Python package's version, as the container's python3 imports it."""
    code = f"import importlib.metadata as m; print(m.version({module!r}))"
    return machine.run("python3", "-c", code).stdout.strip()


def journal(machine: Machine, *match: str) -> list[dict[str, str]]:
    out = machine.run("journalctl", "-u", "app", "-o", "json", "--no-pager", *match).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_packages_are_lintian_clean(
    machine: Machine, debs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One build serves both releases (architecture all, no compiled part,
    dependencies dh_python3 writes as ranges): each release's own lintian
    judges it."""
    packages = [f"/debs/{deb.name}" for deb in sorted(debs.glob(f"*_{VERSION}_all.deb"))]
    result = machine.run("lintian", "--tag-display-limit", "0", *packages, timeout=600, check=False)
    tags = [line for line in result.stdout.splitlines() if re.match(r"^[EWI]: ", line)]
    assert not [t for t in tags if t.startswith(("E: ", "W: "))], tags
    version = machine.run("dpkg-query", "-W", "-f=${Version}", "lintian").stdout
    say(capsys, machine, f"lintian {version}: {tags or 'no tags'}")


def test_install_listens_and_activates_on_first_request(machine: Machine) -> None:
    apt_install(machine, VERSION)
    assert machine.run("systemctl", "is-active", "app.socket").stdout.strip() == "active"
    inactive = machine.run("systemctl", "is-active", "app.service", check=False).stdout.strip()
    assert inactive == "inactive", "installing must start only the socket"
    status, headers, body = http_get(PORT, timeout=60)
    assert (status, body) == (200, "Hello from a HandleFunc #1!\n")
    assert headers["x-server-starter-generation"] == "1"
    assert machine.run("systemctl", "is-active", "app.service").stdout.strip() == "active"


def test_co_installs_with_perl_start_server(machine: Machine) -> None:
    assert machine.run("start_server", "--version").stdout.strip() == VERSION.split("+")[0]
    assert machine.run("start_server.perl", "--version").stdout.strip() == "0.35"
    assert machine.run("server-starter", "--version").stdout.strip() == VERSION.split("+")[0]
    diversions = machine.run("dpkg-divert", "--list", "/usr/bin/start_server").stdout
    assert "to /usr/bin/start_server.perl by server-starter" in diversions


def test_units_verify_and_are_hardened(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    verify = machine.run(
        "systemd-analyze",
        "verify",
        "--man=no",
        "/usr/lib/systemd/system/app.socket",
        "/usr/lib/systemd/system/app.service",
    )
    assert verify.stdout == verify.stderr == ""
    security = machine.run("systemd-analyze", "security", "--no-pager", "app.service").stdout
    match = re.search(r"Overall exposure level for app.service: ([\d.]+)", security)
    assert match, security
    assert float(match.group(1)) < 3.0
    say(capsys, machine, f"systemd-analyze security app.service: {match.group(1)}")


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


def unit_state(machine: Machine, unit: str = "app") -> tuple[str, str]:
    states = machine.run("systemctl", "show", unit, "-p", "ActiveState,SubState", "--value")
    active, sub = states.stdout.split()
    return active, sub


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


GUNICORN_PORT = 8081
GUNICORN_SOCKET = "/run/gapp.sock"


def install_app(
    machine: Machine,
    unit: str,
    listen: list[str],
    command: str = "",
    service_extra: str = "",
    unit_lines: str | None = None,
) -> None:
    """The shipped app.socket and app.service, renamed to ``unit``, listening
    on ``listen`` and running ``command`` under the superdaemon, as an
    operator adapts them (or with ``unit_lines`` in ExecStart='s place);
    loaded, not started."""
    socket_unit = (
        (ROOT / "units" / "app.socket")
        .read_text()
        .replace("ListenStream=8080", "\n".join(f"ListenStream={where}" for where in listen))
    )
    service_unit = reference_service(unit, command) + service_extra
    if unit_lines is not None:  # its ExecStart= in place, the rest at the end
        exec_start, _, rest = unit_lines.partition("\n")
        service_unit = re.sub(r"^ExecStart=.*$", lambda _: exec_start, service_unit, flags=re.M)
        service_unit += rest
    machine.run("tee", f"/etc/systemd/system/{unit}.socket", input=socket_unit)
    machine.run("tee", f"/etc/systemd/system/{unit}.service", input=service_unit)
    machine.run("systemctl", "daemon-reload")


def test_gunicorn_from_debian_under_systemd(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reference units with ExecStart= running Debian's python3-gunicorn,
    on a TCP and a unix socket."""
    # The README's lines for gunicorn, as written: its ExecStart= for
    # /srv/myapp/myapp.py, and SystemCallFilter=@setuid (gunicorn's workers
    # call setuid() with their own uid, which ~@privileged forbids).
    machine.run("mkdir", "-p", "/srv/myapp")
    machine.run("cp", "/srv/apps/wsgi_app.py", "/srv/myapp/myapp.py")
    install_app(
        machine,
        "gapp",
        [f"127.0.0.1:{GUNICORN_PORT}", GUNICORN_SOCKET],
        unit_lines=readme_blocks()["gunicorn-unit-lines"],
    )
    machine.run("systemctl", "start", "gapp.socket")
    unix_path = f"/proc/{machine.leader}/root{GUNICORN_SOCKET}"  # the host's way in
    assert http_get(GUNICORN_PORT, timeout=60)[2].split() == ["generation", "1"]
    # A worker may answer before systemd has heard READY=1, and a reload job
    # queued behind the start job is merged into it: wait for the start job.
    machine.run("systemctl", "start", "gapp.service")
    main_pid = machine.show("gapp", "MainPID")
    reloads, durations = 10, []
    with Ab(concurrency=200, port=GUNICORN_PORT) as ab:
        ab.wait_for_traffic()
        for number in range(2, reloads + 2):
            started = time.monotonic()
            machine.run("systemctl", "reload", "gapp")
            durations.append(time.monotonic() - started)
            status_text = machine.show("gapp", "StatusText")
            assert status_text.startswith(f"generation {number} (pid "), status_text
            status, _, _ = http_get(0, unix=unix_path)
            assert status == 200
    assert machine.show("gapp", "MainPID") == main_pid
    assert ab.complete > 1000, ab.output
    assert (ab.failed, ab.non_2xx) == (0, 0), ab.output
    machine.run("systemctl", "stop", "gapp.service")
    assert machine.run("test", "-S", GUNICORN_SOCKET, check=False).returncode == 0
    assert http_get(0, unix=unix_path, timeout=60)[2].split() == ["generation", "1"], (
        "not re-activated"
    )
    machine.run("systemctl", "stop", "gapp.service", "gapp.socket")
    say(
        capsys,
        machine,
        f"Debian's gunicorn {installed_version(machine, 'gunicorn')} -w 4 under systemd: "
        f"{reloads} reloads under ab -c 200: "
        f"{ab.complete} requests, {ab.failed} failed; reload took "
        f"{min(durations):.2f}-{max(durations):.2f}s; {GUNICORN_SOCKET} kept "
        "across reloads and stop",
    )


WORKER_PORT = 8083
# The servers of the worker side, run by the release's /usr/bin/python3 with
# its own packages (uvicorn, gunicorn, uvloop, aiohttp) and ours from the .deb.
WORKER_SIDE = keep_alive_servers("/usr/bin/python3", "/srv/apps")
# What ab asks each for: a path whose body has one length (ab counts another
# length as a failure), answered after 20 to 300 ms, and how many times:
# enough for several reloads (each 0.3 to 1.5 s, aiohttp's slowest to boot).
AB_RUNS = {
    "uvicorn adapter": ("/pause", 8_000),
    "gunicorn + UvicornWorker": ("/pause", 8_000),
    "example app": ("/slow", 12_000),
    "aiohttp adapter": ("/echo", 20_000),
    "asyncio recipe": ("/slow", 12_000),
}
LIBRARIES = {
    "uvicorn adapter": "uvicorn",
    "gunicorn + UvicornWorker": "gunicorn",
    "aiohttp adapter": "aiohttp",
}


def uvicorn_recent_enough(machine: Machine) -> bool:
    version = installed_version(machine, "uvicorn")
    return tuple(map(int, version.split(".")[:2])) >= MINIMUM_UVICORN


def test_a_too_old_uvicorn_is_refused_in_one_line(machine: Machine) -> None:
    """Debian 12's python3-uvicorn (0.17.6): the adapter says what it needs
    in one line and exits 1; gunicorn's worker class says the same."""
    if uvicorn_recent_enough(machine):
        pytest.skip(f"{machine.suite.release}'s python3-uvicorn is recent enough")
    version = installed_version(machine, "uvicorn")
    adapter_argv = ["python3", "-m", "server_starter.uvicorn", "asgi_app:app", "--app-dir=/srv"]
    adapter = machine.run(*adapter_argv, check=False)
    assert adapter.returncode == 1
    assert adapter.stderr == (
        f"server_starter.uvicorn: uvicorn {version} is too old: the drain needs uvicorn "
        "0.22 or later (Debian 12's python3-uvicorn is 0.17.6; pip install 'uvicorn>=0.22' "
        "in a venv)\n"
    )
    worker = machine.run("python3", "-c", "import server_starter.uvicorn_worker", check=False)
    assert worker.returncode == 1
    assert f"UvicornTooOld: uvicorn {version} is too old" in worker.stderr


@pytest.mark.parametrize("name", WORKER_SIDE)
def test_the_worker_side_on_the_releases_own_python(
    name: str, machine: Machine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each adapter under the shipped units, on the release's python3 and
    packages: ``systemctl reload`` every 0.4 s under ab -c 250 (a
    connection per request) and 80 HTTP/1.1 clients reusing their
    connections, at once; nothing fails, no kept-alive connection ends
    unserved, the kernel resets none."""
    if "uvicorn" in " ".join(WORKER_SIDE[name]) and not uvicorn_recent_enough(machine):
        pytest.skip(f"{machine.suite.release}'s python3-uvicorn is too old for the adapter")
    extra = "SystemCallFilter=@setuid\n" if "gunicorn" in name else ""
    install_app(machine, "wapp", [f"127.0.0.1:{WORKER_PORT}"], " ".join(WORKER_SIDE[name]), extra)
    machine.run("systemctl", "start", "wapp.socket", "wapp.service")
    try:
        with (
            KeepAliveLoad(WORKER_PORT, "/slow", threads=40) as slow,
            KeepAliveLoad(WORKER_PORT, "/", threads=40) as fast,
            reloading(lambda: machine.run("systemctl", "reload", "wapp"), 0.4),
        ):
            path, requests = AB_RUNS[name]
            ab = run_ab(f"http://127.0.0.1:{WORKER_PORT}{path}", requests, 250, tmp_path)
        reloads = int(machine.show("wapp", "StatusText").split()[1]) - 1
        python = machine.run("python3", "-c", "import sys; print(sys.version.split()[0])").stdout
    finally:
        machine.run("systemctl", "stop", "wapp.service", "wapp.socket")
    keep_alive = (slow.failures + fast.failures, slow.clean_closes + fast.clean_closes)
    assert ab["requests"] == requests, ab
    assert (ab["failed"], ab["non_2xx"], ab["resets"]) == (0, 0, 0), (ab, keep_alive)
    assert keep_alive == ([], 0)
    assert slow.served > 0 and fast.served > 0
    assert reloads >= 3
    library = ""
    if name in LIBRARIES:
        library = f", {LIBRARIES[name]} {installed_version(machine, LIBRARIES[name])}"
    say(
        capsys,
        machine,
        f"{name} (Python {python.strip()}{library}): {reloads} systemctl reloads under "
        f"ab -c 250 {path} and 80 keep-alive clients: ab {ab['requests']} requests, "
        f"{ab['failed']} failed, {ab['resets']} reset; keep-alive {slow.served + fast.served} "
        f"served, {slow.clean_closes + fast.clean_closes} ended unserved",
    )


INSTANCES = {"one": 8091, "two": 8092}
EXAMPLES = "/usr/share/doc/server-starter/examples"


def test_template_instances_reload_alone(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two apps from the shipped app@.socket/app@.service templates: reloading
    one fails nothing, leaves the other's worker alone, and each instance's
    journal holds only its own events.  Instance one is set up, started and
    reloaded by the README's commands, run as written."""
    machine.run("mkdir", "-p", "/etc/app/one/env")
    machine.run("tee", "/etc/app/one/env/EXAMPLE_APP_MESSAGE", input="Hi one\n")
    readme = machine.run("sh", "-ec", readme_blocks()["template-units"])  # fails on an error
    assert "app@one" in readme.stdout  # its journalctl
    # The README's copy of the units for your own app, also as written.
    machine.run("sh", "-ec", readme_blocks()["own-app-units"])
    for kind in ("socket", "service"):
        machine.run("cmp", f"{EXAMPLES}/app.{kind}", f"/etc/systemd/system/myapp.{kind}")
    machine.run("mkdir", "-p", "/etc/systemd/system/app@two.socket.d", "/etc/app/two/env")
    machine.run(
        "tee",
        "/etc/systemd/system/app@two.socket.d/listen.conf",
        input=f"[Socket]\nListenStream=127.0.0.1:{INSTANCES['two']}\n",
    )
    machine.run("tee", "/etc/app/two/env/EXAMPLE_APP_MESSAGE", input="Hi two\n")
    machine.run("systemctl", "daemon-reload")
    verify = machine.run(
        "systemd-analyze", "verify", "--man=no", "app@one.socket", "app@one.service", check=False
    )
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    for name in INSTANCES:
        machine.run("systemctl", "start", f"app@{name}.socket", f"app@{name}.service")
    status, headers, body = http_get(INSTANCES["two"], timeout=60)
    assert (status, body) == (200, "Hi two from a HandleFunc #1!\n")
    two_worker, two_main = headers["x-worker-pid"], machine.show("app@two", "MainPID")
    assert http_get(INSTANCES["one"], timeout=60)[2] == "Hi one from a HandleFunc #1!\n"

    reloads = 5
    with Ab(concurrency=200, port=INSTANCES["one"]) as ab:
        ab.wait_for_traffic()
        for number in range(3, reloads + 3):  # the README's reload made generation 2
            machine.run("systemctl", "reload", "app@one")
            status_text = machine.show("app@one", "StatusText")
            assert status_text.startswith(f"generation {number} (pid "), status_text
    assert ab.complete > 1000, ab.output
    assert (ab.failed, ab.non_2xx) == (0, 0), ab.output

    _, headers, _ = http_get(INSTANCES["two"])
    assert (headers["x-worker-pid"], headers["x-server-starter-generation"]) == (two_worker, "1")
    assert machine.show("app@two", "MainPID") == two_main
    entries = {
        name: [
            json.loads(line)
            for line in machine.run(
                "journalctl", "-u", f"app@{name}", "-o", "json", "--no-pager"
            ).stdout.splitlines()
            if line.strip()
        ]
        for name in INSTANCES
    }
    ours = [e for e in entries["one"] if "SERVER_STARTER_EVENT" in e]
    assert {e["_SYSTEMD_UNIT"] for e in ours} == {"app@one.service"}
    # systemd's own lines about the unit (from init.scope) name it too.
    assert {e.get("UNIT", "app@one.service") for e in entries["one"]} <= {
        "app@one.service",
        "app@one.socket",
    }
    reload_events = [e for e in ours if e.get("SERVER_STARTER_EVENT") == "reload"]
    assert len(reload_events) == reloads + 1  # and the README's
    one_pids = {e["SERVER_STARTER_WORKER_PID"] for e in ours if "SERVER_STARTER_WORKER_PID" in e}
    two_pids = {
        e["SERVER_STARTER_WORKER_PID"] for e in entries["two"] if "SERVER_STARTER_WORKER_PID" in e
    }
    assert two_worker in two_pids and two_worker not in one_pids
    assert not [e for e in entries["two"] if e.get("SERVER_STARTER_EVENT") == "reload"]
    for name in INSTANCES:
        machine.run("systemctl", "stop", f"app@{name}.service", f"app@{name}.socket")
    say(
        capsys,
        machine,
        f"template units, app@one and app@two: {reloads} reloads of app@one under ab -c 200: "
        f"{ab.complete} requests, {ab.failed} failed; app@two's worker {two_worker} untouched",
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


def test_purge_leaves_nothing_and_gives_start_server_back(machine: Machine) -> None:
    """Last: both packages purged under a running app; what they installed,
    enabled and diverted is gone, and start_server is Perl's again."""
    assert http_get(PORT, timeout=60)[0] == 200
    apt_get(machine, "purge", "-y", "server-starter-example", "server-starter")
    listed = machine.run("dpkg-query", "-W", "-f=${Package}\\n").stdout.split()
    assert "server-starter" not in listed and "server-starter-example" not in listed
    for unit in ("app.socket", "app.service"):
        assert machine.run("systemctl", "is-active", unit, check=False).stdout.strip() in (
            "inactive",
            "unknown",  # systemd no longer knows the unit at all
        )
    left = machine.sh(
        "ls -d /lib/systemd/system/app.* /usr/lib/systemd/system/app.* /etc/app/env "
        "/usr/lib/python3/dist-packages/server_starter /usr/bin/server-starter* "
        "/etc/systemd/system/sockets.target.wants/app.socket "
        "/var/lib/systemd/deb-systemd-helper-enabled/app.* 2>/dev/null",
        check=False,
    ).stdout
    assert left == ""
    assert "start_server" not in machine.run("dpkg-divert", "--list").stdout
    assert machine.run("start_server", "--version").stdout.strip() == "0.35"
    assert machine.run("pgrep", "-f", "server-starter", check=False).stdout == ""
