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

from .. import __version__
from ..contract import encode_ports
from .control import ControlServer, PidFile, control_socket_path, listen_control
from .environment import RESUME_VARIABLE
from .host import SystemHost
from .journal import WARNING, Event, EventLog, under_systemd
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
    """Start serving (the first of the two ways a running superdaemon is
    made), or carry on where the previous image of this process left off
    (the second: :func:`resume`)."""
    resume_fd = os.environ.pop(RESUME_VARIABLE, None)
    if resume_fd is not None:
        return resume(args, int(resume_fd))
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
        opened = Opened(listeners, created, pid_file, control, control_path)
        to_journal = args.log_file is None and under_systemd(environ)
        serving = Serving(resources, settings, environ, opened, systemd_socket, to_journal)
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
            envdir=environ.get("ENVDIR"),
            **{name: getattr(args, name) for name in Settings.options()},
        )
    except SettingError as err:
        raise UsageError(str(err)) from None


class Opened:
    """What a running superdaemon holds open besides its workers, opened by a
    fresh start or handed over by the previous image."""

    __slots__ = ("control", "control_path", "created", "listeners", "pid_file")

    def __init__(
        self,
        listeners: list[Listener],
        created: bool,
        pid_file: PidFile | None,
        control: ControlServer | None,
        control_path: str | None,
    ) -> None:
        self.listeners, self.created, self.pid_file = listeners, created, pid_file
        self.control, self.control_path = control, control_path


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
        opened: Opened,
        systemd_socket: str | None,
        to_journal: bool,
    ) -> None:
        self.settings, self.environ = settings, environ
        listeners, control, control_path = opened.listeners, opened.control, opened.control_path
        self.listeners, self.created = listeners, opened.created
        self.pid_file, self.control, self.control_path = opened.pid_file, control, control_path
        self.systemd_socket, self.to_journal = systemd_socket, to_journal
        if control is not None and control_path is not None:
            resources.callback(remove_socket_path, control_path)
            resources.callback(control.close)
        if settings.status_file is not None:
            resources.callback(_remove, settings.status_file)
        self.host = SystemHost(
            [listener.fd for listener in listeners],
            systemd_socket,
            control,
            rank_for_oom=not settings.keep_oom_score,
        )
        resources.callback(self.host.close)
        self.host.catch_signals()
        self.log = EventLog(to_journal=to_journal)
        ports = encode_ports((listener.key, listener.fd) for listener in listeners)
        self.supervisor = Supervisor(
            settings, ports, listen_fdnames(listeners), environ, self.host, self.log
        )
        self.supervisor.upgrader = self.upgrade

    def upgrade(self, answer: Answer | None) -> None:
        """Become the installed version in place (see handover.py): check it,
        then exec it with the whole state.  Returns only when the upgrade did
        not happen (and says why)."""
        # Imported only now: its code would cost the resident superdaemon memory.
        from . import handover

        self.log.event(Event.UPGRADE, "received upgrade request, checking the installed version")
        try:
            new_version = handover.check_installed()
        except handover.UpgradeError as err:
            self._upgrade_refused(answer, str(err))
            return
        self.supervisor.notify_reloading(f"upgrading start_server {__version__} to {new_version}")
        fds = handover.Descriptors()
        connections = self.control.handover(fds.keep) if self.control else []
        # handover() lists the live clients in the order of control.connections.
        live = self.control.connections if self.control else []

        def client_number(waiting: Answer) -> int | None:
            """A waiting client's place in the hand-over (each is its own answer)."""
            return next((i for i, client in enumerate(live) if client is waiting), None)

        asked = None if answer is None else client_number(answer)
        state: handover.State = {
            "format": handover.HANDOVER_FORMAT,
            "version": __version__,
            "environ": self.environ,
            "systemd_socket": self.systemd_socket,
            "to_journal": self.to_journal,
            "listeners": [
                {
                    "key": listener.key,
                    "fd": fds.keep(listener.fd),
                    "name": listener.name,
                    "created_path": listener.created_path,
                }
                for listener in self.listeners
            ],
            "created": self.created,
            "pid_file": None
            if self.pid_file is None
            else {"path": self.pid_file.path, "fd": fds.keep(self.pid_file.fileno())},
            "control": None
            if self.control is None or self.control_path is None
            else {"path": self.control_path, "fd": fds.keep(self.control.sock.fileno())},
            "connections": connections,
            "workers": self.host.handover(fds.keep),
            "supervisor": self.supervisor.snapshot(client_number),
            "upgrade_answers": [] if asked is None else [asked],
        }
        state_fd = handover.write_state(state)
        try:
            handover.exec_new_image(state_fd, fds.kept)
        except OSError as err:
            os.close(state_fd)
            self._upgrade_refused(answer, f"exec {err.filename or ''} failed: {err.strerror}")

    def _upgrade_refused(self, answer: Answer | None, reason: str) -> None:
        self.log.event(
            Event.UPGRADE,
            f"upgrade refused, start_server {__version__} keeps running: {reason}",
            priority=WARNING,
        )
        self.supervisor.notify_systemd(f"READY=1\nSTATUS={self.supervisor.status_text()}")
        if answer is not None:
            answer(False, reason)


def resume(args: argparse.Namespace, state_fd: int) -> int:
    """The new image's start after an in-place upgrade: adopt everything the
    previous one handed over (see handover.py)."""
    from . import handover

    state = handover.read_state(state_fd)
    environ = state["environ"]
    settings = settings_from(args, environ)
    listeners = [
        Listener(
            key=entry["key"],
            sock=_adopted_socket(entry["fd"], inheritable=True),
            name=entry["name"],
            created_path=entry["created_path"],
        )
        for entry in state["listeners"]
    ]
    created = state["created"]
    with contextlib.ExitStack() as resources:
        if created:
            resources.callback(close_all, listeners)
        pid_file = None
        if state["pid_file"] is not None:
            pid_file = PidFile.adopt(state["pid_file"]["path"], state["pid_file"]["fd"])
            resources.callback(pid_file.remove)
        control = control_path = None
        if state["control"] is not None:
            control_path = state["control"]["path"]
            control = ControlServer(_adopted_socket(state["control"]["fd"], inheritable=False))
            control.sock.setblocking(False)
        opened = Opened(listeners, created, pid_file, control, control_path)
        serving = Serving(
            resources, settings, environ, opened, state["systemd_socket"], state["to_journal"]
        )
        answers: list[Answer] = list(control.adopt(state["connections"]) if control else [])
        serving.host.adopt(state["workers"])
        serving.supervisor.restore(state["supervisor"], answers)
        old = state["version"]
        serving.log.event(
            Event.UPGRADE,
            f"start_server upgraded in place from {old} to {__version__} (pid {os.getpid()}); "
            f"{len(serving.supervisor.generations)} generation(s) kept",
            old_version=old,
            new_version=__version__,
        )
        serving.supervisor.notify_systemd(f"READY=1\nSTATUS={serving.supervisor.status_text()}")
        for index in state["upgrade_answers"]:
            answers[index](True, f"upgraded in place from {old} to {__version__}")
        handover.unblock_signals()
        return serving.supervisor.loop()


def _adopted_socket(fd: int, inheritable: bool) -> socket.socket:
    """A socket handed over; the listeners stay inheritable (the workers get
    them), the rest close-on-exec again, as they were."""
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(inheritable)
    return sock


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
    written = (("status file", settings.status_file), ("metrics file", settings.metrics_file))
    for what, path in written:
        if path is None:
            continue
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise StartupError(f"{what} {path}: directory {directory} does not exist")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise StartupError(f"{what} {path}: directory {directory} is not writable")


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
