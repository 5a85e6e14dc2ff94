"""The workers' environment, made by the superdaemon: its own variables left
out, the envdir's layered on, the contract's set (see contract.py)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..contract import GENERATION_VARIABLE, PORT_VARIABLE

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


def read_envdir(path: str | None) -> dict[str, str] | None:
    """The envdir's variables: none without an envdir, None if its directory
    is missing (the caller says so; Perl starts without them)."""
    if path is None:
        return {}
    return load_envdir(path) if os.path.isdir(path) else None


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
