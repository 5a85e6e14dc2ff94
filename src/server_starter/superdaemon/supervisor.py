"""The superdaemon's state machine: generations of workers, reloads, the loop.

A generation moves through these states, and :meth:`Supervisor._enter` is
the one place where it does:

    STARTING --ready--> SERVING --replaced--> RETIRING --kill-old-delay--> DRAINING --exit--> REAPED
        |                 ^                      |   |                          |
        |                 +--its successor died--+   +--over --max-draining--> EVICTED
        |                    within the delay                                   |
        +--no READY=1 within --ready-timeout--> FAILED      KILLED <--still running after
        +--exit before ready--> REAPED (the start failed;                          --stop-timeout
                                        the serving one is untouched)

    STARTING --ready, in a rolling reload--> ROLLING --all its workers ready--> SERVING
                                               |  +--no further worker ready in time--> FAILED
                                               +--exit--> REAPED (the start failed, as above)

A FAILED generation was sent SIGKILL (no READY=1) or its drain's signal (a
roll stopped; SIGKILL after --stop-timeout), and its exit is awaited: it is
answered then, and the next start waits for it.  STARTING, ROLLING and
FAILED are the generations that have not served (``UNPROVEN``): their exit
is a failed start.

In a rolling reload (``--max-surge``, rolling.py), the new generation is
ROLLING from its first workers' readiness until it has all of them: the
serving one shrinks as it grows, and a roll that fails leaves the serving
one serving, grown back to its whole.

The kill-old-delay is the new generation's probation: the one it replaced
is kept, not yet signalled, and serves again if the new one dies in it (the
reload then fails, and nothing is restarted while the old one serves).

Each state owns at most one deadline (``Generation.deadline``); the loop
blocks until the earliest deadline or an event (a signal, a worker's exit,
its notify message, a control request).  With no deadline it blocks
indefinitely: an idle superdaemon makes no wake-ups.

Invariants: at most one generation is STARTING and at most one SERVING; a
reload request is answered exactly once.  "Serving" is a state: the one
generation that new connections are meant for (during the probation the
one it replaced, RETIRING, accepts on the same sockets too).  "Ready" is the worker's
``READY=1`` on its generation's own notify socket or, unless
``--require-notify``, being alive after ``--interval`` (Perl's rule).

Everything the supervisor does to the world goes through a :class:`Host`
(spawn, signal, clock, systemd, the status file), so tests drive it
in-process with a fake one; ``host.SystemHost`` is the real one.
"""

from __future__ import annotations

import abc
import functools
import os
import signal
from collections.abc import Callable, Iterator, Sequence

from ..contract import START_WORKERS_VARIABLE, WORKERS_FIELD, WorkerCount
from .environment import worker_environment
from .events import Checked, Exited, HostEvent, Notified, Requested, Signalled
from .generation import REPLACED, UNPROVEN, Generation, Resize, State
from .journal import ERR, NOTICE, WARNING, Event, EventLog, describe_status
from .reloads import UPGRADE, Answer, Ledger, Record, Reload
from .restart_policy import RestartPolicy
from .rolling import GROW, is_whole, next_steps, restore_step
from .settings import SettingError, Settings, Tunables, signal_name
from .spawn import SpawnError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs the resident superdaemon ~2 MB; annotations need no import
    from typing import TypedDict

    from .generation import GenerationState
    from .reloads import RecordState, ReloadState
    from .report import Status

    class SupervisorState(TypedDict):
        generations: list[GenerationState]
        generation_count: int
        failures: int
        retry_at: float | None
        last_restart: float | None
        stopping: bool
        reloads: list[ReloadState]
        next_reload: ReloadState | None
        record: RecordState  # absent from the first versions' hand-over


# A worker that exits this soon after its spawn with a failure often could
# not bind: it binds the port itself instead of using the inherited sockets.
# Its output goes straight to our stderr or the journal, unread by us, so
# the hint is worded as a condition, and left out for the exits that have a
# reason of their own: a signal, a usage error (2), a command that cannot
# run (126, 127).
QUICK_EXIT_SECONDS = 2.0
EXPLAINED_EXIT_CODES = frozenset({2, 126, 127})

OOM_KILLED = " by the OOM killer: the service is out of memory (MemoryMax=?)"

# Signals that end the superdaemon.  INT and QUIT drain like TERM (with
# TERM sent to the workers), so a Ctrl-C or Ctrl-\ never orphans a worker.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
# Every signal on_signal acts on: HUP reloads, USR2 upgrades in place.
HANDLED_SIGNALS = (signal.SIGHUP, signal.SIGUSR2, *STOP_SIGNALS)


class Upgrader(abc.ABC):
    """The in-place upgrade (serve.py owns what it hands over)."""

    @abc.abstractmethod
    def check(self) -> None:
        """Start checking the installed version, in the background: a
        :class:`Checked` event follows."""

    @abc.abstractmethod
    def checked(self, checked: Checked, answers: Sequence[Answer | None]) -> None:
        """Exec the installed version, or answer each of ``answers`` why not."""


