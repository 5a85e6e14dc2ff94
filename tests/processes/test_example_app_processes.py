"""The example app with ``EXAMPLE_APP_PROCESSES=N`` (N above 1): a parent
running N serving processes, which speaks the worker protocol of rolling
reloads (contract.py), replaces a process that dies without the others or
the superdaemon noticing, and gives up on a crash loop."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
from functools import partial
from pathlib import Path

import pytest

from harness.apps import EXAMPLE_APP
from harness.http_clients import generation_of, http_get
from harness.load import Load
from harness.notify_socket import FakeManager
from harness.processes import (
    START_SERVER,
    children,
    free_port,
    grandchildren,
    pid_alive,
    restart,
    running,
    sampled_peak,
    serving,
    worker_env,
)

PROCESSES = 4
STARTED = r"process (\d+) started"


def peak_from_log(log: str) -> int:
    """The most serving processes alive at once, from the parents' own
    lines: each logs a start right after its fork and an end right after
    reaping it, before it reports the count on which the superdaemon starts
    the next; so the order of the lines is the order of the events."""
    alive = peak = 0
    for line in log.splitlines():
        if re.match(rf"example app \(generation \d+\): {STARTED}", line):
            alive += 1
            peak = max(peak, alive)
        elif re.match(r"example app \(generation \d+\): process \d+ (stopped|died)", line):
            alive -= 1
    return peak


@pytest.mark.load
def test_a_reload_rolls_process_by_process_under_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--max-surge=1``, four processes, /slow under load (each process
    stopped has requests in flight): three reloads, each rolled in one
    process at a time, none failing a request."""
    port, pid_file = free_port(), tmp_path / "pid"
    argv = [
        START_SERVER,
        f"--port=127.0.0.1:{port}",
        f"--pid-file={pid_file}",
        "--require-notify",
        "--ready-timeout=20",
        "--max-surge=1",
        "--",
        *EXAMPLE_APP,
    ]
    reloads = 3
    with running(argv, env=worker_env(EXAMPLE_APP_PROCESSES=str(PROCESSES))) as daemon:
        daemon.wait_for(r"\(generation 1\) is ready \(READY=1\)")
        with (
            sampled_peak(partial(grandchildren, daemon.pid)) as counted,
            Load(port, threads=50, path="/slow") as load,
        ):
            for number in range(2, reloads + 2):
                result = restart(pid_file)
                assert result.returncode == 0, result.stderr + daemon.output()[-3000:]
                assert f"generation {number} is serving" in result.stderr
                daemon.wait_for(r"^old worker \d+ died", count=number - 1, timeout=30)
        assert generation_of(port) == reloads + 1
        log = daemon.output()
    assert load.failures == [], load.failures[:5]
    assert load.total() > 0
    assert log.count("rolling it in, 1 at a time (--max-surge)") == reloads
    for number in range(2, reloads + 2):
        assert re.search(
            rf"\(generation {number}\) is ready with 1 of {PROCESSES} workers \(READY=1\)", log
        )
        assert f"(generation {number}) is ready (all {PROCESSES} workers ready)" in log
        # The old generation gave its processes up oldest first, each drained.
        stopped = re.findall(rf"example app \(generation {number - 1}\): process (\d+) stop", log)
        started = re.findall(rf"example app \(generation {number - 1}\): {STARTED}", log)
        assert stopped == started, (stopped, started)
    steps = reloads * (PROCESSES - 1)
    assert len(re.findall(r"sending TTIN to worker \d+ \(generation \d+", log)) == steps
    assert len(re.findall(r"sending TTOU to worker \d+ \(generation \d+", log)) == steps
    assert len(re.findall(r"\): SIGTTIN: one more process", log)) == steps
    assert len(re.findall(r"\): SIGTTOU: one process fewer", log)) == steps
    assert not re.search(r"\): process \d+ died", log)
    assert peak_from_log(log) == PROCESSES + 1
    assert counted.peak <= PROCESSES + 1, counted.peak  # never the whole overlap's 8
    with capsys.disabled():
        print(
            f"\n    [measured] example app, {PROCESSES} processes, --max-surge=1: {reloads} "
            f"reloads, {load.total()} /slow requests, 0 failed; at most {counted.peak} "
            f"processes at once"
        )


