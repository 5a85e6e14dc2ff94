"""The packages on each release: lintian's verdict, apt's installation
(only the socket starts; the first request starts the app), the diversion
that keeps Perl's start_server beside ours, the units verified and hardened.

The first subject of the booted container (see conftest.py): it installs
what the others use."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.app_service import (
    PORT,
    apt_install,
    say,
)
from harness.debs import VERSION
from harness.http_clients import http_get
from harness.machine import Machine


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
