"""A real systemd for end-to-end tests: a Debian root file system of each
supported release (bookworm: systemd 252, Python 3.11; trixie: systemd 257,
Python 3.13), built once with debootstrap and cached, keyed by its package
list, booted with systemd-nspawn on a throw-away overlay, driven with nsenter.

It shares the host's network namespace, so a load generator on the host
reaches the container's sockets on 127.0.0.1.  Every wait is bounded, and
the container is always powered off, or killed, at the end.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import itertools
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

MIRROR = os.environ.get("SERVER_STARTER_TEST_MIRROR", "http://deb.debian.org/debian")
# debootstrap installs what boots; apt, run in the new root, the rest (it
# orders the configuration of many packages where debootstrap may not).
BOOT = ("systemd", "systemd-sysv", "dbus")
# Every dependency of our .debs, so `apt install ./x.deb` needs no network,
# the servers the worker side adapts, and the release's own lintian.
PACKAGES = (
    "procps",
    "python3",
    "python3-systemd",
    "python3-gunicorn",
    "python3-uvloop",
    "python3-aiohttp",
    "python3-uvicorn",
    "libserver-starter-perl",
    "lintian",
    # A fleet of containers, deployed to with Ansible: its ssh server (not
    # started at boot: the containers share the host's ports), and the
    # python3-apt its apt module runs on.
    "openssh-server",
    "python3-apt",
    # Debian's node_exporter, whose textfile collector reads --metrics-file
    # (not started at boot either: each test gives it a port of its own).
    "prometheus-node-exporter",
)

# Installed, but started by the tests that need them only.
DISABLED = ("ssh.service", "prometheus-node-exporter.service")


@dataclass(frozen=True)
class Suite:
    name: str  # as debootstrap and apt call it
    release: str  # as people do
    packages: tuple[str, ...]


SUITES = {
    "bookworm": Suite("bookworm", "Debian 12", PACKAGES),
    "trixie": Suite("trixie", "Debian 13", PACKAGES),
}
UNITS = Path(__file__).resolve().parents[2] / "units"
CACHE = Path(os.environ.get("SERVER_STARTER_TEST_CACHE", "/var/cache/server-starter-tests"))
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_numbers = itertools.count(1)  # each container of this process its own name


class MachineError(Exception):
    pass


def rootfs(suite: Suite) -> Path:
    """The suite's cached root file system, built on first use (two to three
    minutes; two suites may build at once)."""
    key = "\n".join((suite.name, MIRROR, *BOOT, *suite.packages))
    root = CACHE / f"{suite.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if (root / "usr" / "lib" / "systemd" / "systemd").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    building = CACHE / f".building-{suite.name}-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    debootstrap = ["debootstrap", "--variant=minbase", f"--include={','.join(BOOT)}"]
    apt = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *suite.packages]
    try:
        _build_step([*debootstrap, suite.name, str(building), MIRROR], building)
        # The new root's own apt, in a container (its /proc, /dev), not booted.
        nspawn = ["systemd-nspawn", "-q", "-D", str(building), "--register=no", "--keep-unit"]
        _build_step([*nspawn, "-E", "DEBIAN_FRONTEND=noninteractive", *apt], building)
        _build_step([*nspawn, "apt-get", "clean"], building)
        _build_step([*nspawn, "systemctl", "disable", *DISABLED], building)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    # apt in the container installs local .debs only: no lists, no network.
    (building / "etc" / "apt" / "sources.list").write_text("")
    building.rename(root)
    return root


def prepare(suites: Iterable[Suite]) -> None:
    """Build every missing root file system at once (each is mostly waiting
    on the network and dpkg: two build in about the time of one)."""
    with concurrent.futures.ThreadPoolExecutor() as pool:
        for built in [pool.submit(rootfs, suite) for suite in suites]:
            built.result()


def _build_step(command: list[str], building: Path) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0:
        log = building / "debootstrap" / "debootstrap.log"
        details = log.read_text()[-3000:] if log.exists() else ""
        raise MachineError(
            f"{' '.join(command[:3])}... failed:\n{result.stdout[-3000:]}\n"
            f"{result.stderr[-3000:]}\n{details}"
        )


def reference_service(unit: str, command: str) -> str:
    """The shipped app.service as an operator adapts it to another app: named
    ``unit`` (its socket ``unit.socket``), running ``command`` under the
    superdaemon."""
    text = (
        (UNITS / "app.service")
        .read_text()
        .replace("app.socket", f"{unit}.socket")
        .replace("RuntimeDirectory=app", f"RuntimeDirectory={unit}")
    )
    return re.sub(
        r"^ExecStart=.*$",
        f"ExecStart=/usr/bin/server-starter --require-notify --stop-timeout=80 -- {command}",
        text,
        flags=re.M,
    )


class Machine:
    """A booted container.  ``run`` executes a command inside it."""

    def __init__(self, suite: Suite, binds: Sequence[tuple[Path, str]], log: Path) -> None:
        self.suite = suite
        self.name = f"sst-{suite.name}-{os.getpid()}-{next(_numbers)}"
        self.log = log
        command = [
            "systemd-nspawn",
            "-D",
            str(rootfs(suite)),
            "--boot",
            "--register=no",
            "--keep-unit",
            "-M",
            self.name,
            "--volatile=overlay",
            "--console=passive",
        ]
        command += [f"--bind-ro={host}:{inside}" for host, inside in binds]
        with open(log, "w") as out:
            self.nspawn = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self.leader = self._find_leader(timeout=30)
            self.wait_running(timeout=90)
        except BaseException:
            self.kill()
            raise

    def _find_leader(self, timeout: float) -> int:
        # nspawn's child becomes the container's PID 1 once it execs systemd.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise MachineError(f"systemd-nspawn exited:\n{self.log.read_text()[-3000:]}")
            for pid in _children(self.nspawn.pid):
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        return pid
            time.sleep(0.05)
        raise MachineError("the container's systemd did not start")

    def wait_running(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            result = self.run(
                "systemctl",
                "is-system-running",
                "--wait",
                timeout=max(1.0, deadline - time.monotonic()),
                check=False,
            )
            if result.stdout.strip() in ("running", "degraded"):
                return
            # Right after exec, PID 1 has no bus to answer on yet ("Failed to
            # connect to bus" from systemctl 252, "Failed to connect to system
            # scope bus via local transport" from 257), or answers "offline"
            # before it has begun its start-up transaction.
            no_bus = re.search(r"Failed to connect to (system scope )?bus", result.stderr)
            starting = no_bus is not None or result.stdout.strip() in (
                "offline",
                "initializing",
                "starting",
            )
            if not starting or time.monotonic() > deadline:
                raise MachineError(f"container did not boot: {result.stdout} {result.stderr}")
            time.sleep(0.1)

    def run(
        self, *argv: str, timeout: float = 120, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        command = [
            "nsenter",
            "-t",
            str(self.leader),
            "-a",
            "env",
            "-i",
            f"PATH={PATH}",
            "LANG=C.UTF-8",
            *argv,
        ]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, input=input, check=False
        )
        if check and result.returncode != 0:
            raise MachineError(
                f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def sh(
        self, script: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-c", script, timeout=timeout, check=check)

    def show(self, unit: str, prop: str) -> str:
        return self.run("systemctl", "show", unit, "-p", prop, "--value").stdout.strip()

    def poweroff(self, timeout: float = 60) -> None:
        if self.nspawn.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired, MachineError):
                self.run("systemctl", "poweroff", "--no-block", timeout=20, check=False)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.nspawn.wait(timeout)
        self.kill()

    def kill(self) -> None:
        if self.nspawn.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.nspawn.pid, 9)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.nspawn.wait(30)


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                    found.append(int(entry.name))
    return found


@contextlib.contextmanager
def booted(suite: Suite, binds: Sequence[tuple[Path, str]], log: Path) -> Iterator[Machine]:
    machine = Machine(suite, binds, log)
    try:
        yield machine
    finally:
        machine.poweroff()