def test_the_parent_speaks_the_worker_protocol(tmp_path: Path) -> None:
    """Run as a rolling reload's new generation would be (told to start
    with one process) with the test in the superdaemon's place: its reports,
    SIGTTIN, and SIGTTOU stopping the oldest, which finishes a request it
    has begun, and never the last."""
    manager = FakeManager(tmp_path / "notify")
    with socket.create_server(("127.0.0.1", 0)) as listening:
        port = listening.getsockname()[1]
        fd = listening.fileno()
        env = worker_env(
            SERVER_STARTER_PORT=f"127.0.0.1:{port}={fd}",
            SERVER_STARTER_GENERATION="7",
            SERVER_STARTER_START_WORKERS="1",
            NOTIFY_SOCKET=str(manager.path),
            EXAMPLE_APP_PROCESSES="3",
        )
        with running(EXAMPLE_APP, env=env, pass_fds=(fd,)) as app:
            ready = manager.next()
            assert ready["READY"] == "1"
            assert ready["X_SERVER_STARTER_WORKERS"] == "1/1/3"
            oldest = int(app.wait_for(r"\(generation 7\): process (\d+) started \(1 of 1\)")[1])
            # A kept-alive connection to the one process, which will be
            # the oldest: a request on it begun, its body not all sent.
            client = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            client.request("GET", "/")
            first = client.getresponse()
            first.read()
            assert first.getheader("x-worker-pid") == str(oldest)
            client.putrequest("POST", "/endpoint")
            client.putheader("Content-Length", "10")
            client.endheaders(b"12345")

            def counts() -> str:
                return manager.next()["X_SERVER_STARTER_WORKERS"]

            for target in (2, 3):
                app.signal(signal.SIGTTIN)
                assert counts() == f"{target - 1}/{target}/3"  # asked for
                assert counts() == f"{target}/{target}/3"  # booted
            assert len(children(app.pid)) == 3
            app.signal(signal.SIGTTOU)
            assert counts() == "3/2/3"  # stopping: counted until it exits
            app.wait_for(rf"stopping process {oldest}, the oldest")
            client.send(b"67890")  # the request it began is finished
            last = client.getresponse()
            assert last.read() == b"Hello from a HandleFunc #2!\n"
            assert last.getheader("x-worker-pid") == str(oldest)
            client.close()
            assert counts() == "2/2/3"
            app.wait_for(rf"process {oldest} stopped \(exit code 0\)")
            app.signal(signal.SIGTTOU)
            assert counts() == "2/1/3"
            assert counts() == "1/1/3"
            (last_one,) = children(app.pid)
            app.signal(signal.SIGTTOU)
            app.wait_for(r"SIGTTOU: one process left, which stays")
            assert children(app.pid) == [last_one]
            assert http_get(port, "/")[1]["x-worker-pid"] == str(last_one)
            app.signal(signal.SIGTERM)
            assert manager.next() == {"STOPPING": "1"}
            assert counts() == "0/1/3"
            assert app.wait() == 0
        assert not pid_alive(last_one)
    manager.sock.close()


def test_a_process_that_dies_is_replaced_alone() -> None:
    """SIGKILL to one of three processes: the parent replaces it, the
    other two serve on untouched, the superdaemon sees no exit, and the
    requests sent meanwhile all succeed."""
    with serving(
        EXAMPLE_APP, "--require-notify", env=worker_env(EXAMPLE_APP_PROCESSES="3")
    ) as daemon:
        port = daemon.port
        parent = int(daemon.wait_for(r"starting new worker (\d+)")[1])
        victim, *others = processes = children(parent)
        assert len(processes) == 3
        os.kill(victim, signal.SIGKILL)
        daemon.wait_for(rf"\(generation 1\): process {victim} died \(killed by SIGKILL\)")
        with Load(port, threads=10) as load:
            replacement = int(
                daemon.wait_for(rf"{STARTED} \(3 of 3, replacing {victim}\)", timeout=10)[1]
            )
            daemon.wait_for(rf"process {replacement} ready \(3/3/3\)")
        assert load.failures == [], load.failures[:5]
        assert load.total() > 0
        assert sorted(children(parent)) == sorted([*others, replacement])
        assert generation_of(port) == 1
        served = {http_get(port, "/")[1]["x-worker-pid"] for _ in range(20)}
        assert str(victim) not in served
        assert not daemon.matches(rf"worker {parent} died")
        assert not daemon.matches(rf"starting new worker (?!{parent}\b)")
    assert not any(pid_alive(pid) for pid in (*others, replacement))


