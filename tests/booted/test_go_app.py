"""docs/go.md's Go program under the shipped units, as the page says to run
it: built static on the host by its commands, installed as
/usr/local/bin/myapp, served by app.socket and app.service renamed, with
the page's ExecStart= line; reloaded, then stopped."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from harness.app_service import install_app, say, unit_state
from harness.apps import readme_blocks
from harness.go_recipe import GO, build_go_recipe
from harness.http_clients import http_get
from harness.machine import Machine
from harness.processes import free_port

pytestmark = pytest.mark.skipif(GO is None, reason="Go missing (Debian's golang-go: make deps)")

UNIT = "goapp"
BINARY = "/usr/local/bin/myapp"  # where the page's ExecStart= line runs it


@pytest.fixture(scope="module")
def go_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once for every release: CGO_ENABLED=0 makes it static."""
    return build_go_recipe(tmp_path_factory.mktemp("go-recipe"))


def serving_generation(machine: Machine, timeout: float = 30) -> tuple[int, int]:
    """The serving generation and its worker's pid, once none drains.
    systemd offers no wait on STATUS=, so poll."""
    deadline = time.monotonic() + timeout
    while True:
        status = machine.show(UNIT, "StatusText")
        match = re.match(r"generation (\d+) \(pid (\d+)\)", status)
        if match and "draining" not in status:
            return int(match.group(1)), int(match.group(2))
        assert time.monotonic() < deadline, status
        time.sleep(0.1)


def open_files_soft_limit(machine: Machine, pid: int) -> int:
    limits = machine.run("cat", f"/proc/{pid}/limits").stdout
    match = re.search(r"^Max open files\s+(\d+)", limits, re.M)
    assert match, limits
    return int(match.group(1))


def test_the_go_recipe_under_the_shipped_units(
    machine: Machine, go_binary: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    installed = Path(f"/proc/{machine.leader}/root{BINARY}")  # the host's way in
    shutil.copyfile(go_binary, installed)
    installed.chmod(0o755)
    install_app(machine, UNIT, [f"127.0.0.1:{port}"], unit_lines=readme_blocks()["go-unit-lines"])
    try:
        assert BINARY in machine.show(UNIT, "ExecStart")
        # The start job ends when the superdaemon has heard the worker's
        # READY=1 (--require-notify), and tells systemd READY=1 in turn.
        machine.run("systemctl", "start", f"{UNIT}.socket", f"{UNIT}.service")
        assert http_get(port, timeout=30)[2] == "Hello from generation 1\n"
        first_pid = serving_generation(machine)[1]

        machine.run("systemctl", "reload", UNIT)  # exits non-zero if the reload failed
        number, worker = serving_generation(machine)
        assert number == 2
        assert http_get(port, timeout=30)[2] == "Hello from generation 2\n"
        exits = machine.run(
            "journalctl", "-u", UNIT, "--no-pager", "-o", "cat", "SERVER_STARTER_EVENT=exit"
        ).stdout
        assert f"old worker {first_pid} died, status:0" in exits, exits
        # Under SystemCallFilter=~@resources, Go's start-up raise of its
        # open-files limit is refused (and ignored): docs/go.md says so.
        worker_limit = open_files_soft_limit(machine, worker)
        main_pid = int(machine.show(UNIT, "MainPID"))
        assert worker_limit == open_files_soft_limit(machine, main_pid)

        machine.run("systemctl", "stop", f"{UNIT}.service", f"{UNIT}.socket")
        assert unit_state(machine, UNIT) == ("inactive", "dead")
        assert machine.show(UNIT, "Result") == "success"
        exits = machine.run(
            "journalctl", "-u", UNIT, "--no-pager", "-o", "cat", "SERVER_STARTER_EVENT=exit"
        ).stdout
        assert f"worker {worker} died, status:0" in exits, exits
    finally:
        machine.run("systemctl", "stop", f"{UNIT}.service", f"{UNIT}.socket", check=False)
        for kind in ("socket", "service"):
            machine.run("rm", "-f", f"/etc/systemd/system/{UNIT}.{kind}")
        machine.run("rm", "-f", BINARY)
        machine.run("systemctl", "daemon-reload")
    say(
        capsys,
        machine,
        f"Go recipe under {UNIT}.service: generation 1 to 2 by systemctl reload, "
        f"both exited 0; open files soft limit {worker_limit}",
    )
