"""Bad input: one clear line, a non-zero exit, never a traceback; and a
running superdaemon is never disturbed by a bad control command."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.apps import EXAMPLE_APP, REPORTER, wait_for_reports
from harness.http_clients import generation_of
from harness.processes import (
    PERL_START_SERVER,
    START_SERVER,
    free_port,
    run_start_server,
    running,
    serving,
    wait_for_file,
    worker_env,
)

APP = ["--", sys.executable, "-c", "pass"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port="], "invalid --port value ''"),
        (["--port=0"], "port must be 1 to 65535"),
        (["--port=65536"], "port must be 1 to 65535"),
        (["--port=[::1:80"], "unbalanced brackets"),
        (["--port=abc"], "invalid --port value 'abc'"),
        (["--port=http://localhost:8080"], "--port takes PORT or HOST:PORT, not a URL"),
        (["--port=8080=1"], "descriptor 1 is stdout, where start_server logs; pin to 0"),
        (["--port=127.0.0.1:{p}", "--port=127.0.0.1:{p}"], "is given twice"),
        (["--port=127.0.0.1:{p}=9", "--port=127.0.0.1:{q}=9"], "descriptor 9 is pinned twice"),
        (["--port=127.0.0.1:{p}=2"], "descriptor 2 is stderr"),
        (["--port=8080=1048576"], "descriptor 1048576 is above the limit of open files"),
        (["--path=/tmp/" + "x" * 120], "longer than 107 bytes"),
        (["--no-such-option"], "unrecognized arguments: --no-such-option"),
        (["--interval=soon"], "'soon' is not a number of seconds"),
        (["--interval=-1"], "must be a non-negative number"),
        (["--kill-old-delay=x"], "'x' is not a number of seconds"),
        (["--backlog=0"], "'0' must be positive"),
        (["--backlog=many"], "'many' is not a whole number"),
        (["--stop-timeout=nan"], "must be a non-negative number"),
        (["--signal-on-hup=NOPE"], "unknown signal 'NOPE'"),
        (["--signal-on-term=SIGFOO"], "unknown signal 'SIGFOO'"),
        (["--path-mode=999"], "not an octal mode"),
        (["--ready-timeout=5"], "--ready-timeout applies only with --require-notify"),
        (["--daemonize"], "--log-file option must be specified together with --daemonize"),
        (["--port=8080"], "server program not specified"),
        (["--stop"], "--stop option requires --pid-file"),
        (["--restart"], "--restart needs --pid-file or --control-socket"),
        (["--drain-orphans"], "--drain-orphans is for ExecStopPost= in a systemd service"),
        (["--port=127.0.0.1:{p}", "--", "/no/such/program"], "/no/such/program: no such file"),
        (["--port=127.0.0.1:{p}", "--", "no-such-command-xyz"], "command not found in PATH"),
        (["--port=127.0.0.1:{p}", "--dir=/no/such/dir"], "--dir /no/such/dir: no such directory"),
    ],
)
def test_bad_input_is_one_line(args: list[str], message: str) -> None:
    p, q = free_port(), free_port()
    args = [a.format(p=p, q=q) for a in args]
    if (
        "--" not in args
        and not any(a in ("--stop", "--restart") for a in args)
        and "server program not specified" not in message
    ):
        args += APP
    result = run_start_server(*args)
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("start_server: ") and message in result.stderr, result.stderr


def test_not_executable_program(tmp_path: Path) -> None:
    script = tmp_path / "app"
    script.write_text("#!/bin/sh\n")
    result = run_start_server(f"--port=127.0.0.1:{free_port()}", "--", str(script))
    assert result.returncode == 2
    assert result.stderr == f"start_server: server program {script}: not executable (see --help)\n"


def test_no_socket_at_all_is_warned_of_and_runs_as_perl_would(tmp_path: Path) -> None:
    status = tmp_path / "status"
    argv = [
        START_SERVER,
        f"--status-file={status}",
        "--",
        sys.executable,
        "-c",
        "import os, time; print('port=' + os.environ['SERVER_STARTER_PORT']); time.sleep(60)",
    ]
    with running(argv, env=worker_env()) as daemon:
        daemon.wait_for(
            r"warning: no --port or --path given .* the workers get no listening socket"
        )
        daemon.wait_for(r"^port=$")


def test_port_in_use_and_non_socket_path(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_start_server(f"--port=127.0.0.1:{port}", *APP)
    assert result.returncode == 1
    # One line, naming who holds the port (this test's own process) and what to do.
    assert result.stderr.startswith(
        f"start_server: failed to bind to 127.0.0.1:{port}: Address already in use; "
        f"port {port} is held by pid {os.getpid()} ("
    ), result.stderr
    assert result.stderr.endswith(
        f"'kill -TERM {os.getpid()}' lets them finish their requests and exit\n"
    ), result.stderr
    assert result.stderr.count("\n") == 1
    # A process on another address of the same port is not in the way: not named.
    other = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, sys; s = socket.socket(); s.bind(('127.0.0.2', int(sys.argv[1])));"
            " s.listen(); print('listening', flush=True); sys.stdin.read()",
            str(port),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout is not None and other.stdout.readline() == "listening\n"
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", port))
            busy.listen()
            result = run_start_server(f"--port=127.0.0.1:{port}", *APP)
        assert f"held by pid {os.getpid()} (" in result.stderr, result.stderr
        assert f"pid {other.pid} " not in result.stderr, result.stderr
    finally:
        other.kill()
        other.wait(10)
    regular = tmp_path / "data"
    regular.write_text("precious")
    result = run_start_server(f"--path={regular}", *APP)
    assert result.returncode == 1
    assert "exists and is not a socket; refusing to remove it" in result.stderr
    assert regular.read_text() == "precious"


@pytest.mark.parametrize("program", [START_SERVER, PERL_START_SERVER], ids=["ours", "perl"])
@pytest.mark.parametrize("where", ["stdin", "an open file"])
def test_a_pin_takes_the_descriptor_over_as_perl_does(
    tmp_path: Path, where: str, program: str
) -> None:
    """``=0`` puts the socket on stdin (FastCGI servers listen there); a pin on
    a descriptor already open replaces it, as Perl's dup2 does."""
    if not os.path.exists(program):
        pytest.skip(f"{program} is not installed")
    port = free_port()
    with open(tmp_path / "f", "w") as held:
        os.set_inheritable(held.fileno(), True)
        fd = 0 if where == "stdin" else held.fileno()
        argv = [program, f"--port=127.0.0.1:{port}={fd}", "--", *REPORTER]
        env = worker_env(REPORT_DIR=str(tmp_path))
        with running(argv, env=env, pass_fds=[held.fileno()]) as daemon:
            (report,) = wait_for_reports(tmp_path, 1)
            daemon.wait_for(rf"^socket is duplicated to file descriptor {fd}$")
            with socket.create_connection(("127.0.0.1", port), timeout=10):
                pass  # the pinned socket is the one listening
    assert report["env"]["SERVER_STARTER_PORT"] == f"127.0.0.1:{port}={fd}"
    pinned = report["fds"][str(fd)]
    assert (pinned["type"], pinned["listening"]) == ("stream", True)
    assert pinned["address"] == ["127.0.0.1", port]


