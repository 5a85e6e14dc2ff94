"""The environment contract between the superdaemon and its workers.

``SERVER_STARTER_PORT`` is ``KEY=FD`` entries joined by ``;`` (Perl writes it
that way and every worker library reads it so); ``SERVER_STARTER_GENERATION``
counts spawn attempts from 1.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

PORT_VARIABLE = "SERVER_STARTER_PORT"
GENERATION_VARIABLE = "SERVER_STARTER_GENERATION"

# Variables Perl's start_server exports to workers when they are set.
PERL_EXPORTED = ("ENVDIR", "ENABLE_AUTO_RESTART", "AUTO_RESTART_INTERVAL", "KILL_OLD_DELAY")

# The descriptor of the state an in-place upgrade hands to the new image.
RESUME_VARIABLE = "SERVER_STARTER_RESUME_FD"

# Addressed to the superdaemon itself; a worker must never see ours.
SUPERDAEMON_ONLY = (
    RESUME_VARIABLE,
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
)


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


def load_envdir(path: str | None) -> dict[str, str]:
    """Read a daemontools-style envdir as Perl's start_server does: one variable
    per file, named by the file, valued by its first line; dot-files skipped;
    a missing directory yields nothing."""
    if not path or not os.path.isdir(path):
        return {}
    loaded: dict[str, str] = {}
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return {}
    for name in names:
        if name.startswith(".") or "=" in name:
            continue
        try:
            with open(os.path.join(path, name), encoding="utf-8", errors="surrogateescape") as f:
                first = f.readline()
        except OSError:
            continue
        if first == "":
            continue  # Perl: an empty file yields undef, and the variable is left alone
        loaded[name] = first.rstrip("\n").replace("\0", "")
    return loaded


def worker_environment(
    base: Mapping[str, str],
    envdir_values: Mapping[str, str],
    ports: str,
    generation: int,
    fd_names: str | None,
) -> dict[str, str]:
    """The environment of one worker but ``NOTIFY_SOCKET``, which names its
    generation's own notify socket and is set when that socket is made.

    ``base`` is the superdaemon's environment as it started (including the
    Perl variables set from options); envdir values are layered on top afresh
    for every spawn, so a file deleted from the envdir drops its variable.
    """
    env = {k: v for k, v in base.items() if k not in SUPERDAEMON_ONLY}
    env.update(envdir_values)
    env[PORT_VARIABLE] = ports
    env[GENERATION_VARIABLE] = str(generation)
    if fd_names is not None:
        env["LISTEN_FDNAMES"] = fd_names
    return env
