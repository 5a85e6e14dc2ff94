"""Running: everything ``start_server -- server-prog`` holds while it runs, opened
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
from .events import Checked
from .host import SystemHost
from .journal import WARNING, Event, EventLog, under_systemd
from .reloads import UPGRADE
from .settings import Resources, SettingError, Settings, export_perl_variables
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
from .supervisor import Supervisor, Upgrader

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .reloads import Answer

EX_FAILURE = 1


class UsageError(Exception):
    """The command line asks for something impossible; exit 2 with the message."""


class StartupError(Exception):
    """The configuration cannot work on this host (exit 1, before any worker runs)."""


def serve(args: argparse.Namespace) -> int:
    """Start the superdaemon (the first of the two ways a running one is
    made), or carry on where the previous image of this process left off
    (the second: :func:`resume`)."""
    resume_fd = os.environ.pop(RESUME_VARIABLE, None)
    if resume_fd is not None:
        return resume(args, int(resume_fd))
    resources = Resources.from_args(args)
    if resources.daemonize and resources.log_file is None:
        raise UsageError("--log-file option must be specified together with --daemonize")
    if not args.command:
        raise UsageError("server program not specified")
    environ = dict(os.environ)
    settings = settings_from(args, environ)
    _check_command(settings.command, settings.directory, environ.get("PATH"))
    _check_paths(settings)
    control_path = control_socket_path(resources.control_socket, resources.pid_file, environ)
    systemd_socket = environ.pop("NOTIFY_SOCKET", None) or None

    with contextlib.ExitStack() as cleanup:
        listeners, created = _open_listeners(resources)
        if created:
            cleanup.callback(close_all, listeners)
        if resources.log_file is not None:
            _redirect_output(resources.log_file)
        stdin_is_a_listener = any(listener.fd == 0 for listener in listeners)
        daemon_ready = _daemonize(keep_stdin=stdin_is_a_listener) if resources.daemonize else None
        pid_file = None
        if resources.pid_file:
            pid_file = PidFile(resources.pid_file)
            pid_file.create()
            cleanup.callback(pid_file.remove)
        control = None
        if control_path is not None:
            control = ControlServer(listen_control(control_path), control_path)
        opened = Opened(listeners, created, pid_file, control)
        to_journal = resources.log_file is None and under_systemd(environ)
        running = Running(cleanup, settings, environ, opened, systemd_socket, to_journal)
        running.supervisor.start()
        if daemon_ready is not None:
            os.write(daemon_ready, b"1")
            os.close(daemon_ready)
        return running.supervisor.loop()


def settings_from(args: argparse.Namespace, environ: dict[str, str]) -> Settings:
    try:
        export_perl_variables(environ, args)
        settings = Settings.from_args(args, environ)
        settings.check()
    except SettingError as err:
        raise UsageError(str(err)) from None
    return settings


class Opened:
    """What a running superdaemon holds open besides its workers, opened by a
    fresh start or handed over by the previous image."""

    __slots__ = ("control", "created", "listeners", "pid_file")

    def __init__(
        self,
        listeners: list[Listener],
        created: bool,
        pid_file: PidFile | None,
        control: ControlServer | None,
    ) -> None:
        self.listeners, self.created = listeners, created
        self.pid_file, self.control = pid_file, control


class Running(Upgrader):
    """What a running superdaemon holds, and its hand-over to a new image.
    It releases the control socket, the status file and the workers left
    (after an internal error) through ``cleanup``; the listeners and the
    pid file are released there by whoever opened them, as soon as they are
    open."""

    def __init__(
        self,
        cleanup: contextlib.ExitStack,
        settings: Settings,
        environ: dict[str, str],
        opened: Opened,
        systemd_socket: str | None,
        to_journal: bool,
    ) -> None:
        self.settings, self.environ = settings, environ
        listeners, control = opened.listeners, opened.control
        self.listeners, self.created = listeners, opened.created
        self.pid_file, self.control = opened.pid_file, control
        self.systemd_socket, self.to_journal = systemd_socket, to_journal
        if control is not None:
            cleanup.callback(remove_socket_path, control.path)
            cleanup.callback(control.close)
        if settings.status_file is not None:
            cleanup.callback(_remove, settings.status_file)
        self.host = SystemHost(
            [listener.fd for listener in listeners],
            systemd_socket,
            control,
            rank_for_oom=not settings.keep_oom_score,
        )
        cleanup.callback(self.host.close)
        self.host.catch_signals()
        self.log = EventLog(to_journal=to_journal)
        ports = encode_ports((listener.key, listener.fd) for listener in listeners)
        self.supervisor = Supervisor(
            settings, ports, listen_fdnames(listeners), environ, self.host, self.log
        )
        self.supervisor.upgrader = self
        self.checked_layout = 1  # the hand-over format the last check was for

    # -- the in-place upgrade (supervisor.Upgrader) -------------------------------

    def check(self) -> None:
        """Check the installed version on a thread of its own (a process of
        up to 20 s, handover.check_installed): the loop goes on meanwhile,
        and ``checked`` follows."""
        # Imported only now: its code would cost the resident superdaemon memory.
        from . import handover

        self.log.event(Event.UPGRADE, "received upgrade request, checking the installed version")
        layout = self._layout()
        self.checked_layout = layout

        def check_installed() -> Checked:
            try:
                # The module is the installed version's, perhaps an earlier
                # one's, whose check_installed() takes no format: it checks 1.
                version = (
                    handover.check_installed(layout) if layout != 1 else handover.check_installed()
                )
            except TypeError:  # an earlier version's check_installed(): it reads format 1 only
                return Checked(
                    None,
                    "the installed version is an earlier one, which cannot take this "
                    "superdaemon's options or generations' states: restart the service instead",
                )
            except handover.UpgradeError as err:
                return Checked(None, str(err))
            except Exception as err:  # the installed files may be any version's
                return Checked(None, f"the installed version's hand-over failed: {err!r}")
            return Checked(version, None)

        self.host.check_in_background(check_installed)

    def checked(self, checked: Checked, answers: Sequence[Answer | None]) -> None:
        """Become the installed version in place (see handover.py): exec it
        with the whole state.  Returns only when the upgrade did not happen
        (and says why)."""
        try:
            self._upgrade(checked, answers)
        except Exception as err:  # the installed files may be any version's: never die of it
            self._upgrade_refused(answers, f"the installed version's hand-over failed: {err!r}")

    def _layout(self) -> int:
        states = [generation.state.value for generation in self.supervisor.generations]
        return handover_format(sys.argv[1:], states)

    def _upgrade(self, checked: Checked, answers: Sequence[Answer | None]) -> None:
        from . import handover

        if checked.error is not None or checked.version is None:
            self._upgrade_refused(answers, checked.error or "the check said nothing")
            return
        layout = self._layout()
        if layout > self.checked_layout:
            # A generation came to a state the checked format cannot carry
            # (a roll began) while the check ran: check again, for this one.
            self.supervisor.upgrade_answers = list(answers)
            self.check()
            return
        new_version = checked.version
        self.supervisor.notify_reloading(f"upgrading start_server {__version__} to {new_version}")
        fds = handover.Descriptors()
        keep = fds.keep
        # The hand-over names each waiting client by its place in this list.
        clients = self.control.waiting() if self.control else []
        state: handover.State = {
            "format": layout,
            "version": __version__,
            "environ": self.environ,
            "systemd_socket": self.systemd_socket,
            "to_journal": self.to_journal,
            "listeners": [listener.handover(keep) for listener in self.listeners],
            "created": self.created,
            "pid_file": None if self.pid_file is None else self.pid_file.handover(keep),
            "control": None if self.control is None else self.control.handover(keep),
            "connections": [client.handover(keep) for client in clients],
            "workers": self.host.handover(keep),
            "supervisor": self.supervisor.snapshot(clients),
            "upgrade_answers": [i for i, c in enumerate(clients) if c.waits_for == UPGRADE],
        }
        state_fd = handover.write_state(state)
        try:
            handover.exec_new_image(state_fd, fds.kept)
        except OSError as err:
            os.close(state_fd)
            self._upgrade_refused(answers, f"exec {err.filename or ''} failed: {err.strerror}")

    def _upgrade_refused(self, answers: Sequence[Answer | None], reason: str) -> None:
        self.log.event(
            Event.UPGRADE,
            f"upgrade refused, start_server {__version__} keeps running: {reason}",
            priority=WARNING,
        )
        self.supervisor.notify_systemd(f"READY=1\nSTATUS={self.supervisor.status_text()}")
        for answer in answers:
            if answer is not None:
                answer(False, reason)


# What the versions that read only hand-over format 1 cannot take: the
# options added since (they would refuse the command line after the exec,
# and die) and a generation evicted by --max-draining.  A hand-over holding
# one is format 2, which their check refuses before anything changes.
OPTIONS_SINCE_FORMAT_1 = ("--max-draining", "--max-surge", "--metrics-file", "--metrics-label")
STATES_SINCE_FORMAT_1 = ("evicted", "rolling", "failed")


def handover_format(argv: Sequence[str], states: Sequence[str]) -> int:
    """The hand-over format this command line and these generations' states need."""
    options = argv[: argv.index("--")] if "--" in argv else argv
    later = any(
        arg == option or arg.startswith(option + "=")
        for arg in options
        for option in OPTIONS_SINCE_FORMAT_1
    )
    return 2 if later or set(states) & set(STATES_SINCE_FORMAT_1) else 1


