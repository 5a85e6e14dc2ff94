"""Listening sockets: the ``--port``/``--path`` grammar, binding, and adoption
of sockets passed by systemd (``LISTEN_FDS``).

Every socket ends up as a :class:`Listener`: its ``SERVER_STARTER_PORT`` key
(what the user typed, or what systemd's socket is bound to) and its
descriptor number, which stays fixed for the superdaemon's lifetime so every
generation sees the same numbers.
"""

from __future__ import annotations

import errno
import os
import re
import resource
import socket
import stat
from collections.abc import Callable, Mapping, Sequence

from ..contract import SD_LISTEN_FDS_START
from . import holders

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs the resident superdaemon ~2 MB; annotations need no import
    from typing import TypedDict

    class ListenerState(TypedDict):
        """A listener handed over in an in-place upgrade (see handover.py)."""

        key: str
        fd: int
        name: str | None
        created_path: str | None


UNIX_PATH_MAX = 107  # sizeof(sun_path) - 1 for the terminating NUL

# Perl Server::Starter 0.35's two port patterns, kept character for character
# so that every spec Perl accepts means the same thing here.
_BARE_PORT = re.compile(r"^\s*(u?)(\d+)(?:\s*=(\d+))?\s*$")
_HOST_PORT = re.compile(r"^\s*(?:\[\s*|)([^\]]*)\s*(?:\]\s*|):\s*(u?)(\d+)(?:\s*=(\d+))?\s*$")


class SocketError(Exception):
    """A socket spec or an inherited socket that cannot be used; the message is for the
    operator, one line."""


class PortSpec:
    """One parsed ``--port`` value."""

    # Plain classes rather than dataclasses here and elsewhere: dataclasses
    # imports inspect, which costs the long-running superdaemon ~3 MB of RSS.
    __slots__ = ("fd", "host", "key", "port", "udp")

    def __init__(self, key: str, host: str | None, port: int, udp: bool, fd: int | None) -> None:
        self.key = key  # the SERVER_STARTER_PORT key: as typed, normalised as Perl does
        self.host = host  # None: the IPv4 wildcard
        self.port = port
        self.udp = udp
        self.fd = fd  # pinned descriptor number (``=FD``)

    def _fields(self) -> tuple[str, str | None, int, bool, int | None]:
        return (self.key, self.host, self.port, self.udp, self.fd)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PortSpec) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return "PortSpec" + repr(self._fields())

    @property
    def ipv6(self) -> bool:
        return self.host is not None and ":" in self.host


