"""Bad input, systematically: every parser of outside input, fed what
hypothesis makes up.  Never a traceback (only the parser's own error, with a
one-line message), never a lost generation.  (The ``--port`` grammar and
``SERVER_STARTER_PORT`` have their properties in test_specs.py.)"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.apps import EXAMPLE_APP
from harness.http_clients import generation_of
from harness.processes import Daemon, run_start_server, serving
from server_starter import listener
from server_starter.contract import PortVariableError, parse_notify
from server_starter.superdaemon.control import MAX_REQUEST
from server_starter.superdaemon.environment import load_envdir
from server_starter.superdaemon.notify import NotifyReceiver
from server_starter.superdaemon.settings import (
    SettingError,
    parse_mode,
    parse_positive_int,
    parse_seconds,
    parse_signal,
)
from server_starter.superdaemon.sockets import (
    SocketError,
    adopt_inherited,
    inherited_fd_count,
    parse_path,
)

# Text as it arrives from outside: any code point Python can hold in a str
# read with surrogateescape, control characters included.
outside_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=60)


def one_line(err: Exception) -> None:
    assert str(err) and "\n" not in str(err), repr(err)


@given(outside_text)
def test_path_specs_are_accepted_or_explained(text: str) -> None:
    try:
        spec = parse_path(text)
    except SocketError as err:
        one_line(err)
    else:
        assert spec.path and len(os.fsencode(spec.path)) <= 107
        assert ";" not in spec.path and "=" not in spec.path


@given(outside_text)
def test_option_values_are_accepted_or_explained(text: str) -> None:
    for parse_value in (parse_seconds, parse_positive_int, parse_signal, parse_mode):
        try:
            parse_value(text)
        except SettingError as err:
            one_line(err)


listen_values = st.one_of(outside_text, st.integers(-5, 5).map(str))


@given(listen_values, listen_values, st.one_of(st.none(), outside_text))
def test_listen_variables_are_accepted_or_explained(
    listen_pid: str, listen_fds: str, listen_fdnames: str | None
) -> None:
    environ = {"LISTEN_PID": listen_pid, "LISTEN_FDS": listen_fds}
    if listen_fdnames is not None:
        environ["LISTEN_FDNAMES"] = listen_fdnames
    pid = int(listen_pid) if listen_pid.strip().lstrip("-").isdigit() else os.getpid()
    try:
        count = inherited_fd_count(environ, pid)
    except SocketError as err:
        one_line(err)
        return
    assert count is None or count >= 0
    if count is None:
        return
    names = listen_fdnames.split(":") if listen_fdnames else []
    if count == 0 or (listen_fdnames is not None and len(names) != count):
        # Decided before any descriptor is looked at (ours here are pytest's).
        try:
            assert adopt_inherited(environ, pid) == []
        except SocketError as err:
            one_line(err)
            assert "LISTEN_FDNAMES names" in str(err)


@given(st.one_of(st.none(), outside_text))
def test_the_worker_side_reads_its_variable_or_explains(value: str | None) -> None:
    environ = {} if value is None else {"SERVER_STARTER_PORT": value}
    try:
        found = listener.ports(environ)
    except (listener.NotUnderServerStarter, PortVariableError) as err:
        one_line(err)
    else:
        assert all(isinstance(fd, int) and fd >= 0 for fd in found.values())


file_names = st.text(
    st.characters(blacklist_characters="/\0", blacklist_categories=["Cs"]), min_size=1, max_size=30
).filter(lambda name: name not in (".", "..") and len(os.fsencode(name)) < 255)


@given(st.dictionaries(file_names, st.binary(max_size=3000), max_size=6))
def test_envdir_files_of_any_content_and_name(files: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        for name, content in files.items():
            Path(directory, name).write_bytes(content)
        loaded = load_envdir(directory)
    for name, value in loaded.items():
        assert name in files and not name.startswith(".") and "=" not in name
        assert "\n" not in value and "\0" not in value
    for name, content in files.items():
        if not name.startswith(".") and "=" not in name and content:
            assert name in loaded


def test_a_huge_envdir_file_yields_its_first_line(tmp_path: Path) -> None:
    (tmp_path / "BIG").write_bytes(b"first\n" + os.urandom(1 << 20) + b"\n" * 10)
    (tmp_path / "LONG").write_bytes(b"x" * (4 << 20))
    loaded = load_envdir(str(tmp_path))
    assert loaded["BIG"] == "first" and len(loaded["LONG"]) == 4 << 20


# -- notify datagrams -----------------------------------------------------------


@contextlib.contextmanager
def receiver() -> Iterator[tuple[NotifyReceiver, socket.socket]]:
    notifier = NotifyReceiver("property")
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sender.connect(b"\0" + notifier.address[1:].encode())
        yield notifier, sender
    finally:
        sender.close()
        notifier.close()


@given(st.lists(st.binary(max_size=9000), min_size=1, max_size=5))
def test_notify_datagrams_of_any_bytes_and_size(payloads: list[bytes]) -> None:
    with receiver() as (notifier, sender):
        for payload in payloads:
            sender.send(payload)
        messages = notifier.receive()
    assert len(messages) == len(payloads)
    for message, payload in zip(messages, payloads, strict=True):
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in message.items())
        assert message == parse_notify(payload[:4096])  # longer ones are cut, not misread


def test_a_notify_datagram_with_descriptors_attached_leaks_none() -> None:
    before = len(os.listdir("/proc/self/fd"))
    with receiver() as (notifier, sender):
        opened = [os.open(os.devnull, os.O_RDONLY) for _ in range(3)]
        fds = array.array("i", opened)
        sender.sendmsg([b"READY=1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        for fd in opened:
            os.close(fd)
        (message,) = notifier.receive()
        assert message == {"READY": "1"}
        during = len(os.listdir("/proc/self/fd"))
    assert during == before + 2  # the receiver's and the sender's sockets only


@pytest.mark.skipif(os.getuid() != 0, reason="sending as another user needs root")
def test_a_notify_datagram_from_another_user_is_dropped() -> None:
    with receiver() as (notifier, _sender):
        child = os.fork()
        if child == 0:
            try:
                os.setgid(65534)
                os.setuid(65534)
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as other:
                    other.sendto(b"READY=1", b"\0" + notifier.address[1:].encode())
            finally:
                os._exit(0)
        os.waitpid(child, 0)
        assert notifier.receive() == []


# -- control requests -------------------------------------------------------------


@pytest.fixture(scope="module")
def superdaemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, int, Path]]:
    control = tmp_path_factory.mktemp("control") / "control.sock"
    with serving(EXAMPLE_APP, f"--control-socket={control}") as daemon:
        yield daemon, daemon.port, control


COMMANDS = ("reload", "upgrade")


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=st.binary(max_size=2 * MAX_REQUEST), finish=st.booleans())
def test_control_requests_of_any_bytes(
    superdaemon: tuple[Daemon, int, Path], request: bytes, finish: bool
) -> None:
    daemon, port, control = superdaemon
    if request.split(b"\n")[0].strip() in (c.encode() for c in COMMANDS):
        return  # a real request: it would reload
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(str(control))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            client.sendall(request + (b"\n" if finish else b""))
        if finish or len(request) > MAX_REQUEST or b"\n" in request:
            client.shutdown(socket.SHUT_WR)
            answer = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := client.recv(4096):
                    answer += chunk
            assert answer == b"" or (answer.startswith(b"error ") and answer.count(b"\n") == 1)
    assert generation_of(port) == 1
    assert "Traceback" not in daemon.output()


def test_many_control_clients_at_once_and_a_reload_among_them(
    superdaemon: tuple[Daemon, int, Path],
) -> None:
    daemon, port, control = superdaemon
    clients = []
    try:
        for number in range(300):
            client = socket.socket(socket.AF_UNIX)
            client.connect(str(control))
            client.sendall(b"rel" if number % 2 else os.urandom(100).replace(b"\n", b" "))
            clients.append(client)
        # 300 half-written requests wait; a whole one is still answered.
        result = run_start_server("--restart", f"--control-socket={control}")
        assert result.returncode == 0, result.stderr
    finally:
        for client in clients:
            client.close()
    daemon.wait_for(r"^old worker \d+ died")
    assert generation_of(port) == 2
    assert "Traceback" not in daemon.output()
