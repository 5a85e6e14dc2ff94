"""Removal, the last subject of the booted container (see conftest.py):
purged under a running app, nothing is left and start_server is Perl's
again."""

from __future__ import annotations

from harness.app_service import (
    PORT,
    apt_get,
)
from harness.http_clients import http_get
from harness.machine import Machine


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
