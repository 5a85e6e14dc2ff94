"""How other processes observe and steer a running superdaemon: the pid file,
the status file, and the control socket behind ``--restart`` and
``--upgrade``, both its sides.

The control socket speaks one line each way: the client sends ``reload``
(or ``upgrade``); the superdaemon answers ``ok MESSAGE`` once the new
generation is ready and the old ones have been signalled (or the new
version runs), or ``error MESSAGE`` when it failed.  ``status`` is answered
at once, with the status as one line of JSON.  One request per
connection, at most ``MAX_REQUEST`` bytes.  Only our own user and root may
use it (peer credentials, and a 0600 socket file).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import socket
import stat
import time
from collections.abc import Callable, Iterable, Mapping

from .events import HostEvent, Requested
from .notify import UCRED
from .reloads import Answer
from .sockets import socket_is_live

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, TypedDict

    class ConnectionState(TypedDict):
        """A control client waiting, handed over: its socket and what it sent."""

        fd: int
        buffer: str

    class OpenFile(TypedDict):
        """The pid file or the control socket, handed over."""

        path: str
        fd: int


MAX_REQUEST = 256


class ControlError(Exception):
    """A control request that could not be made or failed; one line for the operator."""


def control_socket_path(
    explicit: str | None, pid_file: str | None, environ: Mapping[str, str]
) -> str | None:
    """Where the control socket lives: --control-socket, else the unit's
    RuntimeDirectory=, else beside the pid file; None when none is known."""
    if explicit:
        return explicit
    runtime = environ.get("RUNTIME_DIRECTORY")
    if runtime:
        # RuntimeDirectory= may list several directories, separated by ':'.
        return os.path.join(runtime.split(":")[0], "start_server.sock")
    if pid_file:
        return pid_file + ".sock"
    return None


# -- pid file ---------------------------------------------------------------


class PidFile:
    """Perl's pid file: our pid, held under an exclusive flock for our lifetime
    (``--stop`` waits on that lock)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def create(self) -> None:
        try:
            # Not truncated before the lock is ours: a second start_server that
            # is refused must leave the running one's pid in place.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            handle = open(fd, "w", encoding="ascii")  # noqa: SIM115 - held for our lifetime
        except OSError as err:
            raise ControlError(f"failed to open file:{self.path}: {err.strerror}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            handle.truncate(0)
            handle.write(f"{os.getpid()}\n")
            handle.flush()
        except OSError as err:
            handle.close()
            if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise ControlError(f"{self.path} is locked: another start_server runs") from None
            raise ControlError(f"failed to write {self.path}: {err.strerror}") from None
        self._file = handle

    def handover(self, keep: Callable[[int], int]) -> OpenFile:
        """Its part of an in-place upgrade's state; ``keep`` registers the
        descriptor (handover.Descriptors)."""
        return {"path": self.path, "fd": keep(self.fileno())}

    @classmethod
    def adopt(cls, state: OpenFile) -> PidFile:
        """The pid file a previous image of this process created (its lock
        belongs to the open file, so it held across exec; the pid is ours)."""
        pid_file = cls(state["path"])
        fd = state["fd"]
        os.set_inheritable(fd, False)
        pid_file._file = open(fd, "w", encoding="ascii")  # noqa: SIM115 - held for our lifetime
        return pid_file

    def fileno(self) -> int:
        assert self._file is not None
        return self._file.fileno()

    def remove(self) -> None:
        if self._file is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self._file.close()
        self._file = None


def read_pid(path: str) -> int:
    try:
        with open(path, encoding="ascii") as f:
            text = f.readline().strip()
    except OSError as err:
        raise ControlError(f"failed to open file:{path}: {err.strerror}") from None
    if not text.isdigit():
        raise ControlError(f"{path} does not hold a process id")
    return int(text)


def no_superdaemon_for(pid_file: str, control_path: str) -> str:
    """Why no start_server answers at ``control_path``, the socket beside
    ``pid_file``: said of the file the user named, not of the socket."""
    if not os.path.exists(pid_file):
        return f"no start_server runs with --pid-file {pid_file} (the file does not exist)"
    try:
        pid = read_pid(pid_file)
    except ControlError:
        return f"{pid_file} names no start_server (not a pid file of one)"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"start_server (pid {pid}) of {pid_file} is not running: a stale pid file"
    except PermissionError:
        pass  # alive, another user's
    return f"start_server (pid {pid}) of {pid_file} has no control socket {control_path}"


# -- status file --------------------------------------------------------------


def write_status_file(path: str, workers: Iterable[tuple[int, int]]) -> None:
    """``GEN:PID`` lines sorted by generation."""
    replace_file(path, "".join(f"{gen}:{pid}\n" for gen, pid in sorted(workers)))


def replace_file(path: str, text: str, mode: int | None = None) -> None:
    """Write ``text`` to a temporary file and rename it into place, so readers
    never see half a file; ``mode``: its permissions, whatever the umask."""
    temporary = f"{path}.{os.getpid()}"
    try:
        with open(temporary, "w", encoding="utf-8") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            f.write(text)
        os.rename(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


# -- control socket -----------------------------------------------------------


def peer_uid(conn: socket.socket) -> int:
    data = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size)
    return int(UCRED.unpack(data)[1])


def listen_control(path: str) -> socket.socket:
    """Bind the control socket with mode 0600."""
    with contextlib.suppress(FileNotFoundError):
        if not _is_socket(path):
            raise ControlError(f"control socket path {path} exists and is not a socket")
        if socket_is_live(path):
            raise ControlError(f"control socket {path} is in use by another start_server")
        os.unlink(path)
    sock = socket.socket(
        socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
    )
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
        sock.listen(16)
    except OSError as err:
        sock.close()
        raise ControlError(f"failed to create control socket {path}: {err.strerror}") from None
    finally:
        os.umask(old_umask)
    return sock


def _open_spare() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


class ControlServer:
    """The superdaemon's side: accepts clients, reads each one's request line
    and hands it to the supervisor with the client, which it answers once."""

    def __init__(self, sock: socket.socket, path: str) -> None:
        self.sock, self.path = sock, path
        self.connections: list[_Connection] = []
        # Out of descriptors, accept() fails and the client stays queued: the
        # loop would wake for it forever.  This spare one, closed for the
        # moment, lets us accept it and tell it why.
        self._spare: int | None = _open_spare()
        self._register: Callable[[socket.socket, Callable[[], Iterable[HostEvent]]], None]
        self._unregister: Callable[[socket.socket], None]

    def attach(
        self,
        register: Callable[[socket.socket, Callable[[], Iterable[HostEvent]]], None],
        unregister: Callable[[socket.socket], None],
    ) -> None:
        """Be called from the event loop's ``select``."""
        self._register, self._unregister = register, unregister
        register(self.sock, self._accept)

    def _accept(self) -> list[HostEvent]:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return []
        except OSError as err:
            if err.errno not in (errno.EMFILE, errno.ENFILE) or self._spare is None:
                raise
            os.close(self._spare)
            with contextlib.suppress(OSError), self.sock.accept()[0] as refused:
                refused.sendall(b"error start_server is out of file descriptors (LimitNOFILE=)\n")
            self._spare = _open_spare()
            return []
        conn.setblocking(False)
        if peer_uid(conn) not in (0, os.getuid()):
            with contextlib.suppress(OSError):
                conn.sendall(b"error permission denied\n")
            conn.close()
            return []
        self.connections = [c for c in self.connections if not c.done]
        self.connections.append(_Connection(conn, self._register, self._unregister))
        return []

    def close(self) -> None:
        self.sock.close()
        if self._spare is not None:
            os.close(self._spare)

    # -- the hand-over of an in-place upgrade (see handover.py) -------------

    def handover(self, keep: Callable[[int], int]) -> OpenFile:
        """The listening socket's part of the state; ``keep`` registers the
        descriptor (handover.Descriptors)."""
        return {"path": self.path, "fd": keep(self.sock.fileno())}

    @classmethod
    def adopt(cls, state: OpenFile) -> ControlServer:
        """The control socket the previous image of this process listened on
        (close-on-exec again, as it was)."""
        sock = socket.socket(fileno=state["fd"])
        sock.set_inheritable(False)
        sock.setblocking(False)
        return cls(sock, state["path"])

    def waiting(self) -> list[_Connection]:
        """The clients not answered yet (waiting for a reload's outcome, most
        often), in the order a hand-over lists them."""
        self.connections = [c for c in self.connections if not c.done]
        return list(self.connections)

    def adopt_connections(self, states: list[ConnectionState]) -> list[_Connection]:
        """Take back the clients handed over, in the same order (after attach)."""
        adopted = [_Connection.adopt(s, self._register, self._unregister) for s in states]
        self.connections += adopted
        return adopted


class _Connection(Answer):
    """One client: its request line, then the answer (``waits_for``: what the
    supervisor has it wait for meanwhile)."""

    __slots__ = ("buffer", "conn", "done", "unregister")

    def __init__(
        self,
        conn: socket.socket,
        register: Callable[[socket.socket, Callable[[], Iterable[HostEvent]]], None],
        unregister: Callable[[socket.socket], None],
    ) -> None:
        super().__init__()
        self.conn = conn
        self.buffer = b""
        self.done = False  # answered, or the client went away
        self.unregister = unregister
        register(conn, self._readable)

    def _readable(self) -> list[HostEvent]:
        try:
            chunk = self.conn.recv(MAX_REQUEST)
        except BlockingIOError:
            return []
        except OSError:
            chunk = b""
        if not chunk:  # the client gave up
            self._close()
            return []
        if b"\n" in self.buffer:
            return []  # one request per connection; anything after it is ignored
        self.buffer += chunk
        line, newline, _ = self.buffer.partition(b"\n")
        if not newline:
            if len(self.buffer) > MAX_REQUEST:
                self.answer(False, "request too long")
            return []
        self.buffer = line + b"\n"
        return [Requested(line.decode(errors="replace").strip(), self)]

    def __call__(self, ok: bool, message: str) -> None:
        self.answer(ok, message)

    def handover(self, keep: Callable[[int], int]) -> ConnectionState:
        """Its part of an in-place upgrade's state (what it waits for is the
        supervisor's part)."""
        return {"fd": keep(self.conn.fileno()), "buffer": self.buffer.decode(errors="replace")}

    @classmethod
    def adopt(
        cls,
        state: ConnectionState,
        register: Callable[[socket.socket, Callable[[], Iterable[HostEvent]]], None],
        unregister: Callable[[socket.socket], None],
    ) -> _Connection:
        conn = socket.socket(fileno=state["fd"])
        conn.set_inheritable(False)
        conn.setblocking(False)
        connection = cls(conn, register, unregister)
        connection.buffer = state["buffer"].encode()
        return connection

    def answer(self, ok: bool, message: str) -> None:
        if self.done:
            return
        line = ("ok " if ok else "error ") + message.replace("\n", " ") + "\n"
        with contextlib.suppress(OSError):
            self.conn.sendall(line.encode())
        self._close()

    def _close(self) -> None:
        self.done = True
        self.unregister(self.conn)
        self.conn.close()


def _is_socket(path: str) -> bool:
    return stat.S_ISSOCK(os.lstat(path).st_mode)


def request(path: str, command: str, timeout: float) -> str:
    """Send one request and return the ``ok`` message; raise ControlError with
    the superdaemon's reason, or on timeout."""
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as err:
            raise ControlError(
                f"cannot reach start_server at {path}: {err.strerror or err}"
            ) from None
        reply = exchange(sock, command, deadline, timeout)
    finally:
        sock.close()
    status, _, message = reply.decode(errors="replace").strip().partition(" ")
    if status == "ok":
        return message
    raise ControlError(message or "start_server refused the request")


def exchange(sock: socket.socket, command: str, deadline: float, timeout: float) -> bytes:
    """Write the request line and read the answer line on a connected socket."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        # A superdaemon that refuses a peer answers and closes at once, maybe
        # before the request is written: its answer is still there to read.
        sock.sendall(command.encode() + b"\n")
    reply = b""
    while not reply.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ControlError(f"no answer from start_server within {timeout:g} s")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            raise ControlError(f"no answer from start_server within {timeout:g} s") from None
        except OSError as err:
            raise ControlError(f"lost the control connection: {err.strerror or err}") from None
        if not chunk:
            raise ControlError("start_server closed the control connection without answering")
        reply += chunk
    return reply


def stop(pid_file: str, timeout: float) -> int:
    """Perl's ``--stop``: SIGTERM the superdaemon named by the pid file and wait
    (bounded) until it has exited.  Returns its pid."""
    pid = read_pid(pid_file)
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise ControlError(
            f"no process {pid} (from {pid_file}): is start_server running?"
        ) from None
    try:
        os.kill(pid, signal.SIGTERM)
        ready, _, _ = select.select([pidfd], [], [], timeout)
        if not ready:
            raise ControlError(f"start_server (pid:{pid}) still running after {timeout:g} s")
    finally:
        os.close(pidfd)
    return pid
