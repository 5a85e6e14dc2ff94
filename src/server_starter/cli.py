"""The ``start_server`` command line: Perl start_server 0.35's options, plus
readiness, stop and control options of our own."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from collections.abc import Sequence

from . import __version__
from .control import ControlError, PidFile, control_socket_path, listen_control, request, stop
from .environment import PortVariableError
from .journal import EventLog, under_systemd
from .sockets import (
    Listener,
    PathSpec,
    PortSpec,
    SocketError,
    adopt_inherited,
    bind_all,
    check_specs_match,
    close_all,
    parse_path,
    parse_port,
)
from .spawn import SpawnError
from .supervisor import Config, Supervisor

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs the resident superdaemon ~2 MB; annotations need no import
    from typing import NoReturn

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
--restart and --stop accept the server's whole command line and use only
the options that locate it (--pid-file, --control-socket).
"""


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < 10**9 or value != value:
        raise argparse.ArgumentTypeError(f"{text!r} must be a non-negative number of seconds")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _signal(text: str) -> signal.Signals:
    name = text.strip().upper().removeprefix("SIG")
    try:
        return signal.Signals(int(name)) if name.isdigit() else signal.Signals["SIG" + name]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown signal {text!r}") from None


def _mode(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode such as 0660") from None
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r} is not a permission mode (000 to 777)")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        usage="%(prog)s [options] -- server-prog [server-args...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add(
        "--port",
        action="append",
        default=[],
        metavar="[HOST:]PORT[=FD]",
        help="TCP port to listen to: PORT (0.0.0.0), HOST:PORT, [V6ADDR]:PORT; "
        "=FD pins the descriptor; a 'u' before PORT means UDP (repeatable)",
    )
    add(
        "--path",
        action="append",
        default=[],
        metavar="PATH",
        help="unix socket path to listen to (repeatable)",
    )
    add(
        "--path-mode",
        type=_mode,
        default=0o777,
        metavar="MODE",
        help="permissions of --path sockets (default 0777, as Perl's start_server)",
    )
    add(
        "--backlog",
        type=_positive_int,
        default=None,
        metavar="N",
        help="listen(2) backlog (default SOMAXCONN)",
    )
    add("--dir", metavar="PATH", help="working directory of the server program")
    add(
        "--interval",
        type=_seconds,
        default=1.0,
        metavar="SECONDS",
        help="a worker alive this long counts as ready unless it notifies (default 1); "
        "also the first retry delay",
    )
    add(
        "--signal-on-hup",
        type=_signal,
        default=signal.SIGTERM,
        metavar="SIGNAL",
        help="signal sent to old workers when a new one is ready (default TERM)",
    )
    add(
        "--signal-on-term",
        type=_signal,
        default=signal.SIGTERM,
        metavar="SIGNAL",
        help="signal sent to the workers when start_server gets TERM (default TERM)",
    )
    add("--pid-file", metavar="FILE", help="write start_server's pid here (locked while it runs)")
    add("--status-file", metavar="FILE", help="write GEN:PID of every live worker here")
    add(
        "--envdir",
        metavar="DIR",
        help="directory of environment variables for the workers, re-read before each start",
    )
    add(
        "--log-file",
        metavar="FILE|'| CMD'",
        help="append stdout and stderr to FILE, or pipe them to CMD",
    )
    add("--daemonize", action="store_true", help="fork into the background (needs --log-file)")
    add("--enable-auto-restart", action="store_true", help="restart the worker periodically")
    add(
        "--auto-restart-interval",
        type=_seconds,
        metavar="SECONDS",
        help="period of --enable-auto-restart (default 360)",
    )
    add(
        "--kill-old-delay",
        type=_seconds,
        metavar="SECONDS",
        help="wait this long after a new worker is ready before signalling old ones "
        "(default 0, or 5 with auto-restart)",
    )
    add(
        "--require-notify",
        action="store_true",
        help="a worker is ready only when it sends READY=1 to $NOTIFY_SOCKET",
    )
    add(
        "--ready-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="with --require-notify: give up on a worker without READY=1 after this (default 60)",
    )
    add(
        "--stop-timeout",
        type=_seconds,
        default=85.0,
        metavar="SECONDS",
        help="SIGKILL a signalled worker still running after this long (default 85, "
        "under systemd's 90s TimeoutStopSec)",
    )
    add(
        "--backoff-max",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="longest wait between attempts to start a failing worker (default 30)",
    )
    add(
        "--control-socket",
        metavar="PATH",
        help="unix socket for --restart (default $RUNTIME_DIRECTORY/start_server.sock, "
        "else PIDFILE.sock)",
    )
    add(
        "--restart-timeout",
        type=_seconds,
        default=90.0,
        metavar="SECONDS",
        help="how long --restart waits for the outcome (default 90)",
    )
    add(
        "--restart",
        action="store_true",
        help="ask the running start_server to reload; exit 0 once the new generation is "
        "ready and the old one signalled, 1 with the reason if it failed",
    )
    add(
        "--stop",
        action="store_true",
        help="send TERM to the start_server named by --pid-file and wait until it exits",
    )
    add("--version", action="store_true", help="print the version and exit")
    add("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    args = list(argv)
    command: list[str] | None = None
    if "--" in args:
        split = args.index("--")
        args, command = args[:split], args[split + 1 :]
    namespace = build_parser().parse_args(args)
    if command is not None:
        if namespace.command:
            raise UsageError(f"unexpected argument {namespace.command[0]!r} before '--'")
        namespace.command = command
    return namespace


def _apply_environment_overrides(args: argparse.Namespace, environ: dict[str, str]) -> None:
    """Options win; otherwise Perl's environment variables stand in.  Either
    way the value is exported to the workers, as Perl does."""
    if args.envdir is not None:
        environ["ENVDIR"] = args.envdir
    if args.enable_auto_restart:
        environ["ENABLE_AUTO_RESTART"] = "1"
    if args.kill_old_delay is not None:
        environ["KILL_OLD_DELAY"] = f"{args.kill_old_delay:g}"
    if args.auto_restart_interval is not None:
        environ["AUTO_RESTART_INTERVAL"] = f"{args.auto_restart_interval:g}"
    for name in ("KILL_OLD_DELAY", "AUTO_RESTART_INTERVAL"):
        if name in environ and environ[name] != "":
            try:
                _seconds(environ[name])
            except argparse.ArgumentTypeError as err:
                raise UsageError(f"{name}: {err}") from None


def _check_command(command: Sequence[str], directory: str | None, path: str | None) -> None:
    if directory is not None and not os.path.isdir(directory):
        raise UsageError(f"--dir {directory}: no such directory")
    program = command[0]
    if "/" in program:
        full = os.path.join(directory or os.getcwd(), program)
        if not os.path.isfile(full):
            raise UsageError(f"server program {program}: no such file")
        if not os.access(full, os.X_OK):
            raise UsageError(f"server program {program}: not executable")
    elif not any(
        os.access(os.path.join(d or ".", program), os.X_OK)
        and os.path.isfile(os.path.join(d or ".", program))
        for d in (path or os.defpath).split(os.pathsep)
    ):
        raise UsageError(f"server program {program}: command not found in PATH")


def _redirect_output(log_file: str) -> None:
    """Perl's --log-file: append to a file, or pipe to a command (``| cmd``)."""
    sys.stdout.flush()
    sys.stderr.flush()
    stripped = log_file.lstrip()
    if stripped.startswith("|"):
        import subprocess  # only here: it costs the resident superdaemon ~2 MB

        try:
            pipe = subprocess.Popen(
                stripped[1:].strip(), shell=True, stdin=subprocess.PIPE, start_new_session=False
            )
        except OSError as err:
            raise UsageError(f"failed to open pipe:{log_file}: {err.strerror}") from None
        assert pipe.stdin is not None
        target = pipe.stdin.fileno()
        os.dup2(target, 1)
        os.dup2(target, 2)
        pipe.stdin.close()
        return
    try:
        fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise UsageError(f"failed to open log file:{log_file}: {err.strerror}") from None
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _daemonize() -> int:
    """fork, setsid, fork, as Perl does; but the foreground process waits
    until the daemon is set up (pid file, control socket) and exits 0 only
    then, so whoever ran it may use those at once.  Returns the descriptor
    the daemon writes to when it is set up."""
    ready_read, ready_write = os.pipe2(os.O_CLOEXEC)
    if os.fork() != 0:
        os.close(ready_write)
        started = os.read(ready_read, 1) == b"1"
        os._exit(0 if started else EX_FAILURE)
    os.close(ready_read)
    os.setsid()
    if os.fork() != 0:
        os._exit(0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return ready_write


def _open_listeners(args: argparse.Namespace) -> tuple[list[Listener], str | None, bool]:
    """Adopt systemd's sockets, or bind our own.  Returns the listeners, the
    LISTEN_FDNAMES to pass on, and whether we created (and so remove) paths."""
    specs: list[PortSpec | PathSpec] = [parse_port(v) for v in args.port]
    specs += [parse_path(v) for v in args.path]
    inherited = adopt_inherited(os.environ, os.getpid())
    if inherited is not None:
        check_specs_match(inherited, specs)
        names = os.environ.get("LISTEN_FDNAMES")
        return inherited, names, False
    backlog = args.backlog if args.backlog is not None else socket.SOMAXCONN
    listeners = bind_all(specs, backlog, args.path_mode)
    for spec in specs:
        if isinstance(spec, PortSpec) and spec.fd is not None:
            print(f"socket is duplicated to file descriptor {spec.fd}", file=sys.stderr)
    return listeners, None, True


def run(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if args.version:
        print(__version__)
        return 0
    if args.ready_timeout is not None and not args.require_notify:
        raise UsageError("--ready-timeout applies only with --require-notify")
    environ = dict(os.environ)
    control_path = control_socket_path(args.control_socket, args.pid_file, environ)
    if args.restart:
        if control_path is None:
            raise UsageError(
                "--restart needs --pid-file or --control-socket "
                "(or RuntimeDirectory= in the systemd unit)"
            )
        message = request(control_path, "reload", args.restart_timeout)
        print(f"start_server: {message}", file=sys.stderr)
        return 0
    if args.stop:
        if args.pid_file is None:
            raise UsageError("--stop option requires --pid-file to be set as well")
        pid = stop(args.pid_file, args.stop_timeout + 5)
        print(f"stop_server (pid:{os.getpid()}) stopped start_server (pid:{pid})", file=sys.stderr)
        return 0
    if args.daemonize and args.log_file is None:
        raise UsageError("--log-file option must be specified together with --daemonize")
    if not args.command:
        raise UsageError("server program not specified")
    _apply_environment_overrides(args, environ)
    _check_command(args.command, args.dir, environ.get("PATH"))

    listeners, fd_names, created = _open_listeners(args)
    try:
        systemd_socket = environ.pop("NOTIFY_SOCKET", None) or None
        if args.log_file is not None:
            _redirect_output(args.log_file)
        daemon_ready = _daemonize() if args.daemonize else None
        pid_file = PidFile(args.pid_file) if args.pid_file else None
        if pid_file is not None:
            pid_file.create()
        try:
            control_sock = listen_control(control_path) if control_path else None
            config = Config(
                command=args.command,
                interval=args.interval,
                signal_on_hup=args.signal_on_hup,
                signal_on_term=args.signal_on_term,
                require_notify=args.require_notify,
                ready_timeout=args.ready_timeout if args.ready_timeout is not None else 60.0,
                stop_timeout=args.stop_timeout,
                auto_restart_interval=args.auto_restart_interval or 360.0,
                backoff_max=args.backoff_max,
                directory=args.dir,
                status_file=args.status_file,
                control_socket=control_sock,
                control_socket_path=control_path,
                remove_paths_on_exit=created,
            )
            log = EventLog(to_journal=args.log_file is None and under_systemd(environ))
            supervisor = Supervisor(config, listeners, log, environ, fd_names, systemd_socket)
            if daemon_ready is not None:
                os.write(daemon_ready, b"1")
                os.close(daemon_ready)
            return supervisor.run()
        finally:
            if pid_file is not None:
                pid_file.remove()
    finally:
        if created:
            close_all(listeners)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except UsageError as err:
        print(f"{PROG}: {err} (see --help)", file=sys.stderr)
        return EX_USAGE
    except (SocketError, ControlError, SpawnError, PortVariableError) as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return EX_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
