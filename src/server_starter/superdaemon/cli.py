"""The ``start_server`` command line: Perl start_server 0.35's options, plus
readiness, stop and control options of our own, and which command they ask
for: serve (serve.py), ``--restart``, ``--upgrade`` or ``--stop`` (control.py),
``--drain-orphans`` (orphans.py), ``--version``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from .. import __version__
from ..contract import PortVariableError
from . import orphans
from .control import ControlError, control_socket_path, no_superdaemon_for, request, stop
from .environment import RESUME_VARIABLE
from .serve import StartupError, UsageError, serve
from .settings import Client, Option, Resources, SettingError, Settings, Tunables
from .sockets import SocketError
from .spawn import SpawnError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs the resident superdaemon ~2 MB; annotations need no import
    from typing import NoReturn, TypeVar

    T = TypeVar("T")

PROG = "start_server"
EX_USAGE = 2
EX_FAILURE = 1

DESCRIPTION = """\
A superdaemon for hot-deploying server programs, compatible with Perl's
start_server.  It binds the sockets (or adopts them from a systemd socket
unit), runs the server program with them in SERVER_STARTER_PORT, and on
SIGHUP (or --restart) starts a new generation, waits until it is ready,
then signals the old one so it drains.
"""

EPILOG = """\
Environment: ENVDIR, ENABLE_AUTO_RESTART, AUTO_RESTART_INTERVAL and
KILL_OLD_DELAY stand in for their options when those are not given.
--restart, --upgrade, --status and --stop accept the server's whole
command line and use the options that locate it (--pid-file,
--control-socket) and their own (--restart-timeout, --stop-timeout).
Options are never abbreviated.
"""


# The options that ask for a command instead of running the superdaemon,
# each written once: the parser is built from this, and upgrade.py tells a
# client's command line from a superdaemon's by it.
COMMANDS = {
    "--restart": "ask the running start_server to reload; exit 0 once the new generation is "
    "ready and the old one signalled, 1 with the reason if it failed",
    "--upgrade": "ask the running start_server to become the installed version in place "
    "(same pid, sockets and workers); exit 0 once it runs, 1 with the reason if not",
    "--status": "show the running start_server's generations, its last reload and its "
    "counts (--json: as one JSON object); exit 0 when a generation serves, 3 when none, "
    "1 when start_server cannot be reached",
    "--stop": "send TERM to the start_server named by --pid-file and wait until it exits",
    "--drain-orphans": "for the unit's ExecStopPost=: if the superdaemon died, send its workers "
    "--signal-on-term and wait (up to --stop-timeout) until they exit; then "
    "SIGKILL what is left of the service",
    "--version": "print the version and exit",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _argument(parse: Callable[[str], T]) -> Callable[[str], T]:
    """A settings parser as an argparse type (its message becomes the usage error)."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except SettingError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = parse.__name__.removeprefix("parse_")
    return convert


