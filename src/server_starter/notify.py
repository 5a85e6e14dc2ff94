"""The sd_notify protocol, both ways.

One small implementation serves the superdaemon talking to systemd and each
worker talking to the superdaemon: a datagram of ``KEY=VALUE`` lines sent to
the unix socket named by ``NOTIFY_SOCKET`` (``@`` means the abstract
namespace).  The superdaemon receives each generation's messages on a socket
of its own, so a worker's ``READY=1`` never reaches PID 1.
"""

from __future__ import annotations

import os
import socket
import struct

UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_MAX_DATAGRAM = 4096


def _address(path: str) -> str | bytes:
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    return path


def send(message: str, socket_path: str | None = None, timeout: float | None = None) -> bool:
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
        sock.sendto(message.encode(), _address(path))
    return True


class Message:
    __slots__ = ("fields", "sender_pid", "sender_uid")

    def __init__(self, sender_pid: int, sender_uid: int, fields: dict[str, str]) -> None:
        self.sender_pid = sender_pid
        self.sender_uid = sender_uid
        self.fields = fields


def parse(payload: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in payload.decode(errors="replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep and key:
            fields[key] = value
    return fields


class NotifyReceiver:
    """A generation's private ``NOTIFY_SOCKET``: an abstract datagram socket with
    a random name, accepting messages only from our own user or root."""

    def __init__(self, label: str, adopt: tuple[int, str] | None = None) -> None:
        """A new socket, or (``adopt``: descriptor and address) one handed over
        by the superdaemon's previous image."""
        if adopt is not None:
            fd, self.address = adopt
            self.sock = socket.socket(fileno=fd)
            self.sock.set_inheritable(False)
            return
        self.address = f"@server-starter/{os.getpid()}/{os.urandom(8).hex()}/{label}"
        self.sock = socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        )
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(_address(self.address))

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self) -> list[Message]:
        """Drain every queued datagram; drop those from other users."""
        messages: list[Message] = []
        own_uid = os.getuid()
        while True:
            try:
                payload, ancillary, _flags, _addr = self.sock.recvmsg(
                    _MAX_DATAGRAM, socket.CMSG_SPACE(UCRED.size)
                )
            except BlockingIOError:
                return messages
            pid = uid = -1
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid, uid, _gid = UCRED.unpack(data[: UCRED.size])
            if uid in (own_uid, 0):
                messages.append(Message(pid, uid, parse(payload)))

    def close(self) -> None:
        self.sock.close()
