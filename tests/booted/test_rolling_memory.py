"""A big gunicorn app under ``MemoryMax=``: with ``--max-surge=1`` its
reloads stay within a limit of 1.4 times its steady memory, where the
whole overlap of two generations runs it out of memory.

The app is app.service with a drop-in running Debian's gunicorn, 4 workers
each holding WSGI_APP_MEGABYTES of private memory (tests/apps/wsgi_app.py).
Its steady memory is what the service's memory cgroup is charged while it
serves, less the clean page cache in it (file pages less shmem): the
kernel reclaims that cache before it kills anyone, so counting it would
make the limit looser than the service's memory is.

The kernel's word on OOM kills is the cgroup's own count (``oom_kill`` in
memory.events, or memory.oom_control on cgroup v1): the container's journal
holds no kernel messages (``journalctl -k`` is empty in systemd-nspawn).
The unit's journal is read too: the superdaemon says "by the OOM killer"
of an exit it was, and systemd (on cgroup v2) logs each OOM kill.

Where the container's systemd owns a memory controller (cgroup v2),
``systemctl set-property --runtime app MemoryMax=`` sets the limit.  On a
cgroup v1 host systemd-nspawn mounts the v1 memory controller read-only in
the container, and ``MemoryMax=`` limits nothing there: the host then makes
app.service's memory cgroup as systemd would, and sets the same limit in it
(memory.limit_in_bytes, which MemoryMax= becomes on v1).  The unit's
processes are born in it: the container's PID 1 joins it for the unit's
start and leaves it after (a process that moves leaves its charges
behind).  Everything else is the same."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.app_service import Ab, generation, journal, old_generations_gone, say
from harness.machine import Machine
from harness.processes import sampled_peak

WORKERS = 4
# Each worker's own (MiB): a roll's surge (one worker, one arbiter) is then
# about 1.3 times the steady memory, some 80 MiB under the limit.
MEGABYTES = 150
LIMIT_FACTOR = 1.4
RELOADS = 10
MIB = 1 << 20
PAGE = 4096

DROP_IN = "/run/systemd/system/app.service.d/rolling-memory.conf"
# Where `systemctl set-property --runtime` writes its drop-ins.
CONTROL = "/run/systemd/system.control/app.service.d"
CONTROL_FILES = ("50-MemoryMax.conf", "50-MemorySwapMax.conf")

OOM_REASON = "by the OOM killer: the service is out of memory (MemoryMax=?)"
ROLLED = "rolling it in, 1 at a time (--max-surge)"


def drop_in(options: str) -> str:
    """app.service running gunicorn as docs/python.md says, with the
    superdaemon's ``options``."""
    return (
        "[Service]\n"
        "ExecStart=\n"
        f"ExecStart=/usr/bin/server-starter --require-notify {options} --stop-timeout=80 "
        "-- /usr/bin/python3 -m gunicorn -c python:server_starter.gunicorn "
        f"--chdir /srv/apps -w {WORKERS} wsgi_app:app\n"
        f"Environment=WSGI_APP_MEGABYTES={MEGABYTES} WSGI_APP_IMPORT_SECONDS=0.2\n"
        # gunicorn's workers call setuid() on their own uid (docs/python.md).
        "SystemCallFilter=@setuid\n"
    )


def figures(text: str) -> dict[str, int]:
    """memory.stat, memory.events and the like: a name and a number a line."""
    return {key: int(value) for key, value in (line.split() for line in text.splitlines())}


class ServiceMemory:
    """app.service's memory cgroup: its charge, its OOM kills, its limit."""

    cgroup: Path

    def __init__(self, machine: Machine) -> None:
        self.machine = machine

    def start(self) -> None:
        """(Re)start the unit, its processes charged to the cgroup."""
        self.machine.run("systemctl", "restart", "app")

    def read(self, name: str) -> str:
        return (self.cgroup / name).read_text()

    def charged(self) -> int:
        """Bytes charged less the clean page cache (the kernel's to reclaim)."""
        raise NotImplementedError

    def oom_kills(self) -> int:
        raise NotImplementedError

    def limit(self, limit: int) -> int:
        """MemoryMax= (and no swap); return the limit the kernel holds."""
        self.machine.run(
            "systemctl", "set-property", "--runtime", "app", f"MemoryMax={limit}", "MemorySwapMax=0"
        )
        return limit

    def lift(self) -> None:
        """No limit: set-property's drop-ins gone, as before the test."""
        self.machine.run("rm", "-f", *(f"{CONTROL}/{name}" for name in CONTROL_FILES))
        self.machine.run("rmdir", "--ignore-fail-on-non-empty", CONTROL, check=False)

    def close(self) -> None:
        """After the unit's restart without the limit."""


