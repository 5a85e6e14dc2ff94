"""The superdaemon: one thread, one event loop, generations of workers.

A generation goes through these states, and this module is the one place
where it moves:

    STARTING --ready--> SERVING --replaced--> RETIRING --kill-old-delay--> DRAINING --exit--> reaped
        \\--exit/timeout--> reaped (the start failed; the serving one is untouched)

"Ready" is the worker's ``READY=1`` on its generation's own notify socket,
or, unless ``--require-notify``, being alive after ``--interval`` seconds
(Perl's rule).  The loop blocks in ``select`` on the signal self-pipe, every
worker's pidfd and notify socket, and the control socket; its timeout is the
nearest deadline derived from the generations' states, and with no deadline
it blocks indefinitely: an idle superdaemon makes no wake-ups.
"""

from __future__ import annotations

import contextlib
import enum
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence

from . import notify
from .control import peer_uid, write_status_file
from .environment import encode_ports, load_envdir, worker_environment
from .journal import ERR, NOTICE, WARNING, Event, EventLog, describe_status
from .sockets import Listener, close_all, remove_socket_path
from .spawn import Process, SpawnError, reap, spawn

# A worker that exits this soon after its spawn with a failure most often
# could not bind: it binds the port itself instead of using the inherited
# sockets.  The hint costs nothing when it is wrong.
QUICK_EXIT_SECONDS = 2.0

# How long a status message to systemd may wait for room in its queue.
NOTIFY_TIMEOUT = 2.0

# Signals that end the superdaemon.  INT and QUIT drain like TERM (with
# TERM sent to the workers), so a Ctrl-C or Ctrl-\ never orphans a worker.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