def resume(args: argparse.Namespace, state_fd: int) -> int:
    """The new image's start after an in-place upgrade: adopt everything the
    previous one handed over (see handover.py)."""
    from . import handover

    state = handover.read_state(state_fd)
    environ = state["environ"]
    settings = settings_from(args, environ)
    listeners = [Listener.adopt(entry) for entry in state["listeners"]]
    created = state["created"]
    with contextlib.ExitStack() as cleanup:
        if created:
            cleanup.callback(close_all, listeners)
        pid_file = None
        if state["pid_file"] is not None:
            pid_file = PidFile.adopt(state["pid_file"])
            cleanup.callback(pid_file.remove)
        control = None if state["control"] is None else ControlServer.adopt(state["control"])
        opened = Opened(listeners, created, pid_file, control)
        running = Running(
            cleanup, settings, environ, opened, state["systemd_socket"], state["to_journal"]
        )
        clients = control.adopt_connections(state["connections"]) if control else []
        running.host.adopt(state["workers"])
        running.supervisor.restore(state["supervisor"], clients)
        old = state["version"]
        running.log.event(
            Event.UPGRADE,
            f"start_server upgraded in place from {old} to {__version__} (pid {os.getpid()}); "
            f"{len(running.supervisor.generations)} generation(s) kept",
            old_version=old,
            new_version=__version__,
        )
        running.supervisor.notify_systemd(f"READY=1\nSTATUS={running.supervisor.status_text()}")
        for index in state["upgrade_answers"]:
            clients[index](True, f"upgraded in place from {old} to {__version__}")
        handover.unblock_signals()
        return running.supervisor.loop()


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
    unit with the wrong configuration fails visibly instead of running.  (At a
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


def _open_listeners(resources: Resources) -> tuple[list[Listener], bool]:
    """Adopt systemd's sockets, or bind our own.  Returns the listeners and
    whether we created them (and so close them and remove their paths)."""
    specs: list[PortSpec | PathSpec] = [parse_port(v) for v in resources.port]
    specs += [parse_path(v) for v in resources.path]
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
    backlog = resources.backlog if resources.backlog is not None else socket.SOMAXCONN
    listeners = bind_all(specs, backlog, resources.path_mode)
    for spec in specs:
        if isinstance(spec, PortSpec) and spec.fd is not None:
            print(f"socket is duplicated to file descriptor {spec.fd}", file=sys.stderr)
    return listeners, True