class PathSpec:
    """One ``--path`` value: a unix stream socket."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    @property
    def key(self) -> str:
        return self.path


class Listener:
    """A listening socket the superdaemon holds for its workers."""

    __slots__ = ("created_path", "key", "name", "sock")

    def __init__(
        self,
        key: str,
        sock: socket.socket,
        name: str | None = None,
        created_path: str | None = None,
    ) -> None:
        self.key = key
        self.sock = sock
        self.name = name  # systemd's FileDescriptorName=
        self.created_path = created_path  # a unix socket path we bound: removed at exit

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    def handover(self, keep: Callable[[int], int]) -> ListenerState:
        """Its part of an in-place upgrade's state; ``keep`` registers the
        descriptor (handover.Descriptors)."""
        return {
            "key": self.key,
            "fd": keep(self.fd),
            "name": self.name,
            "created_path": self.created_path,
        }

    @classmethod
    def adopt(cls, state: ListenerState) -> Listener:
        """The listener the previous image of this process held (inheritable
        still: the workers get it)."""
        sock = socket.socket(fileno=state["fd"])
        sock.set_inheritable(True)
        return cls(state["key"], sock, name=state["name"], created_path=state["created_path"])


def parse_port(value: str) -> PortSpec:
    """Parse one ``--port`` value with Perl start_server's grammar."""
    if value.count("[") != value.count("]") or value.count("[") > 1:
        # Perl's pattern reads "[::1:80" as host "::1", port 80: reject instead.
        raise SocketError(f"invalid --port value {value!r}: unbalanced brackets")
    if "://" in value:
        # An easy slip when copying an address from a browser or a proxy's config.
        raise SocketError(
            f"invalid --port value {value!r}: --port takes PORT or HOST:PORT, not a URL"
        )
    match = _BARE_PORT.match(value)
    if match:
        udp, port_text, fd_text = match.groups()
        key, host = port_text, None
    else:
        match = _HOST_PORT.match(value)
        if not match:
            raise SocketError(
                f"invalid --port value {value!r}: expected PORT, HOST:PORT or [IPV6]:PORT, "
                "optionally followed by =FD (a 'u' before PORT means UDP)"
            )
        host, udp, port_text, fd_text = match.groups()
        host = host.strip()
        if not host:
            raise SocketError(f"invalid --port value {value!r}: empty host")
        key = f"[{host}]:{port_text}" if ":" in host else f"{host}:{port_text}"
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise SocketError(f"invalid --port value {value!r}: port must be 1 to 65535")
    fd = None if fd_text is None else int(fd_text)
    if fd is not None:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if fd in (1, 2):
            # Perl would dup2 the socket over its own log; nobody means that.
            raise SocketError(
                f"invalid --port value {value!r}: descriptor {fd} is "
                f"{'stdout' if fd == 1 else 'stderr'}, where start_server logs; pin to 0 "
                f"(stdin, as FastCGI servers expect) or from {SD_LISTEN_FDS_START} to {limit - 1}"
            )
        if fd >= limit:
            raise SocketError(
                f"invalid --port value {value!r}: descriptor {fd} is above the limit of open "
                f"files ({limit - 1})"
            )
    _check_key(key, value)
    return PortSpec(key=key, host=host, port=port, udp=bool(udp), fd=fd)


def parse_path(value: str) -> PathSpec:
    """Validate one ``--path`` value."""
    if not value:
        raise SocketError("invalid --path value '': empty path")
    if len(os.fsencode(value)) > UNIX_PATH_MAX:
        raise SocketError(
            f"invalid --path value {value!r}: longer than {UNIX_PATH_MAX} bytes, "
            "the limit of a unix socket address"
        )
    _check_key(value, value)
    return PathSpec(value)


def _check_key(key: str, value: str) -> None:
    # Workers split SERVER_STARTER_PORT on ';' and '=': a key holding either
    # would be read back wrongly by every worker library.
    if ";" in key or "=" in key:
        raise SocketError(f"invalid value {value!r}: ';' and '=' cannot appear in a socket key")


def check_unique(specs: Sequence[PortSpec | PathSpec]) -> None:
    seen_keys: set[str] = set()
    seen_fds: set[int] = set()
    for spec in specs:
        if spec.key in seen_keys:
            raise SocketError(f"socket {spec.key!r} is given twice")
        seen_keys.add(spec.key)
        if isinstance(spec, PortSpec) and spec.fd is not None:
            if spec.fd in seen_fds:
                raise SocketError(f"descriptor {spec.fd} is pinned twice")
            seen_fds.add(spec.fd)


def bind_port(spec: PortSpec, backlog: int) -> Listener:
    if spec.ipv6:
        family = socket.AF_INET6
        address: tuple[str, int] = (spec.host or "::", spec.port)
    else:
        family = socket.AF_INET
        host = spec.host or "0.0.0.0"
        try:
            address = (socket.gethostbyname(host), spec.port)
        except OSError as err:
            raise SocketError(f"failed to resolve host {host!r}: {_reason(err)}") from None
    kind = socket.SOCK_DGRAM if spec.udp else socket.SOCK_STREAM
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        if not spec.udp:
            sock.listen(backlog)
    except OSError as err:
        sock.close()
        message = f"failed to bind to {spec.key}: {_reason(err)}"
        if err.errno == errno.EADDRINUSE:
            lookup = f"ss -{'u' if spec.udp else 't'}lnp 'sport = :{spec.port}'"
            found = holders.of_port(address[0], spec.port, udp=spec.udp)
            message += "; " + holders.describe(found, f"port {spec.port}", lookup)
        raise SocketError(message) from None
    if spec.fd is not None and spec.fd != sock.fileno():
        # As Perl: the pin wins over whatever the descriptor held (stdin for
        # =0, the FastCGI convention; an inherited descriptor otherwise).
        os.dup2(sock.fileno(), spec.fd, inheritable=True)
        sock.close()
        sock = socket.socket(fileno=spec.fd)
    sock.set_inheritable(True)
    return Listener(key=spec.key, sock=sock)