class State(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    RETIRING = "retiring"
    DRAINING = "draining"


class Config:
    """What the command line decided.  (Plain classes, not dataclasses: see
    sockets.PortSpec.)"""

    def __init__(
        self,
        command: Sequence[str],
        *,
        interval: float = 1.0,
        signal_on_hup: signal.Signals = signal.SIGTERM,
        signal_on_term: signal.Signals = signal.SIGTERM,
        require_notify: bool = False,
        ready_timeout: float = 60.0,
        stop_timeout: float = 85.0,  # below systemd's default TimeoutStopSec=90s
        auto_restart_interval: float = 360.0,  # when AUTO_RESTART_INTERVAL is unset
        backoff_max: float = 30.0,
        directory: str | None = None,
        status_file: str | None = None,
        control_socket: socket.socket | None = None,
        control_socket_path: str | None = None,
        remove_paths_on_exit: bool = True,
    ) -> None:
        self.command = command
        self.interval = interval
        self.signal_on_hup = signal_on_hup
        self.signal_on_term = signal_on_term
        self.require_notify = require_notify
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.auto_restart_interval = auto_restart_interval
        self.backoff_max = backoff_max
        self.directory = directory
        self.status_file = status_file
        self.control_socket = control_socket
        self.control_socket_path = control_socket_path
        self.remove_paths_on_exit = remove_paths_on_exit


class Waiter:
    """A ``--restart`` client waiting for the outcome of a reload."""

    def __init__(self, conn: socket.socket, on_close: Callable[[Waiter], None]) -> None:
        self.conn = conn
        self.buffer = b""
        self.answered = False
        self._on_close = on_close

    def reply(self, ok: bool, message: str) -> None:
        if self.answered:
            return
        self.answered = True
        line = ("ok " if ok else "error ") + message.replace("\n", " ") + "\n"
        with contextlib.suppress(OSError):
            self.conn.sendall(line.encode())
        self._on_close(self)


class Generation:
    """One spawn of the server program and where it stands."""

    def __init__(
        self,
        number: int,
        process: Process,
        notifier: notify.NotifyReceiver,
        is_reload: bool,
        spawned_at: float,
        waiters: list[Waiter],
    ) -> None:
        self.number = number
        self.process = process
        self.notifier = notifier
        self.is_reload = is_reload
        self.spawned_at = spawned_at
        self.waiters = waiters  # --restart clients to answer when this settles
        self.state = State.STARTING
        self.ready_at: float | None = None
        self.signal_at: float | None = None  # RETIRING: when to send --signal-on-hup
        self.kill_at: float | None = None  # DRAINING: when to escalate to SIGKILL
        self.signalled = False
        self.start_timed_out = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def ready_deadline(self, config: Config) -> float:
        wait = config.ready_timeout if config.require_notify else config.interval
        return self.spawned_at + wait


def _signal_name(number: signal.Signals) -> str:
    return number.name.removeprefix("SIG")


def _number(environ: Mapping[str, str], name: str, fallback: float) -> float:
    text = environ.get(name)
    if text is None or text == "":
        return fallback
    try:
        value = float(text)
    except ValueError:
        return fallback
    return value if value >= 0 else fallback


class Supervisor:
    def __init__(
        self,
        config: Config,
        listeners: Sequence[Listener],
        log: EventLog,
        environ: Mapping[str, str],
        fd_names: str | None,
        systemd_notify_socket: str | None,
    ) -> None:
        self.config = config
        self.listeners = list(listeners)
        self.log = log
        self.base_environ = dict(environ)
        self.fd_names = fd_names
        self.systemd_socket = systemd_notify_socket
        self.ports = encode_ports((listener.key, listener.fd) for listener in self.listeners)

        self.selector = selectors.DefaultSelector()
        self.generation_count = 0
        self.current: Generation | None = None
        self.pending: Generation | None = None
        self.old: list[Generation] = []  # RETIRING and DRAINING
        self.reload_queued = False
        self.next_waiters: list[Waiter] = []
        self.failures = 0
        self.retry_at: float | None = None
        self.last_restart: float | None = None
        self.stopping = False
        self.finished = False
        self.announced_ready = False
        self._wakeup_read, self._wakeup_write = socket.socketpair()

    # -- the loop -------------------------------------------------------

    def run(self) -> int:
        self._install_signal_handlers()
        if self.config.control_socket is not None:
            self.selector.register(
                self.config.control_socket, selectors.EVENT_READ, self._on_control_connection
            )
        self.log.event(Event.START, f"start_server (pid:{os.getpid()}) starting now...")
        self._start_generation(is_reload=False)
        try:
            while not self.finished:
                deadline = self._next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                for key, _mask in self.selector.select(timeout):
                    if self.finished:
                        break
                    key.data(key.fileobj)
                self._on_time(time.monotonic())
        finally:
            self._clean_up()
        return 0

    def _install_signal_handlers(self) -> None:
        self._wakeup_read.setblocking(False)
        self._wakeup_write.setblocking(False)
        signal.set_wakeup_fd(self._wakeup_write.fileno(), warn_on_full_buffer=False)
        for number in (signal.SIGHUP, *_STOP_SIGNALS):
            # The handler does nothing: the wakeup fd carries the signal number
            # into the loop, which handles it in order, outside signal context.
            signal.signal(number, lambda *_: None)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.selector.register(self._wakeup_read, selectors.EVENT_READ, self._on_signals)

    def _on_signals(self, _sock: object) -> None:
        try:
            data = self._wakeup_read.recv(4096)
        except BlockingIOError:
            return
        for number in data:
            if number == signal.SIGHUP:
                self.request_reload(None, "received HUP, spawning a new worker")
            elif number in _STOP_SIGNALS:
                self.begin_stop(signal.Signals(number))

    def _next_deadline(self) -> float | None:
        deadlines: list[float] = []
        if self.pending is not None and not self.pending.start_timed_out:
            deadlines.append(self.pending.ready_deadline(self.config))
        for gen in self.old:
            if gen.signal_at is not None:
                deadlines.append(gen.signal_at)
            if gen.kill_at is not None:
                deadlines.append(gen.kill_at)
        if self.retry_at is not None:
            deadlines.append(self.retry_at)
        auto = self._auto_restart_due()
        if auto is not None:
            deadlines.append(auto)
        return min(deadlines, default=None)

    def _on_time(self, now: float) -> None:
        pending = self.pending
        if (
            pending is not None
            and not pending.start_timed_out
            and now >= pending.ready_deadline(self.config)
        ):
            if self.config.require_notify:
                # Killed now; its exit (a moment later, via the pidfd) records the failure.
                pending.start_timed_out = True
                self._kill(pending, signal.SIGKILL)
            else:
                self._became_ready(pending, f"alive after {self.config.interval:g}s")
        for gen in list(self.old):
            if gen.signal_at is not None and now >= gen.signal_at:
                self.log.event(Event.DRAIN, "killing old workers")
                self._signal_old(gen, self.config.signal_on_hup, now)
            if gen.kill_at is not None and now >= gen.kill_at:
                gen.kill_at = None
                self.log.event(
                    Event.KILL,
                    f"worker {gen.pid} (generation {gen.number}) still running "
                    f"{self.config.stop_timeout:g}s after its signal, sending KILL",
                    priority=WARNING,
                    generation=gen.number,
                    pid=gen.pid,
                )
                self._kill(gen, signal.SIGKILL)
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
            self._start_generation(is_reload=self.current is not None)
        auto = self._auto_restart_due()
        if auto is not None and now >= auto:
            forced = "forced, " if self.old else ""
            self.log.event(
                Event.RELOAD,
                f"autorestart triggered ({forced}interval={self._auto_restart_interval():g})",
            )
            self.request_reload(None, None)

    # -- requests ---------------------------------------------------------

    def request_reload(self, waiter: Waiter | None, announcement: str | None) -> None:
        if self.stopping:
            if waiter is not None:
                waiter.reply(False, "start_server is stopping")
            return
        if announcement is not None:
            self.log.event(Event.RELOAD, announcement)
        if waiter is not None:
            self.next_waiters.append(waiter)
        if self.pending is not None:
            # Coalesce: one more reload once the starting generation settles,
            # never a pile of generations.
            if not self.reload_queued:
                self.log.line(
                    f"generation {self.pending.number} is still starting; "
                    "will reload again once it is ready"
                )
            self.reload_queued = True
            return
        self._start_generation(is_reload=self.current is not None)

    def begin_stop(self, received: signal.Signals) -> None:
        if self.stopping:
            self.log.line(
                f"received {_signal_name(received)} while stopping; still waiting for "
                f"workers:{self._pid_list(self._alive())}"
            )
            return
        self.stopping = True
        self.retry_at = None
        self.reload_queued = False
        self._notify_systemd("STOPPING=1\nSTATUS=stopping: draining every generation")
        to_send = self.config.signal_on_term if received == signal.SIGTERM else signal.SIGTERM
        alive = self._alive()
        self.log.event(
            Event.STOP,
            f"received {_signal_name(received)}, sending {_signal_name(to_send)} "
            f"to all workers:{self._pid_list(alive)}",
        )
        for waiter in self.next_waiters:
            waiter.reply(False, "start_server is stopping")
        now = time.monotonic()
        for gen in alive:
            for waiter in gen.waiters:
                waiter.reply(False, "start_server is stopping")
            if not gen.signalled:
                self._signal(gen, to_send)
            gen.state = State.DRAINING
            gen.signal_at = None
            deadline = now + self.config.stop_timeout
            gen.kill_at = deadline if gen.kill_at is None else min(gen.kill_at, deadline)
        self.old = alive
        self.current = self.pending = None
        self._write_status()
        self._finish_if_stopped()

    # -- the state machine ----------------------------------------------

    def _start_generation(self, is_reload: bool) -> None:
        self.retry_at = None
        self.generation_count += 1
        number = self.generation_count
        waiters, self.next_waiters = self.next_waiters, []
        envdir = self._envdir()
        if envdir is not None and not os.path.isdir(envdir):
            # Perl's behaviour (start without the envdir's variables), said out loud.
            self.log.line(
                f"envdir {envdir} is missing; generation {number} starts without its variables",
                priority=WARNING,
            )
        envdir_values = load_envdir(envdir)
        notifier = notify.NotifyReceiver(f"gen{number}")
        env = worker_environment(
            self.base_environ, envdir_values, self.ports, number, notifier.address, self.fd_names
        )
        if is_reload:
            self._notify_systemd(
                f"RELOADING=1\nMONOTONIC_USEC={notify.monotonic_usec()}\n"
                f"STATUS=reloading: starting generation {number}"
            )
        try:
            process = spawn(
                self.config.command,
                env,
                [listener.fd for listener in self.listeners],
                self.config.directory,
            )
        except SpawnError as err:
            notifier.close()
            self.log.event(
                Event.FAILED,
                f"new worker (generation {number}) failed to start: {err}",
                priority=ERR,
                generation=number,
            )
            self._start_failed(number, is_reload, waiters, str(err))
            return
        gen = Generation(number, process, notifier, is_reload, time.monotonic(), waiters=waiters)
        self.pending = gen
        self.selector.register(process.pidfd, selectors.EVENT_READ, lambda _fd: self._on_exit(gen))
        self.selector.register(
            notifier.sock, selectors.EVENT_READ, lambda _sock: self._on_notify(gen)
        )
        self.log.event(
            Event.SPAWN, f"starting new worker {gen.pid}", generation=number, pid=gen.pid
        )
        if not is_reload:
            self._notify_systemd(f"STATUS=starting generation {number}")

    def _on_notify(self, gen: Generation) -> None:
        for message in gen.notifier.receive():
            status = message.fields.get("STATUS")
            if status:
                self.log.line(f"worker {gen.pid} (generation {gen.number}) status: {status}")
            if message.fields.get("READY") == "1" and gen is self.pending:
                self._became_ready(gen, "READY=1")

    def _became_ready(self, gen: Generation, how: str) -> None:
        now = time.monotonic()
        self.pending = None
        previous, self.current = self.current, gen
        gen.state = State.SERVING
        gen.ready_at = now
        self.last_restart = now
        self.log.event(
            Event.READY,
            f"worker {gen.pid} (generation {gen.number}) is ready ({how})",
            generation=gen.number,
            pid=gen.pid,
        )
        if previous is not None or gen.is_reload:
            self.log.event(
                Event.DRAIN,
                f"new worker is now running, sending "
                f"{_signal_name(self.config.signal_on_hup)} to old workers:"
                f"{previous.pid if previous is not None else 'none'}",
            )
        if previous is not None:
            previous.state = State.RETIRING
            previous.waiters, gen.waiters = gen.waiters, []  # answered once it is signalled
            self.old.append(previous)
        # systemd hears of the new generation before anyone is answered, so
        # `systemctl reload` never returns ahead of the unit's status.
        self._write_status()
        self._notify_systemd(f"READY=1\nSTATUS={self._status_text()}")
        if previous is not None:
            delay = self._kill_old_delay()
            if delay > 0:
                self.log.line(f"sleeping {delay:g} secs before killing old workers")
                previous.signal_at = now + delay
            else:
                self.log.event(Event.DRAIN, "killing old workers")
                self._signal_old(previous, self.config.signal_on_hup, now)
        for waiter in gen.waiters:
            waiter.reply(True, f"generation {gen.number} (pid {gen.pid}) is ready")
        gen.waiters = []
        if self.reload_queued:
            self.reload_queued = False
            self._start_generation(is_reload=True)

    def _signal_old(self, gen: Generation, number: signal.Signals, now: float) -> None:
        gen.state = State.DRAINING
        gen.signal_at = None
        gen.kill_at = now + self.config.stop_timeout
        self._signal(gen, number)
        self._notify_systemd(f"STATUS={self._status_text()}")
        for waiter in gen.waiters:
            waiter.reply(
                True,
                f"generation {self.current.number if self.current else '?'} is "
                f"serving; sent {_signal_name(number)} to worker {gen.pid}",
            )
        gen.waiters = []

    def _on_exit(self, gen: Generation) -> None:
        status = reap(gen.process)
        if status is None:
            return
        self.selector.unregister(gen.process.pidfd)
        self.selector.unregister(gen.notifier.sock)
        os.close(gen.process.pidfd)
        gen.notifier.close()
        raw = f"status:{status} ({describe_status(status)})"
        fields = {"generation": gen.number, "pid": gen.pid, "exit_status": status}
        if self.stopping:
            self.old.remove(gen)
            self.log.event(Event.EXIT, f"worker {gen.pid} died, {raw}", **fields)
            self._write_status()
            self._finish_if_stopped()
        elif gen.state is State.STARTING:
            lived = time.monotonic() - gen.spawned_at
            if gen.start_timed_out:
                reason = (
                    f"no READY=1 within {self.config.ready_timeout:g}s (--ready-timeout), killed"
                )
            else:
                reason = f"exited before it was ready, {describe_status(status)}"
            self.log.event(
                Event.FAILED,
                f"new worker {gen.pid} seems to have failed to start, exit {raw}",
                priority=ERR,
                **fields,
            )
            # The hint once per streak of failures, not at every retry.
            quick = not gen.start_timed_out and lived < QUICK_EXIT_SECONDS and status != 0
            if quick and self.failures == 0:
                self.log.line(
                    f"hint: worker {gen.pid} exited {lived:.2f}s after its start; if it reported "
                    "'Address already in use', it binds the port itself instead of using the "
                    "sockets passed in SERVER_STARTER_PORT",
                    priority=NOTICE,
                )
            self.pending = None
            self._start_failed(gen.number, gen.is_reload, gen.waiters, reason)
        elif gen.state is State.SERVING:
            self.current = None
            self.log.event(
                Event.EXIT,
                f"worker {gen.pid} died unexpectedly with {raw}, restarting",
                priority=WARNING,
                **fields,
            )
            self._write_status()
            if self.pending is not None:
                self.log.line(f"generation {self.pending.number}, still starting, will take over")
            else:
                self._count_failure(gen.ready_at)
                self._schedule_retry(f"worker {gen.pid} died unexpectedly", after_death=True)
        else:
            self.old.remove(gen)
            self.log.event(Event.EXIT, f"old worker {gen.pid} died, {raw}", **fields)
            for waiter in gen.waiters:
                waiter.reply(True, f"old worker {gen.pid} exited before its signal")
            self._write_status()
            self._notify_systemd(f"STATUS={self._status_text()}")

    def _start_failed(
        self, number: int, is_reload: bool, waiters: list[Waiter], reason: str
    ) -> None:
        self._count_failure(self.current.ready_at if self.current else None)
        for waiter in waiters:
            waiter.reply(
                False,
                f"generation {number} failed to start: {reason}; "
                + (
                    "the old generation keeps serving"
                    if self.current
                    else "no generation is serving"
                ),
            )
        if is_reload:
            self._notify_systemd(
                f"READY=1\nSTATUS=reload failed: generation {number} {reason}; "
                f"{self._status_text()}"
            )
        if self.reload_queued:
            # Asked again while this one was starting: perhaps with a fix.
            self.reload_queued = False
            self._start_generation(is_reload=self.current is not None)
            return
        self._schedule_retry(f"generation {number} failed to start", after_death=False)

    def _count_failure(self, stable_since: float | None) -> None:
        # The backoff starts afresh once a generation has served a good while.
        if stable_since is not None and time.monotonic() - stable_since >= self.config.backoff_max:
            self.failures = 0
        self.failures += 1

    def _schedule_retry(self, why: str, after_death: bool) -> None:
        # A first unexpected death respawns at once (as Perl does); after that,
        # and after every failed start, wait --interval, doubling up to --backoff-max.
        steps = self.failures - (2 if after_death else 1)
        delay = (
            0.0
            if steps < 0
            else min(max(self.config.interval, 1.0) * 2**steps, self.config.backoff_max)
        )
        if delay <= 0:
            self._start_generation(is_reload=self.current is not None)
            return
        self.retry_at = time.monotonic() + delay
        self.log.line(
            f"{why}; retrying in {delay:g}s (failure {self.failures} in a row, "
            f"backoff doubles up to {self.config.backoff_max:g}s)",
            priority=WARNING,
        )
        self._notify_systemd(f"STATUS={self._status_text()}; {why}, retrying in {delay:g}s")

    def _kill(self, gen: Generation, number: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(gen.process.pidfd, number)

    def _signal(self, gen: Generation, number: signal.Signals) -> None:
        gen.signalled = True
        self.log.event(
            Event.DRAIN,
            f"sending {_signal_name(number)} to worker {gen.pid} (generation {gen.number})",
            generation=gen.number,
            pid=gen.pid,
        )
        self._kill(gen, number)

    def _finish_if_stopped(self) -> None:
        if self.stopping and not self.old:
            self.log.event(Event.STOP, "exiting")
            self.finished = True

    # -- derived facts --------------------------------------------------

    def _alive(self) -> list[Generation]:
        gens = [*self.old]
        if self.current is not None:
            gens.append(self.current)
        if self.pending is not None:
            gens.append(self.pending)
        return sorted(gens, key=lambda g: g.number)

    @staticmethod
    def _pid_list(gens: Sequence[Generation]) -> str:
        return ",".join(str(pid) for pid in sorted(g.pid for g in gens))

    def _status_text(self) -> str:
        parts = []
        if self.current is not None:
            parts.append(f"generation {self.current.number} (pid {self.current.pid}) serving")
        else:
            parts.append("no generation serving")
        if self.pending is not None:
            parts.append(f"generation {self.pending.number} starting")
        if self.old:
            parts.append("draining " + ", ".join(f"{g.number} (pid {g.pid})" for g in self.old))
        return "; ".join(parts)

    def _write_status(self) -> None:
        if self.config.status_file is None:
            return
        workers = [(g.number, g.pid) for g in self.old]
        if self.current is not None:
            workers.append((self.current.number, self.current.pid))
        try:
            write_status_file(self.config.status_file, workers)
        except OSError as err:
            self.log.line(
                f"failed to write status file {self.config.status_file}: {err.strerror}",
                priority=ERR,
            )

    def _effective_environ(self) -> dict[str, str]:
        return {**self.base_environ, **load_envdir(self._envdir())}

    def _envdir(self) -> str | None:
        return self.base_environ.get("ENVDIR") or None

    def _kill_old_delay(self) -> float:
        env = self._effective_environ()
        fallback = 5.0 if self._auto_restart_enabled(env) else 0.0
        return _number(env, "KILL_OLD_DELAY", fallback)

    @staticmethod
    def _auto_restart_enabled(env: Mapping[str, str]) -> bool:
        return env.get("ENABLE_AUTO_RESTART", "") not in ("", "0")

    def _auto_restart_interval(self) -> float:
        return (
            _number(
                self._effective_environ(),
                "AUTO_RESTART_INTERVAL",
                self.config.auto_restart_interval,
            )
            or self.config.auto_restart_interval
        )

    def _auto_restart_due(self) -> float | None:
        if (
            self.stopping
            or self.last_restart is None
            or self.pending is not None
            or not self._auto_restart_enabled(self.base_environ)
        ):
            return None
        interval = self._auto_restart_interval()
        # With old workers still draining, wait up to twice the interval (Perl).
        return self.last_restart + interval * (2 if self.old else 1)

    # -- systemd and the control socket ------------------------------------

    def _notify_systemd(self, message: str) -> None:
        if self.systemd_socket is None:
            return
        try:
            # Bounded: a manager that stops reading must not freeze the event loop.
            notify.send(message, self.systemd_socket, timeout=NOTIFY_TIMEOUT)
        except OSError as err:
            reason = err.strerror or f"its queue stayed full for {NOTIFY_TIMEOUT:g}s"
            where = self.systemd_socket
            self.log.line(f"cannot notify systemd at {where}: {reason}", priority=WARNING)

    def _on_control_connection(self, listener: object) -> None:
        assert self.config.control_socket is not None
        try:
            conn, _ = self.config.control_socket.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        uid = peer_uid(conn)
        if uid not in (0, os.getuid()):
            with contextlib.suppress(OSError):
                conn.sendall(b"error permission denied\n")
            conn.close()
            return
        waiter = Waiter(conn, self._drop_waiter)
        self.selector.register(conn, selectors.EVENT_READ, lambda _c: self._on_control_data(waiter))

    def _on_control_data(self, waiter: Waiter) -> None:
        try:
            chunk = waiter.conn.recv(256)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:  # the client gave up
            waiter.answered = True
            self._drop_waiter(waiter)
            return
        if waiter.buffer.endswith(b"\n"):
            return  # one request per connection; ignore anything after it
        waiter.buffer += chunk
        if b"\n" not in waiter.buffer:
            if len(waiter.buffer) > 256:
                waiter.reply(False, "request too long")
            return
        request = waiter.buffer.split(b"\n", 1)[0].decode(errors="replace").strip()
        waiter.buffer = waiter.buffer.split(b"\n", 1)[0] + b"\n"
        if request == "reload":
            self.request_reload(waiter, "received reload request, spawning a new worker")
        else:
            waiter.reply(False, f"unknown request {request!r}")

    def _drop_waiter(self, waiter: Waiter) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(waiter.conn)
        waiter.conn.close()
        for batch in (self.next_waiters, *(g.waiters for g in self._alive())):
            if waiter in batch:
                batch.remove(waiter)

    def _clean_up(self) -> None:
        signal.set_wakeup_fd(-1)
        for gen in self._alive():  # only after an internal error: never orphan a worker
            self._kill(gen, signal.SIGKILL)
        if self.config.status_file is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.config.status_file)
        if self.config.control_socket is not None:
            self.config.control_socket.close()
            if self.config.control_socket_path:
                remove_socket_path(self.config.control_socket_path)
        if self.config.remove_paths_on_exit:
            close_all(self.listeners)
