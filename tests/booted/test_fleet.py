"""A fleet: three booted Debian 13 hosts behind HAProxy (Debian's, on the
host, with health checks and keep-alive connections to each host), deployed
to with the project's Ansible role from ansible-core, over SSH, one host at
a time, under wrk's HTTP/1.1 load of POSTs and GETs through HAProxy.

The tests run in file order against one fleet: the first deploy, a good
release rolled over every host, a broken one stopped at the first, check
mode, the superdaemon's in-place upgrade, template instances."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import proxies
from harness.apps import readme_blocks
from harness.debs import UPGRADE, VERSION, deb
from harness.fleet import ANSIBLE_PLAYBOOK, Fleet, Host, Run, fleet
from harness.http_clients import http_get
from harness.load import aborted_on_close
from harness.machine import SUITES
from harness.reporting import report

# The marks of every booted test are conftest.py's; these are this file's own.
pytestmark = [
    pytest.mark.load,
    pytest.mark.skipif(not ANSIBLE_PLAYBOOK.exists(), reason="ansible-core missing (make deps)"),
    pytest.mark.skipif(bool(proxies.available()), reason="haproxy or wrk missing (make deps)"),
]

SUITE = SUITES["trixie"]  # the current stable release
HOSTS = 3
CONNECTIONS = 300  # wrk's, to HAProxy, which spreads them over the hosts
# /slow answers after 100 ms: every connection has a request in flight most
# of the time, so every drain finishes some, and the load leaves the CPU to
# the deploy (a load as fast as wrk can go makes each host take three times
# as long, and proves no more).  One wrk thread is plenty for that.
LOAD_PATH = "/slow"
WRK_THREADS = 1
ALL_AT_ONCE = {"server_starter_serial": HOSTS}  # for runs that prove no rollout
APP_PORT = 8080
# The README's HAProxy backend for a fleet, its health checks included,
# without its example servers.
BALANCING = "".join(
    f"    {line.strip()}\n"
    for line in readme_blocks()["fleet-haproxy"].splitlines()
    if line.strip() and not line.lstrip().startswith(("backend ", "server "))
)


@pytest.fixture(scope="module")
def hosts(debs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with fleet(SUITE, HOSTS, [], tmp_path_factory.mktemp("fleet")) as booted:
        yield booted


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Releases of an app as an operator ships them: a directory of files
    whose ``run`` the superdaemon starts.  Each good one greets with its
    name; "broken" exits at start, as an app whose database is gone."""
    out = tmp_path_factory.mktemp("releases")
    for name in ("r1", "r2", "r3"):
        run = out / name / "run"
        run.parent.mkdir()
        run.write_text(
            f"#!/bin/sh\nEXAMPLE_APP_MESSAGE={name} exec /usr/bin/server-starter-example\n"
        )
        run.chmod(0o755)
    broken = out / "broken" / "run"
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\necho 'cannot open the database' >&2\nexit 1\n")
    broken.chmod(0o755)
    return out


def release(debs: Path, releases: Path, name: str, version: str = VERSION) -> dict[str, str]:
    return {
        "server_starter_deb": str(deb(debs, "server-starter", version)),
        "server_starter_command": "./run",
        "server_starter_release": name,
        "server_starter_release_src": str(releases / name),
    }


def greeting(host: Host, port: int = APP_PORT) -> tuple[str, int]:
    """What the host's app says, and the generation that said it."""
    status, headers, body = http_get(port, host=host.address, timeout=30)
    assert status == 200, (host.name, status, body)
    return body.split(" from ")[0], int(headers["x-server-starter-generation"])


def main_pid(host: Host, unit: str = "app") -> str:
    return host.machine.show(unit, "MainPID")


def current(host: Host) -> str:
    return host.machine.run("readlink", "/srv/app/current").stdout.strip()


def assert_succeeded(run: Run) -> None:
    assert run.returncode == 0, run.output[-5000:]
    assert all(counts["failed"] == 0 for counts in run.recap.values()), run.recap


class Rollout:
    """A playbook run under load through HAProxy, counting every failure by
    kind: wrk's socket errors and non-2xx replies, what HAProxy logged (a
    5xx, a retry that hid an error, a host failing its health check), and
    the kernel's resets (TcpExtTCPAbortOnClose, counted while wrk runs)."""

    def __init__(self, hosts: Fleet, variables: dict[str, str], *options: str) -> None:
        backends = {host.name: host.backend for host in hosts.hosts}
        with proxies.haproxy_balancing(backends, BALANCING, hosts.workdir) as haproxy:
            url = f"http://127.0.0.1:{haproxy.port}{LOAD_PATH}"
            with proxies.wrk_running(url, CONNECTIONS, hosts.workdir, WRK_THREADS) as self.load:
                self._wait_for_traffic(haproxy.port)
                resets = aborted_on_close()
                self.run = hosts.playbook(variables, *options)
                self.resets = aborted_on_close() - resets
            self.proxy_errors = haproxy.errors()
        shutil.rmtree(hosts.workdir / "haproxy-balancing")

    @staticmethod
    def _wait_for_traffic(port: int) -> None:
        status, _, body = http_get(port, timeout=30)
        assert status == 200, body

    @property
    def failed(self) -> int:
        kinds = ("connect", "read", "write", "timeout", "non_2xx")
        return sum(int(self.load[kind]) for kind in kinds) + len(self.proxy_errors)

    def assert_nothing_failed(self) -> None:
        assert self.load["requests"] > 0, self.load
        assert self.failed == 0, (self.load, self.proxy_errors[:20])
        assert self.resets == 0, f"{self.resets} connections reset"

    def figures(self) -> str:
        return (
            f"{self.load['requests']} requests through HAProxy (wrk -t {WRK_THREADS} "
            f"-c {CONNECTIONS} {LOAD_PATH}, POST and GET), {self.failed} failed, "
            f"{self.resets} resets; seconds per host {self.run.seconds_per_batch()}"
        )


