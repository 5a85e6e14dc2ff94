"""Two apps from the shipped app@.socket/app@.service templates, set up by
the README's commands: one reloaded under load, the other untouched."""

from __future__ import annotations

import json

import pytest

from harness.app_service import (
    Ab,
    say,
)
from harness.apps import readme_blocks
from harness.http_clients import http_get
from harness.machine import Machine

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
