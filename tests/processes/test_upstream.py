"""The scenarios of upstream Server::Starter's own t/ suite, against our
start_server, with Perl workers that find their sockets through
Server::Starter's server_ports() (tests/workers/perl_echod.pl).  Scenarios
already proven elsewhere are listed in tests/README.md with the test that
covers them."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from harness.processes import (
    PERL_START_SERVER,
    ROOT,
    START_SERVER,
    free_port,
    pid_alive,
    run_start_server,
    running,
    serving,
    wait_for_file,
    worker_env,
)

pytestmark = pytest.mark.skipif(
    not os.path.exists(PERL_START_SERVER), reason="Perl's Server::Starter is not installed"
)

ECHOD = ["/usr/bin/perl", str(ROOT / "tests" / "workers" / "perl_echod.pl")]
PORTS = ["/usr/bin/perl", str(ROOT / "tests" / "workers" / "perl_ports.pl")]


def echo(port: int | None = None, path: Path | None = None, data: bytes = b"hello") -> int:
    """One exchange with perl_echod.pl; returns the pid that answered."""
    if path is not None:
        client = socket.socket(socket.AF_UNIX)
        client.settimeout(10)
        client.connect(str(path))
    else:
        client = socket.create_connection(("127.0.0.1", port or 0), timeout=10)
    with client:
        client.sendall(data)
        reply = client.recv(1024).decode()
    pid, _, echoed = reply.partition(":")
    assert echoed == data.decode(), reply
    return int(pid)


# -- t/01-starter.t, t/05-killolddelay.t, t/06-autorestart.t -----------------------


@pytest.mark.parametrize("signal_on_hup", ["TERM", "USR1"])
@pytest.mark.parametrize(
    ("scenario", "options"),
    [
        ("01-starter", []),
        ("05-killolddelay", ["--kill-old-delay=2"]),
        (
            "06-autorestart",
            ["--enable-auto-restart", "--auto-restart-interval=2", "--kill-old-delay=1"],
        ),
    ],
)
def test_reload_status_file_and_signal(
    tmp_path: Path, scenario: str, options: list[str], signal_on_hup: str
) -> None:
    status_file, signame = tmp_path / "status", tmp_path / "signame"
    options = [f"--status-file={status_file}", f"--signal-on-hup={signal_on_hup}", *options]
    with serving([*ECHOD, str(signame)], *options) as daemon:
        port = daemon.port
        first = echo(port)
        wait_for_file(status_file, lambda text: text == f"1:{first}\n")
        if scenario != "06-autorestart":
            daemon.signal(signal.SIGHUP)
        daemon.wait_for(r"\(generation 2\) is ready", timeout=20)
        if scenario != "01-starter":
            # Both generations listed while the old one waits for its signal.
            daemon.wait_for(r"^sleeping \d+ secs before killing old workers$")
            wait_for_file(status_file, lambda text: text.startswith(f"1:{first}\n2:"))
        daemon.wait_for(r"^old worker \d+ died")
        second = echo(port)
        assert second != first
        wait_for_file(status_file, lambda text: text == f"2:{second}\n")
        assert signame.read_text() == signal_on_hup
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert not status_file.exists()


# -- t/01-another-starter-is-running.t -----------------------------------------------


def test_a_second_starter_on_the_same_pid_file_is_refused(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    pid_file.write_text("999999\n")  # stale: nobody holds its lock, so it is taken over
    with serving(ECHOD, f"--pid-file={pid_file}") as daemon:
        assert pid_file.read_text() == f"{daemon.pid}\n"
        second = run_start_server(
            f"--port=127.0.0.1:{free_port()}", f"--pid-file={pid_file}", "--", *ECHOD
        )
        assert second.returncode == 1
        assert second.stderr == f"start_server: {pid_file} is locked: another start_server runs\n"
        assert pid_file.read_text() == f"{daemon.pid}\n"


# -- t/02-startfail.t, t/03-startfail.t ------------------------------------------------


def test_failed_starts_after_a_reload_retry_from_interval(tmp_path: Path) -> None:
    """Generation 1 fails, 2 serves, a HUP, 3 and 4 fail, 5 serves: the
    retries wait 1 s then 2 s (a streak starts after the last ready one)."""
    port = free_port()
    failing = 'case "$SERVER_STARTER_GENERATION" in 1|3|4) exit 1;; esac; exec "$@"'
    argv = [START_SERVER, f"--port=127.0.0.1:{port}", "--", "sh", "-c", failing, "sh", *ECHOD]
    with running(argv, env=worker_env()) as daemon:
        daemon.wait_for(r"\(generation 2\) is ready", timeout=20)
        assert echo(port) > 0
        daemon.signal(signal.SIGHUP)
        daemon.wait_for(r"\(generation 5\) is ready", timeout=30)
        delays = [int(m[1]) for m in daemon.matches(r"failed to start; retrying in (\d+)s")]
        assert delays == [1, 1, 2], daemon.output()
        fifth = int(daemon.matches(r"^starting new worker (\d+)$")[-1][1])
        daemon.wait_for(r"^old worker \d+ died")
        assert echo(port) == fifth


# -- t/03-starter-unix.t, t/13-unix-daemonize.t, t/11-stop.t, t/12-stop.t --------------


def test_unix_socket_daemonized_reloaded_and_stopped(tmp_path: Path) -> None:
    path, pid_file, log = tmp_path / "s.sock", tmp_path / "pid", tmp_path / "log"
    result = run_start_server(
        f"--path={path}",
        f"--pid-file={pid_file}",
        "--daemonize",
        f"--log-file={log}",
        "--",
        *ECHOD,
    )
    assert result.returncode == 0, result.stderr
    pid = int(pid_file.read_text())
    try:
        wait_for_file(log, lambda text: "is ready" in text)
        first = echo(path=path)
        os.kill(pid, signal.SIGHUP)
        wait_for_file(log, lambda text: "old worker" in text and "died" in text)
        assert echo(path=path) != first
    finally:
        stopped = run_start_server("--stop", f"--pid-file={pid_file}")
    assert stopped.returncode == 0, stopped.stderr
    assert not pid_file.exists() and not path.exists()
    assert not pid_alive(pid)


# -- t/04-starter-dir.t ------------------------------------------------------------------


def test_dir_is_the_workers_working_directory(tmp_path: Path) -> None:
    (tmp_path / "dir_status").write_text("")
    out = tmp_path / "out"
    worker = f"test -f dir_status && echo OK > {out} || echo NG > {out}; exec sleep 60"
    argv = [START_SERVER, f"--port=127.0.0.1:{free_port()}", f"--dir={tmp_path}"]
    with running([*argv, "--", "sh", "-c", worker], env=worker_env()):
        assert wait_for_file(out, bool) == "OK\n"


# -- t/07-envdir.t -------------------------------------------------------------------------


def test_envdir_is_read_at_each_start_and_deletion_unsets(tmp_path: Path) -> None:
    """Side by side with Perl: both pass the envdir to the first worker and a
    rewritten value to the next; after a deletion ours unsets the variable,
    where Perl 0.35 brings back the value it had at start (README,
    "Compatibility notes")."""
    seen: dict[str, list[str]] = {}
    for name, program in (("ours", START_SERVER), ("perl", PERL_START_SERVER)):
        envdir, out = tmp_path / name / "env", tmp_path / name / "out"
        envdir.mkdir(parents=True)
        (envdir / "FOO").write_text("foo-value1")
        worker = f'echo "FOO=${{FOO-unset}}" > {out}.$SERVER_STARTER_GENERATION; exec sleep 60'
        argv = [program, f"--port=127.0.0.1:{free_port()}", f"--envdir={envdir}"]
        with running([*argv, "--", "sh", "-c", worker], env=worker_env()) as daemon:
            seen[name] = [wait_for_file(Path(f"{out}.1"), bool)]
            (envdir / "FOO").write_text("foo-value2")
            daemon.signal(signal.SIGHUP)
            seen[name].append(wait_for_file(Path(f"{out}.2"), bool))
            daemon.wait_for(r"^old worker \d+ died")
            (envdir / "FOO").unlink()
            daemon.signal(signal.SIGHUP)
            seen[name].append(wait_for_file(Path(f"{out}.3"), bool))
    assert seen["ours"] == ["FOO=foo-value1\n", "FOO=foo-value2\n", "FOO=unset\n"]
    assert seen["perl"] == ["FOO=foo-value1\n", "FOO=foo-value2\n", "FOO=foo-value1\n"]


# -- t/10-bindaddr.t -------------------------------------------------------------------------


@pytest.mark.parametrize(("bound", "other"), [("127.0.0.1", "::1"), ("::1", "127.0.0.1")])
def test_a_bound_address_is_the_only_one_listening(bound: str, other: str) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    port = free_port()
    spec = f"[{bound}]:{port}" if ":" in bound else f"{bound}:{port}"
    with running([START_SERVER, f"--port={spec}", "--", *ECHOD], env=worker_env()) as daemon:
        daemon.wait_for(r"is ready")
        with socket.create_connection((bound, port), timeout=10) as client:
            client.sendall(b"x")
            assert client.recv(100).endswith(b":x")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((other, port), timeout=10).close()


# -- t/14-without-port.t -------------------------------------------------------------------


def test_without_any_port_the_worker_sees_an_empty_set(tmp_path: Path) -> None:
    out = tmp_path / "ports"
    with running([START_SERVER, "--", *PORTS, str(out)], env=worker_env()) as daemon:
        daemon.wait_for(r"is ready")
        assert wait_for_file(out, lambda text: text.count("\n") == 2) == (
            "env: found\nserver_ports: empty\n"
        )


# -- t/15-udp.t ------------------------------------------------------------------------------


def test_a_udp_port_reaches_the_worker() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [START_SERVER, f"--port=127.0.0.1:u{port}", "--", *ECHOD]
    with running(argv, env=worker_env()) as daemon:
        daemon.wait_for(r"is ready")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            client.sendto(b"ping", ("127.0.0.1", port))
            reply, _ = client.recvfrom(1024)
        assert reply.decode().endswith(":ping")