def bind_path(spec: PathSpec, backlog: int, mode: int) -> Listener:
    path = spec.path
    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        existing = None
    except OSError as err:
        raise SocketError(f"cannot use --path {path}: {_reason(err)}") from None
    if existing is not None:
        if not stat.S_ISSOCK(existing.st_mode):
            raise SocketError(f"--path {path} exists and is not a socket; refusing to remove it")
        if socket_is_live(path):
            found = holders.of_path(path)
            raise SocketError(
                f"--path {path}: another process is listening there; "
                + holders.describe(found, path, f"ss -xlp src {path}")
            )
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # bind() creates the file with mode 0777 & ~umask: set the umask so it is
    # born with the mode asked for, never looser even for an instant.
    saved_umask = os.umask(~mode & 0o777)
    try:
        sock.bind(path)
        os.chmod(path, mode)  # a umask cannot add bits such as setgid; chmod can
        sock.listen(backlog)
    except OSError as err:
        sock.close()
        raise SocketError(f"failed to listen to file {path}: {_reason(err)}") from None
    finally:
        os.umask(saved_umask)
    sock.set_inheritable(True)
    return Listener(key=path, sock=sock, created_path=path)


def socket_is_live(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def bind_all(specs: Sequence[PortSpec | PathSpec], backlog: int, path_mode: int) -> list[Listener]:
    """Bind every spec.  Pinned descriptors are placed first so that the
    lowest free numbers the others get can never collide with a pin."""
    check_unique(specs)
    pinned = [s for s in specs if isinstance(s, PortSpec) and s.fd is not None]
    by_spec: dict[str, Listener] = {}
    listeners: list[Listener] = []
    try:
        for spec in [*pinned, *(s for s in specs if s not in pinned)]:
            if isinstance(spec, PortSpec):
                listener = bind_port(spec, backlog)
            else:
                listener = bind_path(spec, backlog, path_mode)
            by_spec[spec.key] = listener
            listeners.append(listener)
    except BaseException:
        close_all(listeners)
        raise
    # SERVER_STARTER_PORT lists ports first, then paths, each in command-line
    # order: the order Perl writes.
    return [by_spec[s.key] for s in specs if isinstance(s, PortSpec)] + [
        by_spec[s.key] for s in specs if isinstance(s, PathSpec)
    ]


def listen_fdnames(listeners: Sequence[Listener]) -> str | None:
    """``LISTEN_FDNAMES`` for the workers: systemd's names of the adopted sockets,
    or None when systemd named none (or we bound the sockets ourselves)."""
    names = [listener.name for listener in listeners]
    if any(name is None for name in names):
        return None
    return ":".join(name for name in names if name is not None)


def close_all(listeners: Sequence[Listener]) -> None:
    for listener in listeners:
        listener.sock.close()
        if listener.created_path is not None:
            remove_socket_path(listener.created_path)


def remove_socket_path(path: str) -> None:
    """Remove a unix socket path we created, if it is still a socket."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass  # already gone, or replaced by something that is not ours


def key_for_address(sock: socket.socket) -> str:
    """The SERVER_STARTER_PORT key of an inherited socket: a wildcard address is
    keyed by its bare port, a specific one by HOST:PORT, a unix socket by path."""
    family = sock.family
    address = sock.getsockname()
    if family == socket.AF_INET:
        host, port = address[0], address[1]
        return str(port) if host == "0.0.0.0" else f"{host}:{port}"
    if family == socket.AF_INET6:
        host, port = address[0], address[1]
        return str(port) if host == "::" else f"[{host}]:{port}"
    if family == socket.AF_UNIX:
        if isinstance(address, bytes):  # abstract namespace
            return "@" + address[1:].decode(errors="replace")
        if not address:
            raise SocketError(f"descriptor {sock.fileno()} is an unbound unix socket")
        return str(address)
    raise SocketError(f"descriptor {sock.fileno()} has unsupported address family {family!r}")


def inherited_fd_count(environ: Mapping[str, str], pid: int) -> int | None:
    """How many descriptors systemd passed us, or None when the variables are
    absent or meant for another process (sd_listen_fds' rule)."""
    listen_pid = environ.get("LISTEN_PID")
    listen_fds = environ.get("LISTEN_FDS")
    if listen_pid is None or listen_fds is None:
        return None
    try:
        if int(listen_pid) != pid:
            return None
    except ValueError:
        raise SocketError(f"LISTEN_PID is not a process id: {listen_pid!r}") from None
    try:
        count = int(listen_fds)
    except ValueError:
        raise SocketError(f"LISTEN_FDS is not a number: {listen_fds!r}") from None
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if count < 0 or count > limit - SD_LISTEN_FDS_START:
        raise SocketError(f"LISTEN_FDS out of range: {listen_fds!r}")
    return count


def adopt_inherited(environ: Mapping[str, str], pid: int) -> list[Listener] | None:
    """Take over the sockets systemd passed (fds 3.. per sd_listen_fds)."""
    count = inherited_fd_count(environ, pid)
    if count is None:
        return None
    names_text = environ.get("LISTEN_FDNAMES")
    names: list[str | None] = [None] * count
    if names_text is not None:
        given = names_text.split(":") if names_text else []
        if len(given) != count:
            raise SocketError(
                f"LISTEN_FDNAMES names {len(given)} sockets but LISTEN_FDS is {count}"
            )
        names = list(given)
    listeners: list[Listener] = []
    for index in range(count):
        fd = SD_LISTEN_FDS_START + index
        try:
            mode = os.fstat(fd).st_mode
        except OSError as err:
            raise SocketError(f"descriptor {fd} from LISTEN_FDS: {_reason(err)}") from None
        if not stat.S_ISSOCK(mode):
            raise SocketError(f"descriptor {fd} from LISTEN_FDS is not a socket")
        sock = socket.socket(fileno=fd)
        if sock.type == socket.SOCK_STREAM and not sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        ):
            raise SocketError(f"descriptor {fd} from LISTEN_FDS is a stream socket not listening")
        sock.set_inheritable(True)
        listeners.append(Listener(key=key_for_address(sock), sock=sock, name=names[index]))
    keys = [listener.key for listener in listeners]
    duplicates = {k for k in keys if keys.count(k) > 1}
    if duplicates:
        raise SocketError(f"inherited sockets share the key(s) {sorted(duplicates)}")
    return listeners


def check_specs_match(listeners: Sequence[Listener], specs: Sequence[PortSpec | PathSpec]) -> None:
    """Under systemd, --port/--path may restate the socket unit; they must agree."""
    if not specs:
        return
    inherited = {listener.key: listener for listener in listeners}
    wanted = {spec.key: spec for spec in specs}
    if set(inherited) != set(wanted):
        raise SocketError(
            "--port/--path do not match the sockets passed by systemd: given "
            f"{', '.join(wanted) or 'none'}; inherited {', '.join(inherited) or 'none'}"
        )
    for key, spec in wanted.items():
        sock = inherited[key].sock
        if isinstance(spec, PathSpec):
            ok = sock.family == socket.AF_UNIX
        else:
            ok = sock.type == (socket.SOCK_DGRAM if spec.udp else socket.SOCK_STREAM)
        if not ok:
            raise SocketError(f"--port/--path {key}: the inherited socket is of another kind")


def _reason(err: OSError) -> str:
    return err.strerror or str(err)
