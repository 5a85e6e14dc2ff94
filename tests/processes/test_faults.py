"""Faults under continuous load: what goes wrong at 3 a.m. must lose no
generation, refuse no connection and fail no request that was not already
inside a killed process.  Each test prints its figures as a [measured] line;
the README's Reliability table is made of them."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.apps import EXAMPLE_APP
from harness.http_clients import generation_of, http_get
from harness.load import Load
from harness.notify_socket import FakeManager
from harness.processes import (
    ROOT,
    START_SERVER,
    children,
    free_port,
    pid_alive,
    restart,
    run_start_server,
    running,
    serving,
    wait_for_file,
    worker_env,
)
from harness.reporting import report

CLOSES_LISTENER = [sys.executable, str(ROOT / "tests" / "workers" / "closes_listener.py")]
NOISE = ROOT / "tests" / "workers" / "noise.py"
pytestmark = pytest.mark.load


def until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Bounded wait for a state only observable from outside (an HTTP answer)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def greeting(port: int) -> str:
    status, _, body = http_get(port)
    assert status == 200
    return body


# How a request inside a SIGKILLed worker fails; a refusal is never one of them.
IN_FLIGHT_LOSSES = {"ConnectionResetError", "RemoteDisconnected", "IncompleteRead", "BadStatusLine"}


def counts(load: Load) -> str:
    return f"{load.total()} requests, {len(load.failures)} failed, {load.refused()} refused"


def test_worker_killed_again_and_again_respawns_with_backoff(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL the serving worker once, then every 200 ms for 5 s."""
    status_file = tmp_path / "status"
    manager = FakeManager(tmp_path / "notify")
    manager.sock.settimeout(None)
    manager.keep_reading()
    env = worker_env(NOTIFY_SOCKET=str(manager.path))
    with serving(EXAMPLE_APP, f"--status-file={status_file}", env=env) as daemon:
        port = daemon.port
        with Load(port) as load:
            first = wait_for_file(status_file, lambda text: text.startswith("1:"))
            os.kill(int(first.split(":")[1]), signal.SIGKILL)
            daemon.wait_for(r"\(generation 2\) is ready")
            killed: dict[int, int] = {}  # generation: pid
            end = time.monotonic() + 5
            while time.monotonic() < end:
                for line in status_file.read_text().split():
                    number, pid = map(int, line.split(":"))
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                        killed[number] = pid
                time.sleep(0.2)  # the fault's own rhythm, not a synchronisation
            # The status file lists serving and draining workers, never a starting
            # one: the generation after the last one killed is left alone and serves.
            last = max(killed) + 1
            daemon.wait_for(rf"\(generation {last}\) is ready", timeout=40)
            until(lambda: generation_of(port) == last, f"generation {last} to serve")
        assert daemon.proc.poll() is None
    retrying = [m["STATUS"] for m in manager.messages if "retrying in" in m.get("STATUS", "")]
    assert retrying, "the backoff is visible in STATUS="
    assert all("no generation serving" in text for text in retrying)
    assert daemon.matches(r"retrying in 1s \(failure 2 in a row")
    assert load.refused() == 0, load.failures[:5]
    # Only requests inside a killed worker may fail: a reset, never a refusal.
    kinds = sorted({failure.split("(")[0] for failure in load.failures})
    assert set(kinds) <= IN_FLIGHT_LOSSES, kinds
    longest = max(int(m[1]) for m in daemon.matches(r"retrying in (\d+)s"))
    report(
        capsys,
        f"worker SIGKILLed {len(killed) + 1} times in 5 s: {counts(load)} "
        f"({', '.join(kinds) or 'none'}: in flight in a killed worker); "
        f"backoff reached {longest}s; generation {last} serves",
    )