class Host(abc.ABC):
    """What the supervisor needs of the operating system: the seam between
    the state machine and the world."""

    @abc.abstractmethod
    def now(self) -> float:
        """Monotonic seconds: CLOCK_MONOTONIC, the clock of systemd's
        ``MONOTONIC_USEC=``."""

    @abc.abstractmethod
    def wall_clock(self) -> float:
        """Unix seconds, for what the status and the metrics show."""

    @abc.abstractmethod
    def pid(self) -> int:
        """The superdaemon's own pid."""

    @abc.abstractmethod
    def read_envdir(self, path: str | None) -> dict[str, str] | None:
        """The envdir's variables (environment.load_envdir): none without an
        envdir, None if its directory is missing."""

    @abc.abstractmethod
    def spawn(self, number: int, environ: dict[str, str], settings: Settings) -> int:
        """Start generation ``number``'s worker with the listening sockets and
        return its pid; set ``NOTIFY_SOCKET`` in ``environ`` to the generation's
        own notify socket first.  Its exit and its messages come back as
        :meth:`Supervisor.on_exit` and :meth:`Supervisor.on_message`.  Raises
        SpawnError if it could not be started."""

    @abc.abstractmethod
    def signal(self, pid: int, number: signal.Signals) -> None:
        """Send a signal to a worker not yet reported exited."""

    @abc.abstractmethod
    def oom_kills(self) -> int | None:
        """How many of the service's processes the OOM killer has killed so
        far (None where the kernel does not say)."""

    @abc.abstractmethod
    def rank_as_serving(self, pid: int) -> None:
        """The worker's generation serves now: make it a less likely victim
        of the OOM killer than a starting one (see oom.py)."""

    @abc.abstractmethod
    def notify_systemd(self, message: str) -> None:
        """Tell the service manager (bounded; raises OSError)."""

    @abc.abstractmethod
    def write_status_file(self, path: str, workers: Sequence[tuple[int, int]]) -> None:
        """Replace the status file with ``GEN:PID`` lines (raises OSError)."""

    @abc.abstractmethod
    def write_metrics_file(self, path: str, text: str) -> None:
        """Replace the metrics file with ``text``, readable by all (raises OSError)."""

    @abc.abstractmethod
    def wait(self, deadline: float | None) -> Iterator[HostEvent]:
        """Block until something happens or until ``deadline``, then yield
        what happened, one event at a time: the next is read only once the
        supervisor has handled the one before (an in-place upgrade execs
        while handling one, and what is not read yet stays for the next
        image)."""


