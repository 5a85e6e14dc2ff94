"""The packaged example app as app.service in a booted container
(harness.machine): apt on its .debs, systemctl and the journal asked about
the unit, ab on the host against its socket.  Shared by the booted tests'
subject files."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from typing import Any

from harness.http_clients import http_get
from harness.load import ab_figures
from harness.machine import Machine, reference_service
from harness.processes import ROOT
from harness.reporting import report

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


def say(capsys: Any, machine: Machine, figures: str) -> None:
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


def unit_state(machine: Machine, unit: str = "app") -> tuple[str, str]:
    states = machine.run("systemctl", "show", unit, "-p", "ActiveState,SubState", "--value")
    active, sub = states.stdout.split()
    return active, sub


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
