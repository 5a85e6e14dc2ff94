"""The socket a superdaemon tells systemd its state on (``NOTIFY_SOCKET``),
read by the test in systemd's place."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path


class FakeManager:
    """The receiving end of NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(20)
        self.messages: list[dict[str, str]] = []

    def next(self) -> dict[str, str]:
        payload = self.sock.recv(4096).decode()
        fields = dict(line.split("=", 1) for line in payload.split("\n") if "=" in line)
        self.messages.append(fields)
        return fields

    def keep_reading(self) -> None:
        """Read every message as it comes, in the background, as PID 1 does
        (an unread datagram queue fills after a few messages)."""

        def read() -> None:
            with contextlib.suppress(OSError):
                while True:
                    self.next()

        threading.Thread(target=read, daemon=True).start()

    def until(self, key: str) -> dict[str, str]:
        while True:
            fields = self.next()
            if key in fields:
                return fields