def test_hup_storm_keeps_two_generations_and_serves_the_last_deploy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """100 HUPs in 2 s, a new deploy written before each."""
    envdir = tmp_path / "env"
    envdir.mkdir()
    most_children = 0
    sampling = threading.Event()

    def sample(pid: int) -> None:
        nonlocal most_children
        while not sampling.is_set():  # a measurement, not a synchronisation
            most_children = max(most_children, len(children(pid)))
            time.sleep(0.005)

    with serving(EXAMPLE_APP, f"--envdir={envdir}") as daemon:
        port = daemon.port
        sampler = threading.Thread(target=sample, args=(daemon.pid,))
        sampler.start()
        with Load(port) as load:
            for deploy in range(100):
                (envdir / "EXAMPLE_APP_MESSAGE").write_text(f"deploy-{deploy}\n")
                daemon.signal(signal.SIGHUP)
                time.sleep(0.02)
            until(lambda: greeting(port).startswith("deploy-99 "), "deploy-99 to serve")
            spawned = len(daemon.matches(r"starting new worker"))
            daemon.wait_for(r"^old worker \d+ died", count=spawned - 1, timeout=30)
        sampling.set()
        sampler.join(5)
        assert daemon.proc.poll() is None
        assert greeting(port).startswith("deploy-99 ")

    starting, most_serving = _replay(daemon.lines)
    assert starting <= 1 and most_serving <= 1, (starting, most_serving)
    assert load.failures == [], load.failures[:5]
    assert 2 < spawned < 100, "HUPs during a start coalesce into one more reload"
    report(
        capsys,
        f"100 HUPs in 2 s: {counts(load)}; {spawned - 1} reloads; at most {starting} starting "
        f"+ {most_serving} serving at once (log), at most {most_children} children "
        f"including draining ones (sampled); deploy-99 serves",
    )


def _replay(lines: list[str]) -> tuple[int, int]:
    """Most generations starting, and most serving, at any point of the log."""
    starting: set[str] = set()
    serving: set[str] = set()
    most_starting = most_serving = 0
    for line in lines:
        if m := re.search(r"starting new worker (\d+)", line):
            starting.add(m[1])
        elif m := re.search(r"worker (\d+) \(generation \d+\) is ready", line):
            starting.discard(m[1])
            serving.add(m[1])
            continue  # the same event goes on with the old generation's signal, next line
        elif m := re.search(r"to old workers:([\d,]+)", line):
            serving.difference_update(m[1].split(","))
        elif m := re.search(r"worker (\d+) died", line):
            starting.discard(m[1])
            serving.discard(m[1])
        most_starting = max(most_starting, len(starting))
        most_serving = max(most_serving, len(serving))
    return most_starting, most_serving


@pytest.mark.parametrize(
    ("fault", "env_file", "value", "reason"),
    [
        ("crashes at start", "EXAMPLE_APP_FAIL", "broken deploy", "exit code 1"),
        ("hangs, never ready", "EXAMPLE_APP_BOOT_SECONDS", "600", "no READY=1 within 2s"),
    ],
)
def test_bad_generation_under_load_then_a_good_one(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fault: str,
    env_file: str,
    value: str,
    reason: str,
) -> None:
    pid_file, envdir = tmp_path / "pid", tmp_path / "env"
    envdir.mkdir()
    options = [f"--pid-file={pid_file}", f"--envdir={envdir}", "--require-notify"]
    with serving(EXAMPLE_APP, *options, "--ready-timeout=2", "--backoff-max=60") as daemon:
        with Load(daemon.port, path="/slow") as load:
            (envdir / env_file).write_text(f"{value}\n")
            failed = restart(pid_file)
            assert failed.returncode == 1
            assert reason in failed.stderr and "old generation keeps serving" in failed.stderr
            assert "Traceback" not in failed.stderr
            (envdir / env_file).unlink()
            good = restart(pid_file)
            assert good.returncode == 0, good.stderr
            daemon.wait_for(r"^old worker \d+ died")
        # The failed generation is retried after 1 s: the good one is 3 or 4.
        assert sorted(load.generations)[0] == 1 and sorted(load.generations)[-1] >= 3
    assert load.failures == [], load.failures[:5]
    report(capsys, f"new generation {fault}: {counts(load)}; reload failed, next one served")


