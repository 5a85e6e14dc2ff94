"""Socket activation: start_server adopting sockets passed the systemd way
(LISTEN_FDS), driven by systemd-socket-activate, no PID 1 needed."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from harness.apps import EXAMPLE_APP, REPORTER, wait_for_reports
from harness.http_clients import generation_of, http_get
from harness.processes import START_SERVER, Daemon, free_port, running, serving, worker_env

ACTIVATE = shutil.which("systemd-socket-activate")
pytestmark = pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate not installed")


def _activate(listen: list[str], names: str | None, argv: list[str], **setenv: str) -> list[str]:
    """systemd-socket-activate passes only LISTEN_* and the variables it is told."""
    assert ACTIVATE is not None
    command = [ACTIVATE, *(f"--listen={address}" for address in listen)]
    command += [f"--setenv={name}={value}" for name, value in setenv.items()]
    if names is not None:
        command.append(f"--fdname={names}")
    return [*command, *argv]


def _listening(daemon: Daemon, count: int) -> None:
    daemon.wait_for(rf"^Listening on .* as {2 + count}\.$")


def _poke(port: int) -> None:
    """systemd-socket-activate starts its program on the first connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_named_tcp_and_unix_sockets_are_adopted(tmp_path: Path) -> None:
    specific, wildcard, path = free_port(), free_port(), tmp_path / "admin.sock"
    argv = _activate(
        [f"127.0.0.1:{specific}", str(wildcard), str(path)],
        "web:any:admin",
        [START_SERVER, "--", *REPORTER],
        REPORT_DIR=str(tmp_path),
    )
    with running(argv, env=worker_env()) as daemon:
        _listening(daemon, 3)
        _poke(specific)
        daemon.wait_for(r"is ready")
        daemon.signal(signal.SIGHUP)
        daemon.wait_for(r"^old worker \d+ died")
        first, second = wait_for_reports(tmp_path, 2)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    for report in (first, second):
        env = report["env"]
        assert env["SERVER_STARTER_PORT"] == (f"127.0.0.1:{specific}=3;{wildcard}=4;{path}=5")
        assert env["LISTEN_FDNAMES"] == "web:any:admin"
        for name in ("LISTEN_PID", "LISTEN_FDS"):
            assert name not in env
        assert env["NOTIFY_SOCKET"].startswith("@server-starter/")
        assert set(report["fds"]) == {"0", "1", "2", "3", "4", "5"}
        assert report["fds"]["4"]["family"] == "inet6"  # systemd's wildcard is [::]
    assert [r["env"]["SERVER_STARTER_GENERATION"] for r in (first, second)] == ["1", "2"]
    assert path.is_socket(), "a socket systemd passed is never removed by start_server"


def test_example_app_serves_through_an_activated_socket(tmp_path: Path) -> None:
    port = free_port()
    argv = _activate([f"127.0.0.1:{port}"], None, [START_SERVER, "--", *EXAMPLE_APP])
    with running(argv, env=worker_env()) as daemon:
        _listening(daemon, 1)
        status, headers, body = http_get(port)  # this request activates it, waiting in the backlog
        assert (status, body) == (200, "Hello from a HandleFunc #1!\n")
        assert headers["x-server-starter-generation"] == "1"
        daemon.signal(signal.SIGHUP)
        daemon.wait_for(r"^old worker \d+ died")
        assert generation_of(port) == 2


def test_port_options_must_match_inherited_sockets(tmp_path: Path) -> None:
    port = free_port()
    matching = _activate(
        [f"127.0.0.1:{port}"], None, [START_SERVER, f"--port=127.0.0.1:{port}", "--", *EXAMPLE_APP]
    )
    with running(matching, env=worker_env()) as daemon:
        _listening(daemon, 1)
        assert http_get(port)[0] == 200
    other = free_port()
    wrong = _activate(
        [f"127.0.0.1:{port}"], None, [START_SERVER, f"--port={other}", "--", *EXAMPLE_APP]
    )
    with running(wrong, env=worker_env()) as daemon:
        _listening(daemon, 1)
        _poke(port)
        assert daemon.wait() == 1
        lines = daemon.output().splitlines()
        errors = [line for line in lines if line.startswith("start_server:")]
        assert errors == [
            f"start_server: --port/--path do not match the sockets passed by systemd: "
            f"given {other}; inherited 127.0.0.1:{port}"
        ], lines
        assert "Traceback" not in daemon.output()


def test_listen_pid_of_another_process_is_ignored(tmp_path: Path) -> None:
    env = worker_env(LISTEN_PID="1", LISTEN_FDS="1", REPORT_DIR=str(tmp_path))
    with serving(REPORTER, env=env) as daemon:
        (report,) = wait_for_reports(tmp_path, 1)
        assert report["env"]["SERVER_STARTER_PORT"] == f"127.0.0.1:{daemon.port}=3"
        assert "LISTEN_FDS" not in report["env"]


def _start_server_through_shell(script: str) -> subprocess.CompletedProcess[str]:
    """Run start_server after ``script``: LISTEN_PID must be start_server's own
    pid, so a shell sets the variables and then execs it."""
    return subprocess.run(
        ["sh", "-c", script, "sh", START_SERVER, "--", *EXAMPLE_APP],
        capture_output=True,
        text=True,
        timeout=30,
        env=worker_env(),
        check=False,
    )


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"LISTEN_FDS": "x"}, "LISTEN_FDS is not a number: 'x'"),
        ({"LISTEN_FDS": "-1"}, "LISTEN_FDS out of range: '-1'"),
        ({"LISTEN_FDS": "99999999"}, "LISTEN_FDS out of range: '99999999'"),
        ({"LISTEN_FDS": "1"}, "descriptor 3 from LISTEN_FDS: Bad file descriptor"),
        ({"LISTEN_FDS": "0", "LISTEN_FDNAMES": "a:b"}, "LISTEN_FDNAMES names 2 sockets"),
    ],
)
def test_hostile_listen_variables_are_one_line_errors(
    variables: dict[str, str], message: str
) -> None:
    exports = " ".join(f"{k}={v}" for k, v in variables.items())
    result = _start_server_through_shell(f'LISTEN_PID=$$ {exports} exec "$@"')
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_a_non_socket_descriptor_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("")
    result = _start_server_through_shell(f'exec 3<"{target}"; LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"')
    assert result.returncode == 1
    assert result.stderr == "start_server: descriptor 3 from LISTEN_FDS is not a socket\n"