class Supervisor:
    """Reacts to the host's events (``handle``, ``on_*``) and to deadlines;
    owns every generation."""

    def __init__(
        self,
        settings: Settings,
        ports: str,
        fd_names: str | None,
        environ: dict[str, str],
        host: Host,
        log: EventLog,
    ) -> None:
        self.settings = settings
        self.ports = ports  # SERVER_STARTER_PORT
        self.fd_names = fd_names  # LISTEN_FDNAMES passed on, under systemd
        self.base_environ = environ
        self.host = host
        self.log = log
        # The state handed over in an in-place upgrade (see snapshot()).
        self.generations: list[Generation] = []  # alive, by number
        self.generation_count = 0
        self.stopping = False
        self.ledger = Ledger(host.now())
        # Auto-restart's interval and the kill-old-delay are read again from
        # the envdir when needed; whether auto-restart is on, only now.
        self.policy = RestartPolicy(settings, Tunables.from_environ(environ).auto_restart)
        self._metrics_failed = False  # said once, until a write succeeds again
        self._said_whole = False  # that a generation takes no part in rolling reloads
        # A roll's serving generation kept a worker past --stop-timeout: the
        # new one grows beside it, uncapped (not handed over: capped again).
        self.surge_lifted = False
        # Not handed over: the new image runs its own loop.
        self.finished = False
        # In-place upgrade (handover.py), given by whoever owns the resources.
        self.upgrader: Upgrader | None = None
        # Waiting for the installed version's check (None: no check running).
        self.upgrade_answers: list[Answer | None] | None = None

    # -- the loop ---------------------------------------------------------

    def start(self) -> None:
        self.log.event(Event.START, f"start_server (pid:{self.host.pid()}) starting now...")
        self._start_generation(Reload(), is_reload=False)

    def loop(self) -> int:
        self.publish()
        while not self.finished:
            for event in self.host.wait(self.next_deadline()):
                self.handle(event)
                if self.finished:
                    break
            self.on_time()
            self.publish()  # after each event only: idle, nothing is written
        return 0

    def handle(self, event: HostEvent) -> None:
        if isinstance(event, Signalled):
            self.on_signal(event.number)
        elif isinstance(event, Exited):
            self.on_exit(event.pid, event.status, event.oom_killed)
        elif isinstance(event, Notified):
            self.on_message(event.pid, event.fields)
        elif isinstance(event, Requested):
            self.on_request(event.command, event.answer)
        else:
            self.on_checked(event)

    def _timers(self) -> Iterator[tuple[float, Callable[[], None]]]:
        """Every deadline and what happens when it passes: each written once."""
        for gen in self.generations:
            if gen.deadline is not None:
                yield gen.deadline, functools.partial(self._deadline_passed, gen)
            if gen.resize is not None:
                yield gen.resize.deadline, functools.partial(self._resize_overdue, gen)
        if self.policy.retry_at is not None:
            yield self.policy.retry_at, self._retry
        auto_restart = self._auto_restart_at()
        if auto_restart is not None:
            yield auto_restart, self._auto_restart

    def next_deadline(self) -> float | None:
        return min((deadline for deadline, _ in self._timers()), default=None)

    def on_time(self) -> None:
        """Run what is due, earliest first.  Each action clears or moves its
        own deadline forward, and may make another one due (a kill-old-delay
        of 0 signals at once), so the timers are read again after each."""
        now = self.host.now()
        while not self.finished:
            due = [timer for timer in self._timers() if timer[0] <= now]
            if not due:
                break
            min(due, key=lambda timer: timer[0])[1]()
        self._steer()

    # -- events -------------------------------------------------------------

    def on_signal(self, number: int) -> None:
        if number == signal.SIGHUP:
            self.request_reload(None, "received HUP, spawning a new worker")
        elif number == signal.SIGUSR2:
            self.upgrade(None)
        elif number in STOP_SIGNALS:
            self.stop(signal.Signals(number))

    def on_request(self, command: str, answer: Answer) -> None:
        """A control socket request (see control.ControlServer)."""
        if command == "reload":
            self.request_reload(answer, "received reload request, spawning a new worker")
        elif command == "upgrade":
            self.upgrade(answer)
        elif command == "status":
            import json  # only here: the resident superdaemon does without it

            answer(True, json.dumps(self.status(), separators=(",", ":")))
        else:
            answer(False, f"unknown request {command!r}")

    def on_message(self, pid: int, fields: dict[str, str]) -> None:
        gen = self._generation(pid)
        if gen is None:
            return
        status = fields.get("STATUS")
        if status:
            self.log.line(f"worker {gen.pid} (generation {gen.number}) status: {status}")
        workers = fields.get(WORKERS_FIELD)
        if workers is not None:
            self._workers_reported(gen, workers)
            if gen.state in (State.STARTING, State.ROLLING):
                self._check_memory(gen)
        if fields.get("READY") == "1" and gen.state is State.STARTING:
            self._became_ready(gen, "READY=1")
        self._steer()

    def on_exit(self, pid: int, status: int, oom_killed: bool = False) -> None:
        """A worker exited with the raw wait ``status``; ``oom_killed``: the
        kernel's OOM killer killed it."""
        gen = self._generation(pid)
        if gen is None:
            return
        was = gen.state
        self._enter(gen, State.REAPED)
        described = describe_status(status) + (OOM_KILLED if oom_killed else "")
        raw = f"status:{status} ({described})"
        fields = {"generation": gen.number, "pid": gen.pid, "exit_status": status}
        on_probation = self._probation_of(gen) if was is State.SERVING else None
        self.ledger.record.exited(self._exit_reason(gen, was, on_probation, oom_killed))
        if self.stopping:
            self.log.event(Event.EXIT, f"worker {gen.pid} died, {raw}", **fields)
            self._finish_if_stopped()
        elif was in UNPROVEN:
            self.log.event(
                Event.FAILED,
                f"new worker {gen.pid} seems to have failed to start, exit {raw}",
                priority=ERR,
                **fields,
            )
            reason = self._why_never_ready(gen, was, status, described)
            self._start_failed(self.ledger.of(gen), gen.number, gen.is_reload, reason)
        elif on_probation is not None:
            self._probation_failed(gen, on_probation, described)
        elif was is State.SERVING:
            self.log.event(
                Event.EXIT,
                f"worker {gen.pid} died unexpectedly with {raw}, restarting",
                priority=WARNING,
                **fields,
            )
            starting = self._pending()
            if starting is not None:
                self.log.line(f"generation {starting.number}, still starting, will take over")
            else:
                self._count_death(gen)
                self._schedule_retry(f"worker {gen.pid} died unexpectedly", after_death=True)
        else:
            self.log.event(Event.EXIT, f"old worker {gen.pid} died, {raw}", **fields)
            self.notify_systemd(f"STATUS={self.status_text()}")
        self._settle_reloads()
        self._steer()

    # -- requests -----------------------------------------------------------

    def request_reload(self, answer: Answer | None, announcement: str | None) -> None:
        if self.stopping:
            if answer is not None:
                answer(False, "start_server is stopping")
            return
        if announcement is not None:
            self.log.event(Event.RELOAD, announcement)
        starting = self._pending()
        if starting is None:
            reload = Reload()
            if answer is not None:
                reload.enlist(answer)
            self._start_generation(reload, is_reload=self._serving() is not None)
            return
        if self.ledger.join_next(answer):
            self.log.line(
                f"generation {starting.number} is still starting; "
                "will reload again once it is ready"
            )

    def upgrade(self, answer: Answer | None) -> None:
        """Become the installed version in place (handover.py); workers untouched."""
        refusal = None
        if self.stopping:
            refusal = "start_server is stopping"
        elif self.upgrader is None:
            refusal = "this start_server cannot upgrade itself in place"
        if refusal is not None:
            if answer is not None:
                answer(False, refusal)
            return
        assert self.upgrader is not None
        if answer is not None:
            answer.waits_for = UPGRADE
        if self.upgrade_answers is not None:
            self.upgrade_answers.append(answer)  # the check under way answers it too
            return
        self.upgrade_answers = [answer]
        self.upgrader.check()

    def on_checked(self, checked: Checked) -> None:
        """The installed version's check is done: upgrade, or say why not.
        (The loop went on meanwhile: the check may take seconds.)"""
        answers, self.upgrade_answers = self.upgrade_answers or [], None
        if self.upgrader is None or self.stopping:
            return  # stop() answered them
        self.upgrader.checked(checked, answers)

    def stop(self, received: signal.Signals) -> None:
        alive = list(self.generations)
        if self.stopping:
            self.log.line(
                f"received {signal_name(received)} while stopping; still waiting for "
                f"workers:{self._pid_list(alive)}"
            )
            return
        self.stopping = True
        self.policy.retry_at = None
        self.notify_systemd("STOPPING=1\nSTATUS=stopping: draining every generation")
        to_send = self.settings.signal_on_term if received == signal.SIGTERM else signal.SIGTERM
        self.log.event(
            Event.STOP,
            f"received {signal_name(received)}, sending {signal_name(to_send)} "
            f"to all workers:{self._pid_list(alive)}"
            if alive
            else f"received {signal_name(received)}, no worker running",
        )
        self._settle_reloads()
        for answer in self.upgrade_answers or ():
            if answer is not None:
                answer(False, "start_server is stopping")
        if self.upgrade_answers is not None:
            self.upgrade_answers = []  # the check's result is dropped when it comes
        for gen in alive:
            if gen.state in (State.STARTING, State.ROLLING, State.SERVING, State.RETIRING):
                self._enter(gen, State.DRAINING, sent=to_send)
        self._finish_if_stopped()

    def _finish_if_stopped(self) -> None:
        if self.stopping and not self.generations:
            self.log.event(Event.STOP, "exiting")
            self.finished = True

    # -- the generation's lifecycle ---------------------------------------

    def _enter(
        self, gen: Generation, state: State, how: str = "", sent: signal.Signals | None = None
    ) -> None:
        """The one place a generation changes state: its deadline, its log
        line, its signal, the status file and ``STATUS=``."""
        now = self.host.now()
        was_due = gen.deadline
        was, gen.state, gen.deadline, gen.since = gen.state, state, None, now
        if state not in (State.SERVING, State.ROLLING):
            gen.resize = None  # no longer grown or shrunk: what it does now is its own
        if state is State.STARTING:
            gen.deadline = gen.spawned_at + self.settings.ready_wait
            self.log.event(
                Event.SPAWN, f"starting new worker {gen.pid}", generation=gen.number, pid=gen.pid
            )
        elif state is State.ROLLING:
            assert gen.workers is not None
            self.log.event(
                Event.READY,
                f"worker {gen.pid} (generation {gen.number}) is ready with "
                f"{gen.workers.ready} of {gen.workers.full} workers ({how}); rolling it in, "
                f"{self.settings.max_surge} at a time (--max-surge)",
                generation=gen.number,
                pid=gen.pid,
            )
            self.notify_systemd(f"STATUS={self.status_text()}")
        elif state is State.SERVING:
            if was in (State.STARTING, State.ROLLING):
                gen.ready_at = now
                gen.streak_at_ready = self.policy.ready(now)
                became = "is ready"
            else:  # RETIRING, kept: its successor died on probation
                became = "serves again"
            self.log.event(
                Event.READY,
                f"worker {gen.pid} (generation {gen.number}) {became} ({how})",
                generation=gen.number,
                pid=gen.pid,
            )
            self.host.rank_as_serving(gen.pid)
            self._write_status()
            # systemd hears of the new generation before anyone is answered, so
            # `systemctl reload` never returns ahead of the unit's status.
            self.notify_systemd(f"READY=1\nSTATUS={self.status_text()}")
        elif state is State.RETIRING:
            delay = self._tunables().kill_old_delay
            gen.deadline = now + delay
            if delay > 0:
                self.log.line(f"sleeping {delay:g} secs before killing old workers")
        elif state is State.DRAINING:
            gen.deadline = now + self.settings.stop_timeout
            sent = sent or self.settings.signal_on_hup
            self.log.event(
                Event.DRAIN,
                f"sending {signal_name(sent)} to worker {gen.pid} (generation {gen.number})",
                generation=gen.number,
                pid=gen.pid,
            )
            self.host.signal(gen.pid, sent)
            if not self.stopping:
                self.notify_systemd(f"STATUS={self.status_text()}")
        elif state is State.EVICTED:
            # SIGKILL --stop-timeout after this signal, or sooner if its drain's was due.
            kill_at = now + self.settings.stop_timeout
            gen.deadline = kill_at if was_due is None else min(kill_at, was_due)
            sent = self.settings.signal_on_term
            self.log.event(
                Event.DRAIN,
                f"more than {self.settings.max_draining} old generations draining "
                f"(--max-draining): evicting the oldest, generation {gen.number}: "
                f"sending {signal_name(sent)} to worker {gen.pid}",
                priority=WARNING,
                generation=gen.number,
                pid=gen.pid,
            )
            self.host.signal(gen.pid, sent)
        elif state is State.FAILED:
            # Stopped with its drain's signal (a roll), SIGKILL after
            # --stop-timeout; or at once with SIGKILL (no READY=1 in time).
            sent = sent or signal.SIGKILL
            if sent != signal.SIGKILL:
                gen.deadline = now + self.settings.stop_timeout
            self.log.event(
                Event.KILL if sent == signal.SIGKILL else Event.DRAIN,
                f"worker {gen.pid} (generation {gen.number}) {how}, sending {signal_name(sent)}",
                priority=WARNING,
                generation=gen.number,
                pid=gen.pid,
            )
            self.host.signal(gen.pid, sent)
        elif state is State.KILLED:
            self.log.event(
                Event.KILL,
                f"worker {gen.pid} (generation {gen.number}) still running "
                f"{self.settings.stop_timeout:g}s after its signal, sending KILL",
                priority=WARNING,
                generation=gen.number,
                pid=gen.pid,
            )
            self.host.signal(gen.pid, signal.SIGKILL)
        elif state is State.REAPED:
            self.generations.remove(gen)
            if was not in UNPROVEN:
                self._write_status()

    def _deadline_passed(self, gen: Generation) -> None:
        if gen.state is State.STARTING:
            if self.settings.require_notify:
                timeout = self.settings.ready_timeout
                gen.failure = f"no READY=1 within {timeout:g}s (--ready-timeout), killed"
                how = f"sent no READY=1 within {timeout:g}s (--ready-timeout)"
                self._enter(gen, State.FAILED, how)
            else:
                self._became_ready(gen, f"alive after {self.settings.interval:g}s")
        elif gen.state is State.RETIRING:
            self.log.event(Event.DRAIN, "killing old workers")
            self._enter(gen, State.DRAINING)
            self._settle_reloads()
        elif gen.state in (State.DRAINING, State.EVICTED):
            self._enter(gen, State.KILLED)
        elif gen.state is State.FAILED:
            self._enter(gen, State.FAILED, "still running after --stop-timeout", signal.SIGKILL)

    def _start_generation(self, reload: Reload, is_reload: bool) -> None:
        self.policy.retry_at = None
        self.generation_count += 1
        number = self.generation_count
        self.ledger.begin(reload)
        if is_reload:
            reload.started_at = self.host.now()
            self.notify_reloading(f"reloading: starting generation {number}")
        envdir = self.settings.envdir
        values = self.host.read_envdir(envdir)
        if values is None:
            # Perl's behaviour (start without the envdir's variables), said out loud.
            self.log.line(
                f"envdir {envdir} is missing; generation {number} starts without its variables",
                priority=WARNING,
            )
        env = worker_environment(self.base_environ, values or {}, self.ports, number, self.fd_names)
        serving = self._serving()
        surge = self.settings.max_surge
        if is_reload and surge is not None and serving is not None and serving.workers is not None:
            env[START_WORKERS_VARIABLE] = str(surge)  # a roll: grown from there
        try:
            pid = self.host.spawn(number, env, self.settings)
        except SpawnError as err:
            self.log.event(
                Event.FAILED,
                f"new worker (generation {number}) failed to start: {err}",
                priority=ERR,
                generation=number,
            )
            reload.number = number
            self._start_failed([reload], number, is_reload, str(err))
            return
        reload.number = number
        gen = Generation(number, pid, self.host.now(), is_reload)
        gen.oom_kills_at_spawn = self.host.oom_kills()
        reload.generation = gen
        self.generations.append(gen)
        self._enter(gen, State.STARTING)
        if not is_reload:
            self.notify_systemd(f"STATUS=starting generation {number}")

    def _became_ready(self, gen: Generation, how: str) -> None:
        previous = self._serving()
        if gen.state is State.STARTING and self._rolls_in(gen, previous):
            self._enter(gen, State.ROLLING, how)
            return
        for reload in self.ledger.of(gen):
            reload.replaced = previous
        self._enter(gen, State.SERVING, how)
        if previous is not None or gen.is_reload:
            self.log.event(
                Event.DRAIN,
                f"new worker is now running, sending "
                f"{signal_name(self.settings.signal_on_hup)} to old workers:"
                f"{previous.pid if previous is not None else 'none'}",
            )
        if previous is not None:
            self._enter(previous, State.RETIRING)
            if previous.deadline is not None and previous.deadline <= self.host.now():
                self._deadline_passed(previous)  # no --kill-old-delay: signalled at once
            self._cap_draining()
        self._settle_reloads()
        self._start_next_reload()

    # -- the rolling reload (--max-surge, rolling.py) -----------------------------

    def _rolls_in(self, gen: Generation, serving: Generation | None) -> bool:
        """Whether ``gen``, ready, rolls in rather than replacing ``serving`` whole."""
        if self.settings.max_surge is None:
            return False
        if serving is None:
            # The one it was to replace died meanwhile: one started small
            # still grows to its whole before it serves alone.
            return gen.workers is not None and not is_whole(gen)
        if gen.workers is None or serving.workers is None:
            if not self._said_whole:
                self._said_whole = True
                silent = gen if gen.workers is None else serving
                self.log.line(
                    f"generation {silent.number} reports no workers ({WORKERS_FIELD}): "
                    "it takes part in no rolling reload; reloads overlap whole "
                    "generations (said once)",
                    priority=NOTICE,
                )
            return False
        self.surge_lifted = False
        if is_whole(gen):
            return False
        if serving.whole is None:
            serving.whole = serving.workers.target
        return True

    def _workers_reported(self, gen: Generation, value: str) -> None:
        workers = WorkerCount.parse(value)
        if workers is None:
            self.log.line(
                f"worker {gen.pid} (generation {gen.number}) sent {WORKERS_FIELD}={value!r}, "
                "not READY/TARGET/FULL: ignored",
                priority=WARNING,
            )
            return
        gen.workers = workers
        if gen.resize is not None and gen.resize.done(workers):
            whole = gen.whole if gen.resize.grows and gen.state is State.SERVING else None
            gen.resize = None
            if whole is not None and min(workers.ready, workers.target) >= whole:
                self.log.line(
                    f"worker {gen.pid} (generation {gen.number}) is whole again "
                    f"({workers.ready} of {workers.full} workers ready)"
                )

    def _steer(self) -> None:
        """Send the roll's next signals, or finish it; grow back a serving
        generation a failed roll left short."""
        if self.stopping:
            return
        serving = self._serving()
        rolling = next((g for g in self.generations if g.state is State.ROLLING), None)
        if rolling is not None:
            assert rolling.workers is not None and self.settings.max_surge is not None
            if is_whole(rolling):
                full = rolling.workers.full
                self._became_ready(rolling, f"all {full} workers ready")
                return
            surge = rolling.workers.full if self.surge_lifted else self.settings.max_surge
            others = sum(
                g.workers.ready
                for g in self.generations
                if g is not serving and g is not rolling and g.workers is not None
            )
            for gen, sent in next_steps(serving, rolling, surge, others):
                self._resize(gen, sent)
        elif serving is not None and restore_step(serving) is not None:
            self._resize(serving, GROW)

    def _resize(self, gen: Generation, sent: signal.Signals) -> None:
        assert gen.workers is not None
        wait = self.settings.ready_timeout if sent == GROW else self.settings.stop_timeout
        gen.resize = Resize(sent, gen.workers.target, self.host.now() + wait)
        what = "one more worker" if sent == GROW else "one worker fewer"
        self.log.line(
            f"sending {signal_name(sent)} to worker {gen.pid} (generation {gen.number}, "
            f"{gen.workers.ready} of {gen.workers.full} workers ready): {what}"
        )
        self.host.signal(gen.pid, sent)

    def _resize_overdue(self, gen: Generation) -> None:
        resize, workers = gen.resize, gen.workers
        assert resize is not None and workers is not None
        gen.resize = None
        if gen.state is State.ROLLING and resize.grows:
            reason = (
                f"had {workers.ready} of {workers.full} workers ready, and no more within "
                f"{self.settings.ready_timeout:g}s (--ready-timeout)"
            )
            self._stop_unproven(gen, reason, f" {reason}: the roll stops", "stopped")
            return
        waited = self.settings.ready_timeout if resize.grows else self.settings.stop_timeout
        rolling = next((g for g in self.generations if g.state is State.ROLLING), None)
        going_on = ""
        if not resize.grows and rolling is not None:
            self.surge_lifted = True
            going_on = f"; generation {rolling.number} grows to its whole beside it"
        self.log.line(
            f"worker {gen.pid} (generation {gen.number}) did not answer its "
            f"{signal_name(resize.signal)} within {waited:g}s ({workers.ready} of "
            f"{workers.full} workers ready){going_on}",
            priority=WARNING,
        )

    def _check_memory(self, gen: Generation) -> None:
        """A worker of a generation not serving yet has exited: if the OOM
        killer killed anything of the service since its spawn, the service
        cannot hold it: it fails now, stopped gracefully, instead of having
        its workers killed and respawned until --ready-timeout."""
        kills, before = self.host.oom_kills(), gen.oom_kills_at_spawn
        if kills is None or before is None or kills <= before:
            return
        killed = kills - before
        processes = "process" if killed == 1 else "processes"
        reason = f"{killed} {processes} of the service killed{OOM_KILLED}"
        self._stop_unproven(gen, reason, f": {reason}", "is out of memory")

    def _stop_unproven(self, gen: Generation, reason: str, said: str, how: str) -> None:
        """Fail a generation that has not served, while it runs: logged now
        (``said`` follows its name), answered with ``reason`` at its exit,
        stopped gracefully meanwhile (it may be serving some requests)."""
        gen.failure = reason
        self.log.event(
            Event.FAILED,
            f"worker {gen.pid} (generation {gen.number}){said}",
            priority=ERR,
            generation=gen.number,
            pid=gen.pid,
        )
        self._enter(gen, State.FAILED, how, self.settings.signal_on_hup)

    # -- probation: the kill-old-delay --------------------------------------------

    def _probation_of(self, gen: Generation) -> Generation | None:
        """The generation ``gen`` replaced, if it is still kept (RETIRING):
        ``gen`` is then on probation."""
        for reload in self.ledger.in_flight:
            kept = reload.replaced
            if reload.generation is gen and kept is not None and kept.state is State.RETIRING:
                return kept
        return None

    def _probation_failed(self, gen: Generation, kept: Generation, described: str) -> None:
        """``gen`` died while the one it replaced was kept: that one serves
        again, never signalled, and the reload fails.  Nothing is restarted:
        a healthy generation serves; the next reload tries the new code again."""
        assert gen.ready_at is not None
        lived = self.host.now() - gen.ready_at
        reason = f"died {lived:.1f}s after it was ready, {described}, within --kill-old-delay"
        self.ledger.failed(gen, reason)
        self.policy.failed()
        self.log.event(
            Event.FAILED,
            f"worker {gen.pid} (generation {gen.number}) {reason}; "
            f"generation {kept.number} (pid {kept.pid}) keeps serving",
            priority=ERR,
            generation=gen.number,
            pid=gen.pid,
        )
        self._enter(kept, State.SERVING, f"kept: generation {gen.number} died on probation")
        self.notify_systemd(
            f"STATUS=reload failed: generation {gen.number} {reason}; {self.status_text()}"
        )

    # -- --max-draining -----------------------------------------------------------

    def _cap_draining(self) -> None:
        """Over --max-draining, stop the oldest replaced generations."""
        limit = self.settings.max_draining
        if limit is None:
            return
        old = [g for g in self.generations if g.state in (State.RETIRING, State.DRAINING)]
        for gen in old[: max(0, len(old) - limit)]:
            self._enter(gen, State.EVICTED)

    def _exit_reason(
        self, gen: Generation, was: State, on_probation: Generation | None, oom_killed: bool
    ) -> str:
        """The reason a worker's exit is counted under (EXIT_REASONS)."""
        if oom_killed:
            return "oom_killed"
        if self.stopping:
            return "stopped"
        if was in UNPROVEN:
            return "failed_start"
        if on_probation is not None:
            return "probation"
        if was is State.KILLED:
            return "killed"
        if was is State.EVICTED:
            return "evicted"
        if was is State.DRAINING:
            return "drained"
        return "died"

    def _why_never_ready(self, gen: Generation, was: State, status: int, described: str) -> str:
        if was is State.ROLLING and gen.workers is not None:
            workers = gen.workers
            return (
                f"exited during its roll with {workers.ready} of {workers.full} "
                f"workers ready, {described}"
            )
        if was is State.FAILED and gen.failure is not None:
            return gen.failure
        lived = self.host.now() - gen.spawned_at
        # The hint once per streak of failures, not at every retry.
        first = self.policy.failures == 0
        if lived < QUICK_EXIT_SECONDS and first and _may_have_bound(status):
            self.log.line(
                f"hint: worker {gen.pid} exited {lived:.2f}s after its start; if it "
                "reported 'Address already in use', it binds the port itself instead "
                "of using the sockets passed in SERVER_STARTER_PORT",
                priority=NOTICE,
            )
        return f"exited before it was ready, {described}"

    def _start_failed(
        self, reloads: Sequence[Reload], number: int, is_reload: bool, reason: str
    ) -> None:
        """Generation ``number`` exited before it served, or could not be spawned."""
        self.policy.failed()
        for reload in reloads:
            reload.failure = reload.failure or reason
        if is_reload:
            self.notify_systemd(
                f"READY=1\nSTATUS=reload failed: generation {number} {reason}; {self.status_text()}"
            )
        self._settle_reloads()
        if self.ledger.next is not None:
            # Asked again while this one was starting: perhaps with a fix.
            self._start_next_reload()
            return
        self._schedule_retry(f"generation {number} failed to start", after_death=False)

    def _start_next_reload(self) -> None:
        if self.ledger.next is not None and self._pending() is None:
            reload = self.ledger.take_next()
            assert reload is not None
            self._start_generation(reload, is_reload=self._serving() is not None)

    # -- reloads ------------------------------------------------------------

    def _settle_reloads(self) -> None:
        """Answer every reload whose outcome is known."""
        self.ledger.settle(self._outcome, self.host.now(), self.stopping)

    def _outcome(self, reload: Reload) -> tuple[bool, str] | None:
        gen, old = reload.generation, reload.replaced
        if self.stopping:
            return False, "start_server is stopping"
        if reload.number is None:
            return None  # not started yet
        serving = self._serving()
        if reload.failure is not None:
            if gen is not None and gen.ready_at is not None:
                # It died on probation: the one it replaced serves.
                assert old is not None
                return False, (
                    f"generation {gen.number} {reload.failure}; generation {old.number} "
                    f"(pid {old.pid}) keeps serving"
                )
            keeps = "the old generation keeps serving" if serving else "no generation is serving"
            return False, f"generation {reload.number} failed to start: {reload.failure}; {keeps}"
        if gen is None or gen.ready_at is None:
            return None  # starting, rolling, or failed and not exited yet
        if old is None:
            return True, f"generation {gen.number} (pid {gen.pid}) is ready"
        if old.state in REPLACED and old.state is not State.RETIRING:
            now_serving = (
                f"generation {serving.number} is serving"
                if serving is not None
                else f"generation {gen.number} served, none serves now"
            )
            sent = (
                self.settings.signal_on_term
                if old.state is State.EVICTED
                else self.settings.signal_on_hup
            )
            return True, f"{now_serving}; sent {signal_name(sent)} to worker {old.pid}"
        if old.state is State.REAPED:
            return True, f"old worker {old.pid} exited before its signal"
        return None  # RETIRING: waits for --kill-old-delay

    # -- backoff and auto-restart (restart_policy.py) ------------------------------

    def _count_death(self, gen: Generation) -> None:
        assert gen.ready_at is not None
        self.policy.died(self.host.now() - gen.ready_at, gen.streak_at_ready)

    def _schedule_retry(self, why: str, after_death: bool) -> None:
        delay = self.policy.delay(after_death)
        if delay <= 0:
            self._retry()
            return
        self.policy.retry_at = self.host.now() + delay
        failures, longest = self.policy.failures, self.settings.backoff_max
        self.log.line(
            f"{why}; retrying in {delay:g}s (failure {failures} in a row, "
            f"backoff doubles up to {longest:g}s)",
            priority=WARNING,
        )
        self.notify_systemd(f"STATUS={self.status_text()}; {why}, retrying in {delay:g}s")

    def _retry(self) -> None:
        self.policy.retry_at = None
        self._start_generation(Reload(), is_reload=self._serving() is not None)

    def _auto_restart_at(self) -> float | None:
        if self.stopping or self._pending() is not None or not self.policy.auto_restart:
            return None
        interval = self._tunables().auto_restart_interval
        return self.policy.auto_restart_at(interval, forced=bool(self._old()))

    def _auto_restart(self) -> None:
        self.log.event(
            Event.RELOAD,
            f"autorestart triggered ({'forced, ' if self._old() else ''}"
            f"interval={self._tunables().auto_restart_interval:g})",
        )
        self.policy.last_restart = self.host.now()  # once per interval, even if it fails
        self.request_reload(None, None)

    def _tunables(self) -> Tunables:
        environ = {**self.base_environ, **(self.host.read_envdir(self.settings.envdir) or {})}
        try:
            return Tunables.from_environ(environ)
        except SettingError as err:
            self.log.line(f"envdir: {err}; using the defaults", priority=WARNING)
            return Tunables.from_environ({})

    # -- what others see ------------------------------------------------------

    def _generation(self, pid: int) -> Generation | None:
        return next((g for g in self.generations if g.pid == pid), None)

    def _pending(self) -> Generation | None:
        """The generation that has not served yet: starting, rolling, or
        failed and not exited yet (the next start waits for its exit)."""
        return next((g for g in self.generations if g.state in UNPROVEN), None)

    def _serving(self) -> Generation | None:
        """The newest one serving (the one it replaces retires in the same step)."""
        serving = [g for g in self.generations if g.state is State.SERVING]
        return serving[-1] if serving else None

    def _old(self) -> list[Generation]:
        """Replaced generations, retiring or draining."""
        return [g for g in self.generations if g.state in REPLACED]

    @staticmethod
    def _pid_list(gens: Sequence[Generation]) -> str:
        return ",".join(str(pid) for pid in sorted(g.pid for g in gens))

    def status_text(self) -> str:
        serving, starting, old = self._serving(), self._pending(), self._old()
        parts = [
            f"generation {serving.number} (pid {serving.pid}) serving"
            if serving is not None
            else "no generation serving"
        ]
        if starting is not None and starting.state is State.ROLLING:
            assert starting.workers is not None
            parts.append(
                f"generation {starting.number} rolling in "
                f"({starting.workers.ready} of {starting.workers.full} workers ready)"
            )
        elif starting is not None:
            parts.append(f"generation {starting.number} starting")
        if old:
            parts.append("draining " + ", ".join(f"{g.number} (pid {g.pid})" for g in old))
        return "; ".join(parts)

    def _write_status(self) -> None:
        path = self.settings.status_file
        if path is None:
            return
        workers = [(g.number, g.pid) for g in self.generations if g.state not in UNPROVEN]
        try:
            self.host.write_status_file(path, workers)
        except OSError as err:
            self.log.line(f"failed to write status file {path}: {err.strerror}", priority=ERR)

    def status(self) -> Status:
        """The status as plain data (report.status_of)."""
        from .report import status_of  # only when asked: it costs the resident superdaemon

        serving = self._serving()
        kept = self._probation_of(serving) if serving is not None else None
        now = self.host.now()
        return status_of(
            self.generations,
            serving,
            kept.deadline if kept is not None else None,
            self.ledger,
            self.policy,
            self.stopping,
            self.host.pid(),
            now,
            self.host.wall_clock() - now,
        )

    def publish(self) -> None:
        """Write the metrics file, if one is asked for (after each event)."""
        path = self.settings.metrics_file
        if path is None:
            return
        from .report import metrics_text  # only with --metrics-file: it costs memory

        try:
            text = metrics_text(self.status(), self.settings.metrics_labels)
            self.host.write_metrics_file(path, text)
        except OSError as err:
            if not self._metrics_failed:
                self.log.line(f"failed to write metrics file {path}: {err.strerror}", priority=ERR)
            self._metrics_failed = True
        else:
            self._metrics_failed = False

    def notify_systemd(self, message: str) -> None:
        try:
            self.host.notify_systemd(message)
        except OSError as err:
            self.log.line(f"cannot notify systemd {err}", priority=WARNING)

    def notify_reloading(self, status: str) -> None:
        """``RELOADING=1``, always with the ``MONOTONIC_USEC=`` that systemd
        253 and later match a reload by (without it ``systemctl reload`` of a
        notify-reload unit waits out its timeout); a ``READY=1`` follows in
        every case, the reload done, failed or superseded."""
        usec = int(self.host.now() * 1_000_000)
        self.notify_systemd(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS={status}")

    # -- the state, as plain data -----------------------------------------------

    def snapshot(self, clients: Sequence[Answer] = ()) -> SupervisorState:
        """The state as plain data (JSON-serialisable): the generations,
        counters and backoff, and the reloads in flight with the clients
        waiting for each, named by their place in ``clients`` (those the
        hand-over lists; any other is left out)."""
        ledger, policy = self.ledger, self.policy
        following = ledger.next
        return {
            "generations": [g.to_dict() for g in self.generations],
            "generation_count": self.generation_count,
            "failures": policy.failures,
            "retry_at": policy.retry_at,
            "last_restart": policy.last_restart,
            "stopping": self.stopping,
            "reloads": [ledger.reload_data(r, clients) for r in ledger.in_flight],
            "next_reload": ledger.reload_data(following, clients) if following else None,
            "record": ledger.record.to_dict(),
        }

    def restore(self, data: SupervisorState, clients: Sequence[Answer] = ()) -> None:
        """Take over the state ``snapshot()`` wrote, ``clients`` in the places
        it named them by."""
        self.generations = [Generation.from_dict(g) for g in data["generations"]]
        self.generation_count = data["generation_count"]
        self.policy.failures = data["failures"]
        self.policy.retry_at = data["retry_at"]
        self.policy.last_restart = data["last_restart"]
        self.stopping = data["stopping"]
        by_number = {g.number: g for g in self.generations}

        def numbered(number: int | None, was_ready: bool) -> Generation | None:
            if number is None:
                return None
            # One gone by now (a failed start, an old one exited) is rebuilt as reaped.
            gone = Generation(number, -1, 0.0, True, State.REAPED)
            gone.ready_at = 0.0 if was_ready else None
            return by_number.get(number, gone)

        ledger = self.ledger
        ledger.in_flight = [ledger.reload_from(r, clients, numbered) for r in data["reloads"]]
        following = data["next_reload"]
        ledger.next = ledger.reload_from(following, clients, numbered) if following else None
        record = data.get("record")
        if record is not None:  # 0.1 kept none: the record starts at the upgrade
            ledger.record = Record.from_dict(record)


def _may_have_bound(status: int) -> bool:
    """Whether an early exit with this wait status may be a failed bind."""
    if not os.WIFEXITED(status):
        return False
    code = os.WEXITSTATUS(status)
    return code != 0 and code not in EXPLAINED_EXIT_CODES