def test_sigstop_of_the_superdaemon_during_a_reload(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with serving(EXAMPLE_APP) as daemon:
        port = daemon.port
        with Load(port, path="/slow") as load:
            daemon.signal(signal.SIGHUP)
            daemon.signal(signal.SIGSTOP)
            time.sleep(2)  # the fault lasts 2 s; the workers serve on meanwhile
            stopped_total = load.total()
            daemon.signal(signal.SIGCONT)
            daemon.wait_for(r"\(generation 2\) is ready")
            daemon.wait_for(r"^old worker \d+ died")
            until(lambda: generation_of(port) == 2, "generation 2 to serve")
        assert daemon.proc.poll() is None
    assert stopped_total > 20, "requests were answered while the superdaemon was stopped"
    assert load.failures == [], load.failures[:5]
    report(capsys, f"SIGSTOP 2 s / SIGCONT during a reload: {counts(load)}")


def test_worker_closing_its_listener_early_refuses_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pid_file, flag = tmp_path / "pid", tmp_path / "close-early"
    choose = f'[ -e "{flag}" ] && exec "$0" "{CLOSES_LISTENER[1]}"; exec "$@"'
    app = ["sh", "-c", choose, sys.executable, *EXAMPLE_APP]
    with serving(app, f"--pid-file={pid_file}") as daemon:
        port = daemon.port
        with Load(port) as load:
            flag.write_text("")
            assert restart(pid_file).returncode == 0  # generation 2 closes its listener
            daemon.wait_for(r"^old worker \d+ died")
            # Nobody accepts now; connections wait in the superdaemon's backlog.
            time.sleep(1)
            flag.unlink()
            assert restart(pid_file).returncode == 0
            until(lambda: generation_of(port) == 3, "generation 3 to serve")
    assert load.failures == [], load.failures[:5]
    report(capsys, f"worker closes its listener early: {counts(load)}")


def test_worker_writing_megabytes_blocks_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pid_file = tmp_path / "pid"
    megabytes = 5
    text = "noise from the worker: the quick brown fox jumps over the lazy dog"
    per_writer = megabytes * 1_000_000 // (len(text) + 1)
    # Each generation starts the noise in the background, then becomes the app.
    noise = shlex.join([sys.executable, str(NOISE), str(per_writer), text])
    app = ["sh", "-c", f'{noise} & exec "$@"', "sh", *EXAMPLE_APP]
    with serving(app, f"--pid-file={pid_file}") as daemon:
        with Load(daemon.port) as load:
            for _ in range(3):
                result = restart(pid_file)
                assert result.returncode == 0, result.stderr
        daemon.wait_for(r"^old worker \d+ died", count=3)
        # Every line whole and none lost: the superdaemon's own lines do not
        # split them either.
        daemon.wait_for(f"^{re.escape(text)}$", count=4 * per_writer, timeout=60)
    assert load.failures == [], load.failures[:5]
    report(capsys, f"4 generations writing {megabytes} MB each to stderr: {counts(load)}")


def test_clients_hanging_up_mid_reply_leave_no_traceback() -> None:
    with serving(EXAMPLE_APP) as daemon:
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as client:
                client.sendall(b"GET /slow HTTP/1.0\r\n\r\n")
                assert client.recv(12) == b"HTTP/1.0 200"
                # Close with a reset while the handler sleeps before its second write.
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        daemon.signal(signal.SIGTERM)  # the drain waits for those five handlers
        assert daemon.wait() == 0
    assert "Traceback" not in daemon.output(), daemon.output()


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (CI runs as root)")


@needs_root
def test_a_read_only_status_directory_fails_the_start(tmp_path: Path) -> None:
    marker = tmp_path / "worker-ran"
    with tmpfs(tmp_path / "run", "64k") as run:
        subprocess.run(["mount", "-o", "remount,ro", str(run)], check=True)
        result = run_start_server(
            f"--port=127.0.0.1:{free_port()}",
            f"--status-file={run / 'status'}",
            "--",
            "sh",
            "-c",
            f"touch {marker}; sleep 5",
        )
    assert result.returncode == 1
    assert result.stderr == (
        f"start_server: status file {run / 'status'}: directory {run} is not writable\n"
    )
    assert not marker.exists(), "no worker may be spawned"


@needs_root
def test_status_directory_read_only_or_full(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with tmpfs(tmp_path / "run", "64k") as run:
        status_file = run / "status"
        with serving(EXAMPLE_APP, f"--status-file={status_file}") as daemon:
            port = daemon.port
            load = Load(port).__enter__()
            subprocess.run(["mount", "-o", "remount,ro", str(run)], check=True)
            daemon.signal(signal.SIGHUP)
            daemon.wait_for(r"failed to write status file .*: Read-only file system")
            until(lambda: generation_of(port) == 2, "generation 2 to serve")
            subprocess.run(["mount", "-o", "remount,rw", str(run)], check=True)
            with open(run / "filler", "wb", buffering=0) as filler, contextlib.suppress(OSError):
                while True:
                    filler.write(b"\0" * 4096)
                    filler.flush()
            daemon.signal(signal.SIGHUP)
            daemon.wait_for(r"failed to write status file .*: No space left on device")
            until(lambda: generation_of(port) == 3, "generation 3 to serve")
            (run / "filler").unlink()
            daemon.signal(signal.SIGHUP)
            daemon.wait_for(r"^old worker \d+ died", count=3)
            load.__exit__(None, None, None)
            wait_for_file(status_file, lambda text: text.startswith("4:"))
        # A pid file that cannot be written is a one-line error at start.
        subprocess.run(["mount", "-o", "remount,ro", str(run)], check=True)
        pid_file = f"--pid-file={run / 'new.pid'}"
        result = run_start_server(f"--port=127.0.0.1:{free_port()}", pid_file, "--", *EXAMPLE_APP)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and "Read-only file system" in result.stderr
    assert load.failures == [], load.failures[:5]
    report(capsys, f"status directory read-only, then full, across 3 reloads: {counts(load)}")


def test_envdir_vanishing_between_reloads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pid_file, envdir = tmp_path / "pid", tmp_path / "env"
    envdir.mkdir()
    (envdir / "EXAMPLE_APP_MESSAGE").write_text("Configured\n")
    with serving(EXAMPLE_APP, f"--pid-file={pid_file}", f"--envdir={envdir}") as daemon:
        port = daemon.port
        assert greeting(port).startswith("Configured ")
        with Load(port) as load:
            (envdir / "EXAMPLE_APP_MESSAGE").unlink()
            envdir.rmdir()
            result = restart(pid_file)
            assert result.returncode == 0, result.stderr
            daemon.wait_for(rf"envdir {envdir} is missing; generation 2 starts without")
            daemon.wait_for(r"^old worker \d+ died")  # until then it may still accept
            assert greeting(port).startswith("Hello ")
            envdir.mkdir()
            (envdir / "EXAMPLE_APP_MESSAGE").write_text("Back\n")
            assert restart(pid_file).returncode == 0
            daemon.wait_for(r"^old worker \d+ died", count=2)
            assert greeting(port).startswith("Back ")
    assert load.failures == [], load.failures[:5]
    report(capsys, f"envdir removed, then restored, between reloads: {counts(load)}")


# -- security ------------------------------------------------------------------

NOBODY = 65534


ASK_FOR_A_RELOAD = """
import socket, sys
client = socket.socket(socket.AF_UNIX)
client.settimeout(10)
try:
    client.connect(sys.argv[1])
except OSError as err:
    sys.exit(f"connect: {err.strerror}")
try:
    client.sendall(b"reload\\n")
except BrokenPipeError:
    pass  # refused and closed before the request was written: the answer is there
sys.exit(f"answer: {client.recv(200).decode().strip()}")
"""


@needs_root
def test_control_socket_refuses_other_users() -> None:
    # pytest's tmp_path is private to root: use a directory others can traverse.
    with tempfile.TemporaryDirectory(prefix="control-") as shared:
        os.chmod(shared, 0o711)
        _refuses_other_users(Path(shared) / "control.sock")


def _refuses_other_users(control: Path) -> None:
    def as_nobody() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["/usr/bin/python3", "-c", ASK_FOR_A_RELOAD, str(control)],
            capture_output=True,
            text=True,
            timeout=30,
            user=NOBODY,
            check=False,
        )

    with serving(EXAMPLE_APP, f"--control-socket={control}") as daemon:
        assert control.stat().st_mode & 0o777 == 0o600
        blocked = as_nobody()
        assert blocked.stderr == "connect: Permission denied\n"
        # Even if someone loosens the file's mode, peer credentials still refuse.
        os.chmod(control, 0o666)
        refused = as_nobody()
        assert refused.stderr == "answer: error permission denied\n"
        assert generation_of(daemon.port) == 1
        assert daemon.proc.poll() is None


@pytest.mark.parametrize(
    ("options", "umask", "mode"),
    [([], 0o022, 0o777), ([], 0o077, 0o777), (["--path-mode=0660"], 0o000, 0o660)],
)
def test_unix_socket_mode_is_what_was_asked(
    tmp_path: Path, options: list[str], umask: int, mode: int
) -> None:
    path = tmp_path / "app.sock"
    argv = [START_SERVER, f"--path={path}", *options, "--", *EXAMPLE_APP]
    daemon_env = worker_env()
    with running(argv, env=daemon_env, umask=umask) as daemon:
        daemon.wait_for(r"is ready")
        assert path.stat().st_mode & 0o777 == mode
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))


