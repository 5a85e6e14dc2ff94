"""``python3 -m server_starter.upgrade``: the in-place upgrade's command
line (the hand-over itself is handover.py, done by serve.Running).

``--check FORMAT``: the new version's side of the check, run by the running
one before it execs it: import every module of the superdaemon, and say
whether it reads that hand-over format.  ``--all``: ask every running
packaged superdaemon to upgrade (the package's postinst).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

from .. import __version__
from . import procfs
from .cli import COMMANDS, parse_args
from .control import ControlError, control_socket_path, request
from .handover import CHECK_TIMEOUT, READS_FORMATS
from .serve import UsageError

ENTRY_POINTS = ("/usr/bin/server-starter", "/usr/bin/start_server")


def _running_superdaemons() -> list[tuple[int, list[str], dict[str, str]]]:
    """Every process running the packaged superdaemon: pid, argv, environment."""
    found = []
    for pid in procfs.other_processes():
        argv = procfs.argv(pid)
        if len(argv) < 2 or "python3" not in os.path.basename(argv[0]):
            continue
        if argv[1] not in ENTRY_POINTS:
            continue
        if any(a in COMMANDS for a in argv[2:]):
            continue  # a client, not a superdaemon
        found.append((pid, argv[2:], procfs.environ(pid)))
    return found


def _upgrade_all() -> int:
    """Ask every running packaged superdaemon to become the installed version
    (the package's postinst runs this).  Each is asked on its control socket
    when it has one, and waited for; else with SIGUSR2.  Exit 1 if any failed."""
    failed = 0
    for pid, argv, environ in _running_superdaemons():
        try:
            args = parse_args(argv)
            path = control_socket_path(args.control_socket, args.pid_file, environ)
        except UsageError:
            path = None  # a command line this version reads otherwise: signal it instead
        if path and os.path.exists(path):
            try:
                message = request(path, "upgrade", CHECK_TIMEOUT + 10)
            except ControlError as err:
                print(f"start_server (pid {pid}) was not upgraded: {err}", file=sys.stderr)
                failed += 1
                continue
            print(f"start_server (pid {pid}): {message}")
        else:
            os.kill(pid, signal.SIGUSR2)
            print(f"start_server (pid {pid}): asked to upgrade in place (SIGUSR2; see its log)")
    return 1 if failed else 0


def _check(argv: Sequence[str]) -> int:
    """The new version's side of the check: import everything the superdaemon
    runs, and say whether the hand-over format is one it reads."""
    if len(argv) != 2 or argv[0] != "--check" or not argv[1].isdigit():
        print("usage: python3 -m server_starter.upgrade --check FORMAT | --all", file=sys.stderr)
        return 2
    import importlib
    import pkgutil

    from .. import superdaemon

    for module in pkgutil.iter_modules(superdaemon.__path__):
        importlib.import_module(f"{superdaemon.__name__}.{module.name}")
    if int(argv[1]) not in READS_FORMATS:
        print(f"version {__version__} cannot read hand-over format {argv[1]}", file=sys.stderr)
        return 1
    print(__version__)
    return 0


def main(argv: Sequence[str]) -> int:
    """``python3 -m server_starter.upgrade --check FORMAT | --all``."""
    return _upgrade_all() if list(argv) == ["--all"] else _check(argv)