def test_a_crash_loop_backs_off_then_gives_up() -> None:
    """Each process killed as soon as it starts: replaced after 0.1, 0.2,
    0.4, 0.8 s; at the fifth the parent gives up (drains the other, exits
    1), and the superdaemon starts a new generation."""
    with serving(
        EXAMPLE_APP, "--require-notify", env=worker_env(EXAMPLE_APP_PROCESSES="2")
    ) as daemon:
        port = daemon.port
        parent = int(daemon.wait_for(r"starting new worker (\d+)")[1])
        victim, other = children(parent)
        pauses: list[str] = []
        for _ in range(10):
            os.kill(victim, signal.SIGKILL)
            died = daemon.wait_for(rf"process {victim} died \(killed by SIGKILL\) (.*)")[1]
            if "giving up" in died:
                break
            pause = re.search(r"replacing it in ([\d.]+) s", died)
            if pause is not None:  # not if the first had served 1 s already
                pauses.append(pause[1])
            victim = int(daemon.wait_for(rf"{STARTED} \(2 of 2, replacing {victim}\)")[1])
        assert pauses == ["0.1", "0.2", "0.4", "0.8"]
        assert "5 fast failures in a row: giving up" in died
        daemon.wait_for(rf"process {other} stopped \(exit code 0\)")
        daemon.wait_for(rf"worker {parent} died unexpectedly with status:256")
        daemon.wait_for(r"\(generation 2\) is ready")
        assert generation_of(port) == 2


def test_fast_failures_are_forgotten_once_a_replacement_serves() -> None:
    """A replacement that serves a second ends the streak: the next fast
    failure is the first again, replaced after 0.1 s."""
    with serving(
        EXAMPLE_APP, "--require-notify", env=worker_env(EXAMPLE_APP_PROCESSES="2")
    ) as daemon:
        parent = int(daemon.wait_for(r"starting new worker (\d+)")[1])
        victim, other = children(parent)
        os.kill(victim, signal.SIGKILL)
        first = int(daemon.wait_for(rf"{STARTED} \(2 of 2, replacing {victim}\)")[1])
        os.kill(first, signal.SIGKILL)  # as it starts: a fast failure
        streak = int(daemon.wait_for(rf"process {first} died .* \((\d) fast failures? in a row")[1])
        victim = int(daemon.wait_for(rf"{STARTED} \(2 of 2, replacing {first}\)")[1])
        assert streak in (1, 2)  # 2 if the first had not served 1 s yet
        failures = "1 fast failure" if streak == 1 else "2 fast failures"
        daemon.wait_for(rf"process {victim} has served 1 s: {failures} in a row forgotten")
        os.kill(victim, signal.SIGKILL)
        died = daemon.wait_for(rf"process {victim} died (.*)")[1]
        assert re.search(r"after serving [\d.]+ s; replacing it$", died), died  # at once
        victim = int(daemon.wait_for(rf"{STARTED} \(2 of 2, replacing {victim}\)")[1])
        os.kill(victim, signal.SIGKILL)  # as it starts: a fast failure, the first again
        died = daemon.wait_for(rf"process {victim} died (.*)")[1]
        assert "replacing it in 0.1 s (1 fast failure in a row;" in died
        daemon.wait_for(rf"{STARTED} \(2 of 2, replacing {victim}\)")
        assert other in children(parent)
        assert not daemon.matches(rf"worker {parent} died")
