"""The receiving end of sd_notify (the protocol is in contract.py): each
generation's own ``NOTIFY_SOCKET``, on which the superdaemon hears its
``READY=1``, so a worker's message never reaches PID 1."""

from __future__ import annotations

import os
import socket
import struct

from ..contract import notify_address, parse_notify

UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_MAX_DATAGRAM = 4096


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
        self.sock.bind(notify_address(self.address))

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self) -> list[dict[str, str]]:
        """Drain every queued datagram, parsed; drop those from other users."""
        messages: list[dict[str, str]] = []
        own_uid = os.getuid()
        while True:
            try:
                payload, ancillary, _flags, _addr = self.sock.recvmsg(
                    _MAX_DATAGRAM, socket.CMSG_SPACE(UCRED.size)
                )
            except BlockingIOError:
                return messages
            uid = -1
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    _pid, uid, _gid = UCRED.unpack(data[: UCRED.size])
            if uid in (own_uid, 0):
                messages.append(parse_notify(payload))

    def close(self) -> None:
        self.sock.close()