def test_bad_environment_values() -> None:
    env = worker_env(KILL_OLD_DELAY="later")
    result = run_start_server(f"--port=127.0.0.1:{free_port()}", *APP, env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("start_server: KILL_OLD_DELAY: 'later' is not a number")


def test_version_and_help() -> None:
    from server_starter import __version__

    assert run_start_server("--version").stdout == f"{__version__}\n"
    help_text = run_start_server("--help").stdout
    for option in (
        "--port",
        "--path",
        "--dir",
        "--interval",
        "--signal-on-hup",
        "--signal-on-term",
        "--pid-file",
        "--status-file",
        "--envdir",
        "--log-file",
        "--daemonize",
        "--enable-auto-restart",
        "--auto-restart-interval",
        "--kill-old-delay",
        "--backlog",
        "--restart",
        "--stop",
        "--require-notify",
    ):
        assert option in help_text


def test_restart_with_nobody_listening_says_why_of_the_pid_file(tmp_path: Path) -> None:
    """Of the pid file the user named, not of the control socket beside it."""
    pid_file = tmp_path / "pid"
    gone = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    cases = {
        "": f"no start_server runs with --pid-file {pid_file} (the file does not exist)",
        "garbage\n": f"{pid_file} names no start_server (not a pid file of one)",
        f"{gone.stdout.strip()}\n": f"of {pid_file} is not running: a stale pid file",
        f"{os.getpid()}\n": f"of {pid_file} has no control socket {pid_file}.sock",
    }
    for content, message in cases.items():
        if content:
            pid_file.write_text(content)
        result = run_start_server("--restart", f"--pid-file={pid_file}")
        assert result.returncode == 1
        assert result.stderr.startswith("start_server: --restart: "), result.stderr
        assert message in result.stderr
        assert result.stderr.count("\n") == 1


def test_restart_with_nobody_at_the_control_socket_fails_clearly(tmp_path: Path) -> None:
    result = run_start_server("--restart", f"--control-socket={tmp_path / 'none.sock'}")
    assert result.returncode == 1
    assert result.stderr.startswith("start_server: cannot reach start_server at ")
    assert result.stderr.count("\n") == 1


def test_bad_control_request_leaves_the_generation_serving(tmp_path: Path) -> None:
    control = tmp_path / "control.sock"
    with serving(EXAMPLE_APP, f"--control-socket={control}") as daemon:
        port = daemon.port
        assert oct(control.stat().st_mode & 0o777) == "0o600"
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(str(control))
            client.sendall(b"rm -rf /\n")
            assert client.recv(200) == b"error unknown request 'rm -rf /'\n"
        assert generation_of(port) == 1
        result = run_start_server("--restart", f"--control-socket={control}")
        assert result.returncode == 0, result.stderr
        daemon.wait_for(r"^old worker \d+ died")  # until then it may still accept
        assert generation_of(port) == 2


def test_restart_client_reads_a_refusal_sent_before_its_request() -> None:
    # The superdaemon answers a refused peer and closes at once; writing the
    # request then fails with EPIPE, and the answer must still be read.
    from server_starter.superdaemon.control import exchange

    client, superdaemon = socket.socketpair()
    superdaemon.sendall(b"error permission denied\n")
    superdaemon.close()
    with client:
        reply = exchange(client, "reload", time.monotonic() + 10, 10)
    assert reply == b"error permission denied\n"


def test_log_file_and_daemonize(tmp_path: Path) -> None:
    port, log, pid_file = free_port(), tmp_path / "log", tmp_path / "pid"
    result = run_start_server(
        f"--port=127.0.0.1:{port}",
        f"--log-file={log}",
        "--daemonize",
        f"--pid-file={pid_file}",
        "--",
        *EXAMPLE_APP,
    )
    # The foreground process returns once the daemon has written its pid file.
    assert result.returncode == 0, result.stderr
    try:
        daemon_pid = int(pid_file.read_text())
        assert daemon_pid != os.getpid()
        restarted = run_start_server("--restart", f"--pid-file={pid_file}")
        assert restarted.returncode == 0, restarted.stderr
        # Until the old worker has exited it may still accept.
        wait_for_file(log, lambda text: re.search(r"^old worker \d+ died", text, re.M))
        assert generation_of(port) == 2
        assert "starting new worker" in log.read_text()
    finally:
        stop = run_start_server("--stop", f"--pid-file={pid_file}")
        assert stop.returncode == 0, stop.stderr
    assert "exiting" in log.read_text()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--envdir={tmp}/missing", "envdir {tmp}/missing: no such directory"),
        (
            "--status-file={tmp}/missing/status",
            "status file {tmp}/missing/status: directory {tmp}/missing does not exist",
        ),
    ],
)
def test_startup_misconfiguration_fails_before_any_worker(
    tmp_path: Path, option: str, message: str
) -> None:
    marker = tmp_path / "worker-ran"
    result = run_start_server(
        f"--port=127.0.0.1:{free_port()}",
        option.format(tmp=tmp_path),
        "--",
        "sh",
        "-c",
        f"touch {marker}; sleep 5",
    )
    assert result.returncode == 1
    assert result.stderr == f"start_server: {message.format(tmp=tmp_path)}\n"
    assert not marker.exists(), "no worker may be spawned"