def test_the_first_deploy_installs_and_starts_everything(
    hosts: Fleet, debs: Path, releases: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = hosts.playbook({**release(debs, releases, "r1"), **ALL_AT_ONCE})
    assert_succeeded(first)
    assert len(first.batch_starts) == 1, "server_starter_serial: 3, one batch"
    for host in hosts.hosts:
        assert greeting(host) == ("r1", 1)
        assert host.machine.show("app.socket", "UnitFileState") == "enabled"
        assert current(host) == "releases/r1"
    report(
        capsys,
        f"first deploy, all {HOSTS} hosts at once: {first.changed()} changes in "
        f"{first.seconds_per_batch()[0]} s",
    )


def test_a_good_release_rolls_over_every_host_failing_no_request(
    hosts: Fleet, debs: Path, releases: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {host.name: (greeting(host)[1], main_pid(host)) for host in hosts.hosts}
    rollout = Rollout(hosts, release(debs, releases, "r2"))
    assert_succeeded(rollout.run)
    assert len(rollout.run.batch_starts) == HOSTS, "serial: 1 deploys one host at a time"
    rollout.assert_nothing_failed()
    for host in hosts.hosts:
        generation, pid = before[host.name]
        assert greeting(host) == ("r2", generation + 1), host.name
        assert main_pid(host) == pid, "a reload, not a restart"
    again = hosts.playbook({**release(debs, releases, "r2"), **ALL_AT_ONCE})
    assert_succeeded(again)
    assert again.changed() == 0, again.output[-5000:]
    assert set(again.recap) == {host.name for host in hosts.hosts}
    report(
        capsys,
        f"good release over {HOSTS} hosts, each reloaded: {rollout.figures()}; "
        f"run again: {again.changed()} changes",
    )


def test_a_broken_release_stops_at_the_first_host_which_keeps_serving(
    hosts: Fleet, debs: Path, releases: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, *others = hosts.hosts
    before = {host.name: (greeting(host), main_pid(host)) for host in hosts.hosts}
    rollout = Rollout(hosts, release(debs, releases, "broken"))
    assert rollout.run.returncode != 0
    assert set(rollout.run.recap) == {first.name}, "the rollout goes no further"
    assert rollout.run.recap[first.name]["failed"] == 1
    rollout.assert_nothing_failed()
    message = re.search(r"^fatal: \[web1\]: FAILED! => .*$", rollout.run.output, re.M)
    assert message is not None, rollout.run.output[-5000:]
    # As the README shows it, up to the journal's lines, which quote the app.
    shown = readme_blocks()["fleet-failure"].partition(" The journal says: ")[0]
    assert message.group(0).startswith(shown), (message.group(0), shown)
    assert "cannot open the database" in message.group(0), "the reason, from the journal"
    # The first host: the old release, the same superdaemon, and settled (a
    # new generation of the old release, not retrying the broken one).
    assert greeting(first)[0] == "r2"
    assert current(first) == "releases/r2"
    assert main_pid(first) == before[first.name][1]
    assert "retrying" not in first.machine.show("app", "StatusText")
    for host in others:  # untouched
        assert (greeting(host), main_pid(host)) == before[host.name]
        assert current(host) == "releases/r2"
        assert host.machine.run("test", "-e", "/srv/app/releases/broken", check=False).returncode
    # The old release deployed again finds every host as it left it.
    again = hosts.playbook({**release(debs, releases, "r2"), **ALL_AT_ONCE})
    assert_succeeded(again)
    assert again.changed() == 0, again.output[-5000:]
    report(
        capsys,
        f"broken release: stopped after {len(rollout.run.recap)} of {HOSTS} hosts, which "
        f"serves the old release; {rollout.figures()}; the old release run again: "
        f"{again.changed()} changes",
    )


def test_check_mode_reports_and_changes_nothing(hosts: Fleet, debs: Path, releases: Path) -> None:
    before = {host.name: greeting(host) for host in hosts.hosts}
    checked = hosts.playbook({**release(debs, releases, "r3"), **ALL_AT_ONCE}, "--check")
    assert_succeeded(checked)
    assert all(counts["changed"] > 0 for counts in checked.recap.values()), checked.recap
    for host in hosts.hosts:
        assert greeting(host) == before[host.name]
        assert current(host) == "releases/r2"
        assert host.machine.run("test", "-e", "/srv/app/releases/r3", check=False).returncode


def test_the_superdaemon_upgrade_rolls_over_every_host_in_place(
    hosts: Fleet, debs: Path, releases: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {host.name: (greeting(host), main_pid(host)) for host in hosts.hosts}
    rollout = Rollout(hosts, release(debs, releases, "r2", UPGRADE))
    assert_succeeded(rollout.run)
    rollout.assert_nothing_failed()
    for host in hosts.hosts:
        assert (greeting(host), main_pid(host)) == before[host.name], "same process, same workers"
        installed = host.machine.run("dpkg-query", "-W", "-f=${Version}", "server-starter")
        assert installed.stdout == UPGRADE
        event = host.machine.run(
            "journalctl", "-u", "app", "-o", "cat", "SERVER_STARTER_NEW_VERSION=" + UPGRADE
        ).stdout
        assert f"upgraded in place from {VERSION} to {UPGRADE}" in event, event
    report(
        capsys,
        f"server-starter {VERSION} to {UPGRADE} over {HOSTS} hosts, same MainPID on each: "
        f"{rollout.figures()}",
    )


def test_template_instances_are_deployed_and_reloaded_alone(
    hosts: Fleet, debs: Path, releases: Path
) -> None:
    """app@.socket and app@.service, two instances on the first host, each
    with its port and environment; a change to one reloads that one only."""
    host = hosts.hosts[0]
    beside = (greeting(host), main_pid(host))

    def deploy(two: str) -> Run:
        variables = {
            **release(debs, releases, "r1", UPGRADE),
            "server_starter_app": "api",
            "server_starter_command": "/usr/bin/server-starter-example",
            "server_starter_env": {"EXAMPLE_APP_PROCESSES": "1"},
            "server_starter_instances": [
                {"name": "one", "listen": [f"{host.address}:8081"]},
                {
                    "name": "two",
                    "listen": [f"{host.address}:8082"],
                    "env": {"EXAMPLE_APP_MESSAGE": two},
                },
            ],
        }
        return hosts.playbook(variables, "--limit", host.name)

    assert_succeeded(deploy("Hi"))
    assert (greeting(host, 8081), greeting(host, 8082)) == (("Hello", 1), ("Hi", 1))
    assert host.machine.run("cat", "/etc/api/two/env/EXAMPLE_APP_MESSAGE").stdout == "Hi\n"
    changed = deploy("Howdy")
    assert_succeeded(changed)
    assert changed.changed() == 2, "the variable, and api@two's reload"
    assert (greeting(host, 8081), greeting(host, 8082)) == (("Hello", 1), ("Howdy", 2))
    assert deploy("Howdy").changed() == 0
    assert (greeting(host), main_pid(host)) == beside, "the app beside them untouched"


def test_an_app_from_a_package_restarts_on_a_new_unit_and_reloads_on_an_upgrade(
    hosts: Fleet, debs: Path
) -> None:
    """The second host moves from releases of files to the app's own
    package: its unit's ExecStart= changes (no --dir), which only a new
    superdaemon reads, so the role restarts it; the package's upgrade is
    then a reload (same superdaemon, a new generation)."""
    host = hosts.hosts[1]

    def deploy(version: str) -> Run:
        variables = {
            "server_starter_deb": str(deb(debs, "server-starter", UPGRADE)),
            "server_starter_command": "/usr/bin/server-starter-example",
            "server_starter_app_debs": [str(deb(debs, "server-starter-example", version))],
            "server_starter_env": {"EXAMPLE_APP_MESSAGE": "packaged"},
        }
        run = hosts.playbook(variables, "--limit", host.name)
        assert_succeeded(run)
        return run

    pid = main_pid(host)
    deploy(VERSION)
    assert main_pid(host) != pid, "restarted for its new ExecStart="
    assert "--dir" not in host.machine.show("app", "ExecStart")
    serving = greeting(host)
    assert serving[0] == "packaged"
    pid = main_pid(host)
    deploy(UPGRADE)
    assert main_pid(host) == pid
    message, generation = greeting(host)
    assert message == "packaged" and generation > serving[1]
    version = host.machine.run("dpkg-query", "-W", "-f=${Version}", "server-starter-example")
    assert version.stdout == UPGRADE
    assert deploy(UPGRADE).changed() == 0


def test_a_missing_variable_is_named_before_anything_changes(hosts: Fleet, debs: Path) -> None:
    run = hosts.playbook({"server_starter_deb": str(deb(debs, "server-starter", VERSION))})
    assert run.returncode != 0
    assert "server_starter_command" in run.output, run.output[-3000:]
    assert all(counts["changed"] == 0 for counts in run.recap.values()), run.recap
