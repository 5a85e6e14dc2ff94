"""The contract between the superdaemon and its workers, in one place: what
both sides write and read, and nothing else.  Both sides import it; it
imports neither.

- ``SERVER_STARTER_PORT``: ``KEY=FD`` entries joined by ``;`` (Perl writes it
  that way and every worker library reads it so); the descriptors are
  inherited, numbered as the entries say.
- ``SERVER_STARTER_GENERATION``: the generation, counted from 1.
- ``NOTIFY_SOCKET``: the sd_notify protocol, a datagram of ``KEY=VALUE``
  lines to that unix socket (``@``: the abstract namespace); each
  generation has its own, owned by the superdaemon, so a worker's
  ``READY=1`` never reaches PID 1.  The superdaemon speaks the same protocol
  to systemd.
- ``LISTEN_FDS`` descriptors start at 3 (sd_listen_fds(3)).

A rolling reload (``--max-surge=K``), for a generation of several worker
processes under one main process (gunicorn's arbiter, the example app's
parent), which takes part by three things:

- it reports its workers, from its main process, in a notify datagram
  whenever one of the counts changes, from its start (its ``READY=1`` may
  come in the same datagram):
  ``X_SERVER_STARTER_WORKERS=READY/TARGET/FULL``: workers booted and not
  exited (one that drains counts until it exits), the number it keeps
  running now, and the number it runs when whole (gunicorn's ``-w``);
- it answers SIGTTIN with one more worker and SIGTTOU with one fewer (the
  oldest, stopped gracefully: it finishes its requests), never fewer than
  one, as gunicorn's and unicorn's masters do;
- when ``SERVER_STARTER_START_WORKERS=K`` is set, it starts K workers
  instead of FULL (its ``READY=1`` then means K are ready) and is grown to
  FULL by SIGTTIN.

The superdaemon sets that variable only for a reload whose serving
generation reports its workers; a program that reports none gets the
whole generation's overlap.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterable, Mapping

PORT_VARIABLE = "SERVER_STARTER_PORT"
GENERATION_VARIABLE = "SERVER_STARTER_GENERATION"
SD_LISTEN_FDS_START = 3
WORKERS_FIELD = "X_SERVER_STARTER_WORKERS"
START_WORKERS_VARIABLE = "SERVER_STARTER_START_WORKERS"


class PortVariableError(ValueError):
    """A malformed SERVER_STARTER_PORT."""


def encode_ports(entries: Iterable[tuple[str, int]]) -> str:
    """``[("8080", 3), ("/tmp/s", 4)]`` -> ``"8080=3;/tmp/s=4"``."""
    parts = []
    for key, fd in entries:
        if not key or ";" in key or "=" in key:
            raise PortVariableError(f"socket key {key!r} cannot be written to {PORT_VARIABLE}")
        if fd < 0:
            raise PortVariableError(f"descriptor {fd} for {key!r} is negative")
        parts.append(f"{key}={fd}")
    return ";".join(parts)


def decode_ports(value: str) -> dict[str, int]:
    """Parse ``SERVER_STARTER_PORT`` into an ordered ``{key: fd}`` mapping.

    Splits on ``;`` and then on the last ``=`` (descriptor numbers never hold
    one; Perl splits on the first, which agrees for every key it can write).
    """
    ports: dict[str, int] = {}
    if value == "":
        return ports
    for entry in value.split(";"):
        key, sep, fd_text = entry.rpartition("=")
        if not sep or not key:
            raise PortVariableError(f"malformed {PORT_VARIABLE} entry {entry!r}: expected KEY=FD")
        if not fd_text.isdigit():
            raise PortVariableError(
                f"malformed {PORT_VARIABLE} entry {entry!r}: {fd_text!r} is not a descriptor"
            )
        if key in ports:
            raise PortVariableError(f"malformed {PORT_VARIABLE}: {key!r} appears twice")
        ports[key] = int(fd_text)
    return ports


class NotUnderServerStarter(RuntimeError):
    """``SERVER_STARTER_PORT`` is not set: the process was not started by a
    start_server superdaemon."""


def ports(environ: Mapping[str, str] | None = None) -> dict[str, int]:
    """The inherited sockets as an ordered ``{key: fd}`` mapping, e.g.
    ``{"8080": 3, "127.0.0.1:8081": 4, "/run/app.sock": 5}``.

    Raises NotUnderServerStarter without a superdaemon, and ValueError
    (PortVariableError) when the variable is malformed."""
    env = os.environ if environ is None else environ
    value = env.get(PORT_VARIABLE)
    if value is None:
        raise NotUnderServerStarter(
            f"no environment variable {PORT_VARIABLE}: start this program under start_server, "
            "e.g. start_server --port 8080 -- PROGRAM"
        )
    return decode_ports(value)


def listen_all(environ: Mapping[str, str] | None = None) -> list[socket.socket]:
    """One socket object per inherited descriptor, in ``SERVER_STARTER_PORT``
    order: TCP (IPv4 and IPv6) and unix listeners, and UDP sockets, with their
    family and type read from the descriptor itself."""
    sockets = []
    for key, fd in ports(environ).items():
        try:
            sock = socket.socket(fileno=fd)
        except OSError as err:
            raise PortVariableError(
                f"{PORT_VARIABLE} names descriptor {fd} for {key!r}, but it is not an open "
                f"socket: {err.strerror or err}"
            ) from None
        sockets.append(sock)
    return sockets


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as err:
        if err.errno == errno.EBADF:
            return False
        raise
    return True


# -- sd_notify ------------------------------------------------------------------


def notify_address(path: str) -> str | bytes:
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    return path


def notify(message: str, socket_path: str | None = None, timeout: float | None = None) -> bool:
    """Send ``message`` to ``socket_path`` (default ``$NOTIFY_SOCKET``).

    Returns False when there is nobody to tell (no ``NOTIFY_SOCKET``), as
    sd_notify does; raises OSError when the socket is named but unreachable,
    and TimeoutError when its queue stays full for ``timeout`` seconds (a
    datagram socket's queue is short: a receiver that stalls blocks senders).
    """
    path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        sock.sendto(message.encode(), notify_address(path))
    return True


def parse_notify(payload: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in payload.decode(errors="replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep and key:
            fields[key] = value
    return fields


class WorkerCount:
    """A generation's ``X_SERVER_STARTER_WORKERS``: ready, target, full."""

    __slots__ = ("full", "ready", "target")

    def __init__(self, ready: int, target: int, full: int) -> None:
        self.ready, self.target, self.full = ready, target, full

    def __str__(self) -> str:
        return f"{self.ready}/{self.target}/{self.full}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WorkerCount) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    @classmethod
    def parse(cls, value: str) -> WorkerCount | None:
        """The field's value; None if it is not three counts (full at least one)."""
        parts = value.split("/")
        if len(parts) != 3 or not all(part.isdigit() for part in parts):
            return None
        ready, target, full = (int(part) for part in parts)
        return cls(ready, target, full) if full >= 1 else None


def start_workers(full: int, environ: Mapping[str, str] | None = None) -> int:
    """How many workers a generation whose whole is ``full`` starts with:
    ``SERVER_STARTER_START_WORKERS`` during a rolling reload, else ``full``."""
    env = os.environ if environ is None else environ
    text = env.get(START_WORKERS_VARIABLE, "")
    if not text.isdigit() or int(text) < 1:
        return full
    return min(int(text), full)