class SystemdMemory(ServiceMemory):
    """cgroup v2: the unit's own cgroup, limited by systemd."""

    def __init__(self, machine: Machine, root: Path) -> None:
        super().__init__(machine)
        self.root = root  # the container's /sys/fs/cgroup, the host's way in
        self.cgroup = root

    def start(self) -> None:
        super().start()
        self.cgroup = self.root / self.machine.show("app", "ControlGroup").lstrip("/")

    def charged(self) -> int:
        stat = figures(self.read("memory.stat"))
        return int(self.read("memory.current")) - (stat["file"] - stat["shmem"])

    def oom_kills(self) -> int:
        return figures(self.read("memory.events")).get("oom_kill", 0)

    def limit(self, limit: int) -> int:
        super().limit(limit)
        return int(self.read("memory.max"))


class HostMemory(ServiceMemory):
    """cgroup v1: app.service's memory cgroup, made and limited by the host
    where systemd would have (see the module's docstring)."""

    def __init__(self, machine: Machine, container: Path) -> None:
        super().__init__(machine)
        self.container = container  # the container's memory cgroup, on the host
        self.cgroup = container / "system.slice" / "app.service"
        self.cgroup.mkdir(parents=True, exist_ok=True)
        self._set(-1)  # one an interrupted run left keeps no limit

    def start(self) -> None:
        (self.cgroup / "cgroup.procs").write_text(str(self.machine.leader))
        try:
            super().start()
        finally:
            (self.container / "cgroup.procs").write_text(str(self.machine.leader))

    def charged(self) -> int:
        stat = figures(self.read("memory.stat"))
        cache = stat["total_cache"] - stat["total_shmem"]
        return int(self.read("memory.usage_in_bytes")) - cache

    def oom_kills(self) -> int:
        return figures(self.read("memory.oom_control")).get("oom_kill", 0)

    def _set(self, limit: int) -> None:
        """memsw (memory and swap, where accounted) is never below the
        limit: lifted first, set last."""
        names = ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
        for name in reversed(names) if limit < 0 else names:
            if (self.cgroup / name).exists():
                (self.cgroup / name).write_text(str(limit))

    def limit(self, limit: int) -> int:
        super().limit(limit)  # the unit says so, though systemd cannot apply it here
        self._set(limit)
        return int(self.read("memory.limit_in_bytes"))

    def lift(self) -> None:
        super().lift()
        self._set(-1)

    def close(self) -> None:
        for pid in self.read("cgroup.procs").split():  # none, unless PID 1 forked meanwhile
            with contextlib.suppress(OSError):
                (self.container / "cgroup.procs").write_text(pid)
        for path in (self.cgroup, self.cgroup.parent):
            with contextlib.suppress(OSError):
                path.rmdir()


def service_memory(machine: Machine) -> ServiceMemory:
    """The way app.service's memory is limited in this container."""
    root = Path(f"/proc/{machine.leader}/root/sys/fs/cgroup")
    controllers = root / "cgroup.controllers"
    if controllers.exists() and "memory" in controllers.read_text().split():
        return SystemdMemory(machine, root)
    host_v1 = Path("/sys/fs/cgroup/memory")
    own = re.search(r"^\d+:memory:(.*)$", Path(f"/proc/{machine.leader}/cgroup").read_text(), re.M)
    if (root / "memory").is_dir() and own and host_v1.is_dir():
        return HostMemory(machine, host_v1 / own.group(1).lstrip("/"))
    pytest.skip("no memory controller for app.service in the container, nor a v1 one on the host")


@contextlib.contextmanager
def gunicorn_app(machine: Machine, options: str) -> Iterator[ServiceMemory]:
    """app.service running gunicorn with the superdaemon's ``options``, its
    memory to be limited; then the shipped unit again, with no limit,
    serving.  In the test, not a fixture: conftest powers the container off
    before the fixtures of its last test are torn down."""
    memory = service_memory(machine)
    try:
        machine.run("mkdir", "-p", str(Path(DROP_IN).parent))
        machine.run("tee", DROP_IN, input=drop_in(options))
        machine.run("systemctl", "daemon-reload")
        memory.start()
        yield memory
    finally:
        memory.lift()
        machine.run("rm", "-f", DROP_IN)
        machine.run("systemctl", "daemon-reload")
        machine.run("systemctl", "reset-failed", "app")
        machine.run("systemctl", "restart", "app")
        memory.close()
    assert machine.show("app", "MemoryMax") == "infinity"


def cursor(machine: Machine) -> str:
    return machine.run("journalctl", "--show-cursor", "-n", "0", "-q").stdout.split()[-1]


def messages_since(machine: Machine, after: str) -> list[str]:
    return [e.get("MESSAGE", "") for e in journal(machine, f"--after-cursor={after}")]


def superdaemons(messages: list[str]) -> str:
    """The superdaemon's lines of ``messages`` (gunicorn's begin with its
    time in brackets), for a failure's message."""
    return "\n".join(m for m in messages if not m.startswith("["))


