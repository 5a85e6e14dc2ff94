"""Processes, as ``/proc`` shows them, read in one place: the walk that
finds the holders of a socket (holders.py) and the running superdaemons an
upgrade asks (upgrade.py); parents and children (orphans.py, oom.py); our
own cgroups.  Every read may fail (the process is gone, or another user's):
each says so by returning nothing."""

from __future__ import annotations

import os
from collections.abc import Iterator

CGROUP_ROOT = "/sys/fs/cgroup"  # where the cgroup hierarchies are mounted


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


def parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # The command in parentheses may hold anything: split after its end.
            return int(stat.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def children(pid: int) -> list[int]:
    """The children of every thread of ``pid``."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found = []
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/children") as listed:
                found += [int(child) for child in listed.read().split()]
        except (OSError, ValueError):
            continue
    return found


def own_cgroups() -> list[tuple[str, str, str]]:
    """Our lines of ``/proc/self/cgroup``: (hierarchy, controllers, path);
    hierarchy "0" is cgroup v2's unified one."""
    found = []
    try:
        with open("/proc/self/cgroup") as cgroups:
            for line in cgroups:
                fields = line.rstrip("\n").split(":", 2)
                if len(fields) == 3:
                    found.append((fields[0], fields[1], fields[2]))
    except OSError:
        pass
    return found


def _fields(pid: int, name: str) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as file:
            data = file.read()
    except OSError:
        return []
    return data.rstrip(b"\0").split(b"\0") if data else []
