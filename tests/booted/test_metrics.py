"""``--metrics-file`` read by Debian's prometheus-node-exporter, on each
supported release (12: node_exporter 1.5, 13: 1.9): the .debs installed
with apt, metrics turned on by the drop-in the package ships
(examples/app.service.d/metrics.conf) as its own lines say, a reload, then
node_exporter's endpoint scraped from the host as Prometheus would.

One container per release, of its own (the packaged app's socket listens
on 8080, as in test_systemd.py); node_exporter listens on a free port of
the host's, whose network the container shares."""

from __future__ import annotations

import os
import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.debs import VERSION, deb
from harness.http_clients import http_get
from harness.machine import SUITES, Machine, booted
from harness.processes import free_port
from harness.reporting import report

PORT = 8080  # app.socket's ListenStream=
EXAMPLE = "/usr/share/doc/server-starter/examples/app.service.d/metrics.conf"
METRICS = "/run/app/metrics.prom"
LINK = "/var/lib/prometheus/node-exporter/app.prom"  # in the collector's directory


@pytest.fixture(scope="module", params=list(SUITES))
def machine(
    request: pytest.FixtureRequest, debs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Machine]:
    """A container per release, with this version's .debs installed (which
    starts app.socket only: the app starts at its first connection)."""
    log = tmp_path_factory.mktemp(f"metrics-{request.param}") / "console.log"
    with booted(SUITES[request.param], [(debs, "/debs")], log) as booted_machine:
        packages = [
            f"/debs/{deb(debs, package, VERSION).name}"
            for package in ("server-starter", "server-starter-example")
        ]
        booted_machine.run(
            "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", *packages
        )
        yield booted_machine


def start_node_exporter(machine: Machine) -> int:
    """Debian's prometheus-node-exporter, as installed but on a port of its
    own (its ARGS); returns the port once it answers."""
    port = free_port()
    machine.run(
        "tee",
        "/etc/default/prometheus-node-exporter",
        input=f'ARGS="--web.listen-address=127.0.0.1:{port}"\n',
    )
    machine.run("systemctl", "start", "prometheus-node-exporter")
    # Type=simple: started is not yet listening.  Bounded, on connections refused.
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            return port
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, "node_exporter did not listen"
            time.sleep(0.1)


# The series' label from --metrics-label=unit=%n (node_exporter sorts labels by name).
UNIT = 'unit="app.service"'


def scrape(port: int) -> dict[str, float]:
    """node_exporter's samples, as Prometheus would scrape them, by series
    (name and labels, as node_exporter prints them)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text: str = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            samples[series] = float(value)
    return samples


def ours(samples: dict[str, float]) -> dict[str, float]:
    return {series: v for series, v in samples.items() if series.startswith("server_starter_")}


def textfile_errors(machine: Machine) -> list[str]:
    """What node_exporter logged as errors of its textfile collector, and of
    gathering: series it dropped, repeated across files, which it does not
    count in node_textfile_scrape_error.  (In a container its diskstats
    collector logs one of its own: no /run/udev/data.)"""
    log = machine.run("journalctl", "-u", "prometheus-node-exporter", "-o", "cat", "--no-pager")
    return [
        line
        for line in log.stdout.splitlines()
        if re.search("level=error", line, re.I) and re.search("textfile|gathering", line)
    ]


def test_node_exporter_serves_the_metrics_of_the_serving_generation(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    port = start_node_exporter(machine)
    assert ours(scrape(port)) == {}, "metrics are off by default"

    # The drop-in's own lines, run as written where the package put it.
    lines = machine.run("cat", EXAMPLE).stdout
    commands = [line[4:] for line in lines.splitlines() if line.startswith("#   ")]
    assert "cp metrics.conf /etc/systemd/system/app.service.d/" in commands, commands
    machine.run("sh", "-ec", f"cd {os.path.dirname(EXAMPLE)}\n" + "\n".join(commands))
    verify = machine.run("systemd-analyze", "verify", "--man=no", "app.service", check=False)
    assert (verify.returncode, verify.stderr) == (0, ""), verify.stderr
    assert machine.run("readlink", LINK).stdout.strip() == METRICS
    # Readable by node_exporter's user whatever the service's UMask=0077.
    modes = machine.run("stat", "-c", "%a", os.path.dirname(METRICS), METRICS).stdout.split()
    assert modes == ["755", "644"], modes

    first = int(http_get(PORT, timeout=60)[1]["x-server-starter-generation"])
    machine.run("systemctl", "reload", "app")
    serving = int(http_get(PORT)[1]["x-server-starter-generation"])
    assert serving == first + 1
    # The file is rewritten after the event that answered the reload:
    # bounded, until node_exporter reads that generation serving.
    deadline = time.monotonic() + 30
    while (samples := scrape(port)).get(f"server_starter_serving_generation{{{UNIT}}}") != serving:
        assert time.monotonic() < deadline, ours(samples)
        time.sleep(0.1)
    assert samples[f'server_starter_reloads_total{{outcome="succeeded",{UNIT}}}'] == 1, ours(
        samples
    )
    assert samples[f'server_starter_reloads_total{{outcome="failed",{UNIT}}}'] == 0
    assert samples[f"server_starter_last_reload_successful{{{UNIT}}}"] == 1
    assert samples[f'server_starter_generations{{state="serving",{UNIT}}}'] == 1
    main_pid = machine.show("app", "MainPID")
    (info,) = [series for series in ours(samples) if series.startswith("server_starter_info{")]
    assert f'pid="{main_pid}"' in info, info
    assert samples["node_textfile_scrape_error"] == 0
    assert [s for s in samples if s.startswith("node_textfile_mtime_seconds{") and LINK in s]
    assert textfile_errors(machine) == []

    # Stopped, the link goes with the file: no metrics, and no error.
    machine.run("systemctl", "stop", "app")
    assert machine.run("test", "-L", LINK, check=False).returncode == 1
    stopped = scrape(port)
    assert (ours(stopped), stopped["node_textfile_scrape_error"]) == ({}, 0)
    assert textfile_errors(machine) == []
    version = machine.run("dpkg-query", "-W", "-f=${Version}", "prometheus-node-exporter").stdout
    report(
        capsys,
        f"{machine.suite.release}: prometheus-node-exporter {version} read {METRICS} through "
        f"{LINK}: generation {serving} serving after a reload, 1 succeeded, "
        "scrape error 0; stopped, no link and no error",
    )