def test_bad_commands_beside_a_running_superdaemon_disturb_nothing(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    (tmp_path / "not-a-pid").write_text("hello\n")
    with serving(EXAMPLE_APP, f"--pid-file={pid_file}") as daemon:
        port = daemon.port
        bad_commands = [
            # a second instance on the same port, or with the same pid file
            ([f"--port=127.0.0.1:{port}", "--", *EXAMPLE_APP], "Address already in use"),
            (
                [f"--port=127.0.0.1:{free_port()}", f"--pid-file={pid_file}", "--", *EXAMPLE_APP],
                "is locked: another start_server runs",
            ),
            (["--restart", f"--pid-file={pid_file}", "--restart-timeout=soon"], "not a number"),
            (["--restart", f"--pid-file={tmp_path / 'not-a-pid'}"], "names no start_server"),
            (["--stop", f"--pid-file={tmp_path / 'missing'}"], "failed to open file"),
            (["--restart", f"--pid-file={pid_file}", "--signal-on-hup=BOGUS"], "unknown signal"),
        ]
        with Load(port) as load:
            for args, message in bad_commands:
                result = run_start_server(*args)
                assert result.returncode != 0, args
                assert result.stderr.count("\n") == 1, result.stderr
                assert message in result.stderr and "Traceback" not in result.stderr
            assert generation_of(port) == 1
        assert daemon.proc.poll() is None
        assert restart(pid_file).returncode == 0
    assert load.failures == [], load.failures[:5]


def test_after_a_sigkill_of_the_superdaemon_a_new_one_names_the_orphans_holding_the_port(
    tmp_path: Path,
) -> None:
    """Run by hand, a superdaemon killed with SIGKILL leaves its workers
    running as orphans, holding the port.  A new start_server on that port
    says in one line which processes hold it and the command that drains
    them; after that command it binds and runs."""
    with serving(EXAMPLE_APP) as first:
        port = first.port
        (worker,) = children(first.pid)
        first.signal(signal.SIGKILL)
        first.wait()
        assert http_get(port)[0] == 200, "the orphan serves on"
        refused = run_start_server(f"--port=127.0.0.1:{port}", "--", *EXAMPLE_APP)
        assert refused.returncode == 1
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert f"port {port} is held by pid {worker} (" in refused.stderr, refused.stderr
        command = re.search(r"'(kill -TERM [\d ]+)'", refused.stderr)
        assert command is not None and command.group(1) == f"kill -TERM {worker}"
        subprocess.run(shlex.split(command.group(1)), check=True, timeout=10)
        deadline = time.monotonic() + 30
        while pid_alive(worker):  # an orphan's exit has no event for us to await
            assert time.monotonic() < deadline, "the orphan did not drain on TERM"
            time.sleep(0.05)
        with running(first.argv, env=worker_env()) as second:
            second.wait_for(r"is ready")
            assert http_get(port)[0] == 200