def build_parser(allow_abbrev: bool = False) -> argparse.ArgumentParser:
    """``allow_abbrev``: only to resume a command line an earlier version
    (which took abbreviations, as Perl's does) accepted."""
    p = _Parser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        usage="%(prog)s [options] -- server-prog [server-args...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=allow_abbrev,  # --status is not --status-file, nor --stat either
    )
    add = p.add_argument
    # The declared options get no default here: None is "not given", and
    # each declaration has its own default.
    for declared in (Resources, Settings, Tunables, Client):
        for name, option in declared.options().items():
            _add_option(p, name, option)
    for flag, meaning in COMMANDS.items():
        add(flag, action="store_true", help=meaning)
    add("--json", action="store_true", help="with --status: print the status as JSON")
    add("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


def _add_option(parser: argparse.ArgumentParser, name: str, option: Option) -> None:
    if option.parse is None:
        parser.add_argument(
            option.flag, dest=name, action="store_true", default=None, help=option.help_text()
        )
        return
    parser.add_argument(
        option.flag,
        dest=name,
        action="append" if option.repeatable else "store",
        type=_argument(option.parse),
        metavar=option.metavar,
        help=option.help_text(),
    )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    args = list(argv)
    command: list[str] | None = None
    if "--" in args:
        split = args.index("--")
        args, command = args[:split], args[split + 1 :]
    # The new image of an in-place upgrade runs its predecessor's command line.
    resuming = RESUME_VARIABLE in os.environ
    namespace = build_parser(allow_abbrev=resuming).parse_args(args)
    if command is not None:
        if namespace.command:
            raise UsageError(f"unexpected argument {namespace.command[0]!r} before '--'")
        namespace.command = command
    return namespace


def run(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if args.version:
        print(__version__)
        return 0
    if args.json and not args.status:
        raise UsageError("--json goes with --status")
    requests = [
        flag for flag in ("--restart", "--upgrade", "--status", "--stop") if _given(args, flag)
    ]
    if len(requests) > 1:
        raise UsageError(f"{' and '.join(requests)} are separate requests: give one")
    located = Resources.from_args(args)
    if args.status:
        timeout = args.restart_timeout if args.restart_timeout is not None else STATUS_TIMEOUT
        return show_status(_control_path("--status", located), args.json, timeout)
    if args.restart or args.upgrade:
        option = "--restart" if args.restart else "--upgrade"
        control_path = _control_path(option, located)
        command = "reload" if args.restart else "upgrade"
        message = request(control_path, command, Client.from_args(args).restart_timeout)
        print(f"start_server: {message}", file=sys.stderr)
        return 0
    # The server's own settings, from its command line (ExecStop=, ExecStopPost=).
    settings = Settings.from_args(args)
    if args.drain_orphans:
        try:
            done = orphans.drain(
                dict(os.environ), os.getpid(), settings.signal_on_term, settings.stop_timeout
            )
        except orphans.OrphansError as err:
            raise UsageError(str(err)) from None
        print(f"start_server: {done}", file=sys.stderr)
        return 0
    if args.stop:
        if located.pid_file is None:
            raise UsageError("--stop option requires --pid-file to be set as well")
        pid = stop(located.pid_file, settings.stop_timeout + 5)
        print(f"stop_server (pid:{os.getpid()}) stopped start_server (pid:{pid})", file=sys.stderr)
        return 0
    return serve(args)


def _given(args: argparse.Namespace, flag: str) -> bool:
    return bool(getattr(args, flag.removeprefix("--").replace("-", "_")))


def _control_path(option: str, located: Resources) -> str:
    """The control socket a client request goes to; one line if none is there."""
    pid_file = located.pid_file
    control_path = control_socket_path(located.control_socket, pid_file, os.environ)
    if control_path is None:
        raise UsageError(
            f"{option} needs --pid-file or --control-socket "
            "(or RuntimeDirectory= in the systemd unit)"
        )
    beside_pid_file = control_path == control_socket_path(None, pid_file, {})
    if beside_pid_file and not os.path.exists(control_path):
        assert pid_file is not None
        raise ControlError(f"{option}: {no_superdaemon_for(pid_file, control_path)}")
    return control_path


# --status: the exit codes of `systemctl status` (LSB): 3 when nothing runs.
EX_NOT_SERVING = 3
STATUS_TIMEOUT = 10.0


def show_status(control_path: str, as_json: bool, timeout: float) -> int:
    import json
    import time

    from .report import status_table

    message = request(control_path, "status", timeout)
    try:
        status = json.loads(message)
        serving = status["serving_generation"]
    except (ValueError, TypeError, KeyError):
        raise ControlError(f"start_server answered no status: {message[:80]!r}") from None
    if as_json:
        print(json.dumps(status, indent=2))
    else:
        print(status_table(status, time.time()))
    return 0 if serving is not None else EX_NOT_SERVING


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except UsageError as err:
        print(f"{PROG}: {err} (see --help)", file=sys.stderr)
        return EX_USAGE
    except (SocketError, ControlError, SpawnError, PortVariableError, StartupError) as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return EX_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
