"""Other processes, as ``/proc`` shows them: the one walk that finds the
holders of a socket (holders.py) and the running superdaemons an upgrade
asks (upgrade.py).  Every read may fail (the process is gone, or another
user's): each says so by returning nothing."""

from __future__ import annotations

import os
from collections.abc import Iterator


def other_processes() -> Iterator[int]:
    """Every pid but ours, lowest first."""
    own = os.getpid()
    for pid in sorted(int(entry) for entry in os.listdir("/proc") if entry.isdigit()):
        if pid != own:
            yield pid


def argv(pid: int) -> list[str]:
    return [os.fsdecode(word) for word in _fields(pid, "cmdline")]


def environ(pid: int) -> dict[str, str]:
    pairs = (os.fsdecode(field).partition("=") for field in _fields(pid, "environ"))
    return {name: value for name, sep, value in pairs if sep}


def descriptor_targets(pid: int) -> set[str]:
    """What each open descriptor points to (``socket:[INODE]``, a path, ...)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return set()
    targets = set()
    for fd in fds:
        try:
            targets.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return targets


def _fields(pid: int, name: str) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as file:
            data = file.read()
    except OSError:
        return []
    return data.rstrip(b"\0").split(b"\0") if data else []
