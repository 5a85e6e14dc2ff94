"""A fleet of hosts for the Ansible role: booted containers of one cached
root file system, each with its own loopback address (127.0.0.2, .3, ...)
and an SSH server on it that Ansible reaches with a key made for the run,
as it reaches physical hosts.  ``ansible-playbook`` runs on the host, from
the venv (ansible-core from PyPI), with the project's role.

The containers share the host's network: each host's app listens on its
own address, as each physical host would on its own IP.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.machine import Machine, Suite
from harness.processes import ROOT

SSH_PORT = 2222  # not 22: the host may run its own sshd on every address
APP_PORT = 8080
PLAYBOOK = ROOT / "ansible" / "deploy.yml"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
GROUP = "server_starter"  # deploy.yml's default hosts


@dataclass
class Host:
    name: str  # in the inventory
    address: str
    machine: Machine

    @property
    def backend(self) -> str:
        return f"{self.address}:{APP_PORT}"


@dataclass
class Run:
    """One ansible-playbook run: its exit status, its output, the PLAY RECAP
    per host, and when each batch of hosts (serial:) began."""

    returncode: int
    output: str
    recap: dict[str, dict[str, int]]
    batch_starts: list[float] = field(default_factory=list)
    ended: float = 0.0

    def changed(self) -> int:
        return sum(counts["changed"] for counts in self.recap.values())

    def seconds_per_batch(self) -> list[float]:
        ends = [*self.batch_starts[1:], self.ended]
        return [round(end - start, 1) for start, end in zip(self.batch_starts, ends, strict=True)]


RECAP = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", re.M)


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    recap = output.rpartition("PLAY RECAP")[2]
    return {
        host: {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", counts)}
        for host, counts in RECAP.findall(recap)
    }


class Fleet:
    def __init__(self, hosts: Sequence[Host], key: Path, workdir: Path) -> None:
        self.hosts = list(hosts)
        self.key = key
        self.workdir = workdir
        self.inventory = workdir / "inventory.yml"
        # JSON is YAML: the inventory Ansible's yaml plugin reads.
        inventory = {
            GROUP: {
                "hosts": {
                    host.name: {
                        "ansible_host": host.address,
                        "ansible_port": SSH_PORT,
                        "server_starter_listen": [host.backend],
                    }
                    for host in self.hosts
                },
                "vars": {"ansible_user": "root", "ansible_python_interpreter": "/usr/bin/python3"},
            }
        }
        self.inventory.write_text(json.dumps(inventory, indent=2))

    def playbook(self, variables: dict[str, Any], *options: str, timeout: float = 600) -> Run:
        """deploy.yml over the fleet with ``variables`` (extra vars)."""
        extra = self.workdir / "extra-vars.json"
        extra.write_text(json.dumps(variables))
        command = [str(ANSIBLE_PLAYBOOK), "-i", str(self.inventory), "-e", f"@{extra}"]
        environment = {
            **os.environ,
            "ANSIBLE_ROLES_PATH": str(ROOT / "ansible" / "roles"),
            "ANSIBLE_PRIVATE_KEY_FILE": str(self.key),
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_SSH_ARGS": "-o UserKnownHostsFile=/dev/null -o ControlMaster=auto "
            "-o ControlPersist=60s",
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.workdir / "cp"),
            "ANSIBLE_HOME": str(self.workdir / "ansible-home"),
            "ANSIBLE_LOCAL_TEMP": str(self.workdir / "ansible-tmp"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_PIPELINING": "True",
            "PYTHONUNBUFFERED": "1",
        }
        batch_starts: list[float] = []
        lines: list[str] = []
        proc = subprocess.Popen(
            [*command, *options, str(PLAYBOOK)],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        timed_out = threading.Event()

        def overrun() -> None:
            timed_out.set()
            proc.kill()  # which ends the read loop below

        timer = threading.Timer(timeout, overrun)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:  # each serial: batch opens with its PLAY line
                lines.append(line)
                if line.startswith("PLAY [") and not line.startswith("PLAY RECAP"):
                    batch_starts.append(time.monotonic())
            returncode = proc.wait(timeout=30)
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        if timed_out.is_set():
            raise AssertionError(
                f"ansible-playbook ran over {timeout} s:\n{''.join(lines)[-3000:]}"
            )
        output = "".join(lines)
        return Run(returncode, output, parse_recap(output), batch_starts, time.monotonic())


def _serve_ssh(machine: Machine, address: str, public_key: str) -> None:
    machine.run("install", "-d", "-m", "0700", "/root/.ssh")
    machine.run("tee", "/root/.ssh/authorized_keys", input=public_key)
    config = f"ListenAddress {address}:{SSH_PORT}\nPasswordAuthentication no\n"
    machine.run("tee", "/etc/ssh/sshd_config.d/fleet.conf", input=config)
    machine.run("systemctl", "start", "ssh.service")  # ready once it listens (Type=notify)


@contextlib.contextmanager
def fleet(
    suite: Suite, size: int, binds: Sequence[tuple[Path, str]], workdir: Path
) -> Iterator[Fleet]:
    """``size`` booted hosts named web1, web2, ..., reachable over SSH;
    every one powered off at the end."""
    key = workdir / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleet", "-f", str(key)],
        check=True,
        timeout=30,
    )
    public_key = key.with_suffix(".pub").read_text()
    hosts: list[Host] = []
    try:
        for number in range(1, size + 1):
            name, address = f"web{number}", f"127.0.0.{number + 1}"
            machine = Machine(suite, binds, workdir / f"{name}-console.log")
            hosts.append(Host(name, address, machine))
            _serve_ssh(machine, address, public_key)
        yield Fleet(hosts, key, workdir)
    finally:
        for host in hosts:
            host.machine.poweroff()
