"""Serving: everything ``start_server -- server-prog`` holds while it runs, opened
in order and released in reverse by one owner (an ExitStack): the listening
sockets, the log redirection, the daemon fork, the pid file, the control
socket, the status file, the loop."""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
from collections.abc import Sequence

from .control import ControlServer, PidFile, control_socket_path, listen_control
from .environment import RESUME_VARIABLE, encode_ports
from .host import SystemHost
from .journal import EventLog, under_systemd
from .settings import SettingError, Settings, export_perl_variables
from .sockets import (
    Listener,
    PathSpec,
    PortSpec,
    adopt_inherited,
    bind_all,
    check_specs_match,
    close_all,
    listen_fdnames,
    parse_path,
    parse_port,
    remove_socket_path,
)
from .supervisor import Answer, Supervisor

EX_FAILURE = 1


class UsageError(Exception):
    """The command line asks for something impossible; exit 2 with the message."""


class StartupError(Exception):
    """The configuration cannot work on this host (exit 1, before any worker runs)."""


def serve(args: argparse.Namespace) -> int:
    resume = os.environ.pop(RESUME_VARIABLE, None)
    if resume is not None:
        from .upgrade import resume as resume_from

        return resume_from(args, int(resume))
    if args.daemonize and args.log_file is None:
        raise UsageError("--log-file option must be specified together with --daemonize")
    if not args.command:
        raise UsageError("server program not specified")
    environ = dict(os.environ)
    settings = settings_from(args, environ)
    _check_command(settings.command, settings.directory, environ.get("PATH"))
    _check_paths(settings)
    control_path = control_socket_path(args.control_socket, args.pid_file, environ)
    systemd_socket = environ.pop("NOTIFY_SOCKET", None) or None

    with contextlib.ExitStack() as resources:
        listeners, created = _open_listeners(args)
        if created:
            resources.callback(close_all, listeners)
        if args.log_file is not None:
            _redirect_output(args.log_file)
        stdin_is_a_listener = any(listener.fd == 0 for listener in listeners)
        daemon_ready = _daemonize(keep_stdin=stdin_is_a_listener) if args.daemonize else None
        pid_file = None
        if args.pid_file:
            pid_file = PidFile(args.pid_file)
            pid_file.create()
            resources.callback(pid_file.remove)
        control = None
        if control_path is not None:
            control = ControlServer(listen_control(control_path))
        serving = Serving(
            resources,
            settings,
            environ,
            listeners,
            created,
            pid_file,
            control,
            control_path,
            systemd_socket,
            to_journal=args.log_file is None and under_systemd(environ),
        )
        serving.supervisor.start()
        if daemon_ready is not None:
            os.write(daemon_ready, b"1")
            os.close(daemon_ready)
        return serving.supervisor.loop()


def settings_from(args: argparse.Namespace, environ: dict[str, str]) -> Settings:
    try:
        export_perl_variables(
            environ,
            envdir=args.envdir,
            enable_auto_restart=args.enable_auto_restart,
            auto_restart_interval=args.auto_restart_interval,
            kill_old_delay=args.kill_old_delay,
        )
        return Settings(
            args.command,
            interval=args.interval,
            signal_on_hup=args.signal_on_hup,
            signal_on_term=args.signal_on_term,
            require_notify=args.require_notify,
            ready_timeout=args.ready_timeout,
            stop_timeout=args.stop_timeout,
            backoff_max=args.backoff_max,
            directory=args.dir,
            status_file=args.status_file,
            envdir=environ.get("ENVDIR"),
        )
    except SettingError as err:
        raise UsageError(str(err)) from None


class Serving:
    """What a running superdaemon holds, and its hand-over to a new image.
    It releases the control socket, the status file and the workers left
    (after an internal error) through ``resources``; the listeners and the
    pid file are released there by whoever opened them, as soon as they are
    open."""

    def __init__(
        self,
        resources: contextlib.ExitStack,
        settings: Settings,
        environ: dict[str, str],
        listeners: list[Listener],
        created: bool,
        pid_file: PidFile | None,
        control: ControlServer | None,
        control_path: str | None,
        systemd_socket: str | None,
        to_journal: bool,
    ) -> None:
        self.settings, self.environ = settings, environ
        self.listeners, self.created = listeners, created
        self.pid_file, self.control, self.control_path = pid_file, control, control_path
        self.systemd_socket, self.to_journal = systemd_socket, to_journal
        if control is not None and control_path is not None:
            resources.callback(remove_socket_path, control_path)
            resources.callback(control.close)
        if settings.status_file is not None:
            resources.callback(_remove, settings.status_file)
        self.host = SystemHost([listener.fd for listener in listeners], systemd_socket, control)
        resources.callback(self.host.close)
        self.host.catch_signals()
        self.log = EventLog(to_journal=to_journal)
        ports = encode_ports((listener.key, listener.fd) for listener in listeners)
        self.supervisor = Supervisor(
            settings, ports, listen_fdnames(listeners), environ, self.host, self.log
        )
        self.supervisor.upgrader = self.upgrade

    def upgrade(self, answer: Answer | None) -> None:
        """Become the installed version in place (see upgrade.py, imported
        only now: its code would cost the resident superdaemon memory)."""
        from .upgrade import hand_over

        hand_over(self, answer)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


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


def _check_paths(settings: Settings) -> None:
    """What would fail only once a worker runs: fail now, in one line, so a
    unit with the wrong configuration fails visibly instead of serving.  (At a
    later reload the same faults are warnings: the serving generation stays.)"""
    if settings.envdir is not None and not os.path.isdir(settings.envdir):
        raise StartupError(f"envdir {settings.envdir}: no such directory")
    if settings.status_file is not None:
        directory = os.path.dirname(os.path.abspath(settings.status_file))
        if not os.path.isdir(directory):
            raise StartupError(
                f"status file {settings.status_file}: directory {directory} does not exist"
            )
        if not os.access(directory, os.W_OK | os.X_OK):
            raise StartupError(
                f"status file {settings.status_file}: directory {directory} is not writable"
            )


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


def _daemonize(keep_stdin: bool) -> int:
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
    if not keep_stdin:  # else it is the socket pinned there with --port=PORT=0
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    return ready_write


def _open_listeners(args: argparse.Namespace) -> tuple[list[Listener], bool]:
    """Adopt systemd's sockets, or bind our own.  Returns the listeners and
    whether we created them (and so close them and remove their paths)."""
    specs: list[PortSpec | PathSpec] = [parse_port(v) for v in args.port]
    specs += [parse_path(v) for v in args.path]
    inherited = adopt_inherited(os.environ, os.getpid())
    if inherited is not None:
        check_specs_match(inherited, specs)
        return inherited, False
    if not specs:
        # Legal (Perl allows it, for workers that listen on nothing), but far
        # more often a forgotten option than a wish.
        print(
            "start_server: warning: no --port or --path given and no sockets from systemd "
            "(LISTEN_FDS): the workers get no listening socket",
            file=sys.stderr,
        )
    backlog = args.backlog if args.backlog is not None else socket.SOMAXCONN
    listeners = bind_all(specs, backlog, args.path_mode)
    for spec in specs:
        if isinstance(spec, PortSpec) and spec.fd is not None:
            print(f"socket is duplicated to file descriptor {spec.fd}", file=sys.stderr)
    return listeners, True