def steady_under(memory: ServiceMemory, ab: Ab) -> int:
    """The service's steady memory while it serves: the most of a few
    readings, its workers having answered requests."""
    ab.wait_for_traffic()
    ab.keep_going(2)
    readings = []
    for _ in range(5):
        readings.append(memory.charged())
        time.sleep(0.2)
    steady = max(readings)
    assert steady > WORKERS * MEGABYTES * MIB, f"{steady} bytes: the workers are not in it"
    return steady


def limit_at(memory: ServiceMemory, steady: int) -> int:
    wanted = int(steady * LIMIT_FACTOR) // PAGE * PAGE
    held = memory.limit(wanted)
    assert held == wanted, (held, wanted)
    return wanted


def test_rolling_reloads_stay_within_memory_max(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    """MemoryMax= at 1.4x the steady memory: 10 reloads with --max-surge=1
    under ab -c 200 all succeed, each rolled, no request failed, no OOM kill."""
    codes, durations = [], []
    with gunicorn_app(machine, "--ready-timeout=60 --max-surge=1") as memory:
        first = generation(machine)
        with Ab(concurrency=200) as ab:
            steady = steady_under(memory, ab)
            limit = limit_at(memory, steady)
            kills, since = memory.oom_kills(), cursor(machine)
            with sampled_peak(memory.charged) as sampled:
                for _ in range(RELOADS):
                    started = time.monotonic()
                    codes.append(machine.run("systemctl", "reload", "app", check=False).returncode)
                    durations.append(time.monotonic() - started)
                old_generations_gone(machine)
        killed = memory.oom_kills() - kills
        last = generation(machine)
        messages = messages_since(machine, since)
    say(
        capsys,
        machine,
        f"gunicorn -w {WORKERS} of {MEGABYTES} MiB each: steady {steady / MIB:.0f} MiB, "
        f"MemoryMax={limit / MIB:.0f} MiB ({LIMIT_FACTOR}x); {RELOADS} reloads with "
        f"--max-surge=1 under ab -c 200: exit codes {codes}, peak {sampled.peak / MIB:.0f} "
        f"MiB (sampled), {killed} OOM kills; {ab.complete} requests, {ab.failed} failed, "
        f"{ab.non_2xx} non-2xx; reload took {min(durations):.1f}-{max(durations):.1f}s",
    )
    assert codes == [0] * RELOADS, superdaemons(messages)
    assert (ab.failed, ab.non_2xx) == (0, 0), ab.output
    assert ab.complete > 1000, ab.output
    assert killed == 0
    assert [m for m in messages if "OOM killer" in m] == []
    assert sum(ROLLED in m for m in messages) == RELOADS, superdaemons(messages)
    assert last == first + RELOADS


def test_the_whole_overlap_fails_the_reload_with_the_oom_reason(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same limit without --max-surge: the reload fails with the OOM
    reason (at the first of its workers the OOM killer takes, not at
    --ready-timeout: the answer would say that timeout otherwise), the
    serving generation serves on, no request fails: the starting
    generation's booted workers wait to serve until it is ready, so the
    victims hold no request.  (A --ready-timeout shorter than the shipped
    one bounds the test's time should that break.)"""
    with gunicorn_app(machine, "--ready-timeout=20") as memory:
        before = generation(machine)
        with Ab(concurrency=200) as ab:
            steady = steady_under(memory, ab)
            limit = limit_at(memory, steady)
            kills, since = memory.oom_kills(), cursor(machine)
            started = time.monotonic()
            failed = machine.run("systemctl", "reload", "app", check=False)
            took = time.monotonic() - started
            serving = generation(machine)
            ab.keep_going(1)
        killed = memory.oom_kills() - kills
        messages = messages_since(machine, since)
    # The --restart of ExecReload= answers on its stderr, in the journal
    # (systemctl itself says only that the job failed).
    answers = [m for m in messages if m.startswith("start_server: generation")]
    say(
        capsys,
        machine,
        f"the whole overlap under MemoryMax={limit / MIB:.0f} MiB (1.4x steady "
        f"{steady / MIB:.0f} MiB): systemctl reload exit {failed.returncode} after "
        f"{took:.1f}s, {killed} OOM kills, generation {serving} serving; {ab.complete} "
        f"requests, {ab.failed} failed, {ab.non_2xx} non-2xx; answer {answers}",
    )
    assert failed.returncode != 0, answers
    assert serving == before
    assert killed > 0
    assert len(answers) == 1, answers
    assert "the old generation keeps serving" in answers[0]
    assert any(OOM_REASON in m for m in messages), superdaemons(messages)
    assert OOM_REASON in answers[0], superdaemons(messages)
    assert (ab.failed, ab.non_2xx) == (0, 0), ab.output
    assert ab.complete > 1000, ab.output
