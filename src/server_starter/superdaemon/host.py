"""The real :class:`~server_starter.supervisor.Host`: processes, signals and
sockets of this machine, and the one ``select`` loop that waits on them.

Waited on: the signal self-pipe, each worker's pidfd (readable once it has
exited) and its generation's notify socket, and the control socket with
its connections.  Signal handlers only write the signal number into the
self-pipe (``signal.set_wakeup_fd``), so every signal is handled in the
loop, in order, outside signal context.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from .. import contract
from . import notify, oom
from .control import ControlServer, replace_file, write_status_file
from .environment import read_envdir
from .events import Checked, Exited, HostEvent, Notified, Signalled
from .settings import Settings
from .spawn import reap, resource_error, spawn
from .supervisor import HANDLED_SIGNALS, Host

# How long a status message to systemd may wait for room in its queue.
NOTIFY_TIMEOUT = 2.0

# What the loop calls when a descriptor is readable: it reads, and says what happened.
Handler = Callable[[], Iterable[HostEvent]]

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs the resident superdaemon ~2 MB; annotations need no import
    from typing import TypedDict

    class WorkerState(TypedDict):
        """A worker handed over: its pid and its generation's notify socket."""

        pid: int
        notify_fd: int
        notify_address: str


class _Worker:
    __slots__ = ("notifier", "pid", "pidfd", "sent_kill")

    def __init__(self, pid: int, pidfd: int, notifier: notify.NotifyReceiver) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.notifier = notifier
        self.sent_kill = False  # a SIGKILL of ours is not the OOM killer's


def _has_terminal() -> bool:
    """Whether we run in a terminal's session: one of our standard streams
    is the terminal, whose Ctrl-C reaches our process group."""
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            os.tcgetpgrp(fd)
            return True
    return False


class SystemHost(Host):
    def __init__(
        self,
        listening_fds: Sequence[int],
        systemd_socket: str | None,
        control: ControlServer | None,
        rank_for_oom: bool = True,
    ) -> None:
        self.listening_fds = list(listening_fds)
        self.systemd_socket = systemd_socket
        self.selector = selectors.DefaultSelector()
        self.workers: dict[int, _Worker] = {}
        # Ctrl-C in a terminal signals its whole foreground process group:
        # workers in ours would get SIGINT straight from it and stop their
        # own way (gunicorn's quick shutdown, a KeyboardInterrupt), before
        # any drain.  In groups of their own they get only what we send.
        self.workers_apart = _has_terminal()
        self._wakeup_read, self._wakeup_write = socket.socketpair()
        self.serving_score = oom.serving_score(oom.own_score())
        self.rank_for_oom = rank_for_oom  # not with --keep-oom-score
        self.oom_kills_seen = oom.kills()
        if control is not None:
            control.attach(self._register, self._unregister)

    def _register(self, fileobj: socket.socket | int, handler: Handler) -> None:
        self.selector.register(fileobj, selectors.EVENT_READ, handler)

    def _unregister(self, fileobj: socket.socket | int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(fileobj)

    # -- signals -------------------------------------------------------------

    def catch_signals(self) -> None:
        self._wakeup_read.setblocking(False)
        self._wakeup_write.setblocking(False)
        signal.set_wakeup_fd(self._wakeup_write.fileno(), warn_on_full_buffer=False)
        for number in HANDLED_SIGNALS:
            # The handler does nothing: the wakeup fd carries the signal number.
            signal.signal(number, lambda *_: None)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self._register(self._wakeup_read, self._on_signals)

    def _on_signals(self) -> list[HostEvent]:
        try:
            data = self._wakeup_read.recv(4096)
        except BlockingIOError:
            return []
        return [Signalled(number) for number in data]

    # -- the Host interface ---------------------------------------------------

    def now(self) -> float:
        return time.monotonic()

    def wall_clock(self) -> float:
        return time.time()

    def pid(self) -> int:
        return os.getpid()

    def read_envdir(self, path: str | None) -> dict[str, str] | None:
        return read_envdir(path)

    def spawn(self, number: int, environ: dict[str, str], settings: Settings) -> int:
        try:
            notifier = notify.NotifyReceiver(f"gen{number}")
        except OSError as err:
            raise resource_error(err) from None
        environ["NOTIFY_SOCKET"] = notifier.address
        try:
            process = spawn(
                settings.command,
                environ,
                self.listening_fds,
                settings.directory,
                own_process_group=self.workers_apart,
                oom_score_adj=oom.STARTING_SCORE if self.rank_for_oom else None,
            )
        except BaseException:
            notifier.close()
            raise
        worker = _Worker(process.pid, process.pidfd, notifier)
        self._watch(worker)
        return worker.pid

    def _watch(self, worker: _Worker) -> None:
        self.workers[worker.pid] = worker
        self._register(worker.pidfd, lambda: self._on_pidfd(worker))
        self._register(worker.notifier.sock, lambda: self._on_notify_socket(worker))

    # -- the hand-over of an in-place upgrade (see handover.py) ---------------

    def handover(self, keep: Callable[[int], int]) -> list[WorkerState]:
        """Each worker's pid and notify socket, for the next image; ``keep``
        registers each descriptor named (handover.Descriptors)."""
        return [
            {
                "pid": w.pid,
                "notify_fd": keep(w.notifier.fileno()),
                "notify_address": w.notifier.address,
            }
            for w in self.workers.values()
        ]

    def adopt(self, workers: list[WorkerState]) -> None:
        """Watch the workers the previous image handed over.  One that exited
        during the exec is a zombie still: its pidfd is readable at once."""
        for entry in workers:
            notifier = notify.NotifyReceiver(
                "", adopt=(entry["notify_fd"], entry["notify_address"])
            )
            self._watch(_Worker(entry["pid"], os.pidfd_open(entry["pid"]), notifier))

    def oom_kills(self) -> int | None:
        return oom.kills()

    def rank_as_serving(self, pid: int) -> None:
        if self.rank_for_oom:
            oom.set_score(pid, self.serving_score)

    def _on_pidfd(self, worker: _Worker) -> list[HostEvent]:
        status = reap(worker.pid)
        if status is None:
            return []
        self._forget(worker)
        return [Exited(worker.pid, status, self._oom_killed(status, worker.sent_kill))]

    def _oom_killed(self, status: int, sent_kill: bool) -> bool:
        """Whether this SIGKILL was the OOM killer's: its count went up, and
        it was not ours (the count may have gone up for another process)."""
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            return False
        kills = oom.kills()
        seen, self.oom_kills_seen = self.oom_kills_seen, kills
        return kills is not None and seen is not None and kills > seen and not sent_kill

    def _on_notify_socket(self, worker: _Worker) -> list[HostEvent]:
        return [Notified(worker.pid, message) for message in worker.notifier.receive()]

    def _forget(self, worker: _Worker) -> None:
        del self.workers[worker.pid]
        self._unregister(worker.pidfd)
        self._unregister(worker.notifier.sock)
        os.close(worker.pidfd)
        worker.notifier.close()

    def signal(self, pid: int, number: signal.Signals) -> None:
        worker = self.workers.get(pid)
        if worker is not None:
            worker.sent_kill = worker.sent_kill or number == signal.SIGKILL
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(worker.pidfd, number)

    def notify_systemd(self, message: str) -> None:
        if self.systemd_socket is None:
            return
        try:
            # Bounded: a manager that stops reading must not freeze the event loop.
            contract.notify(message, self.systemd_socket, timeout=NOTIFY_TIMEOUT)
        except OSError as err:
            reason = err.strerror or f"its queue stayed full for {NOTIFY_TIMEOUT:g}s"
            raise OSError(f"at {self.systemd_socket}: {reason}") from None

    def write_status_file(self, path: str, workers: Sequence[tuple[int, int]]) -> None:
        write_status_file(path, workers)

    def write_metrics_file(self, path: str, text: str) -> None:
        # Readable by the collector's user (node_exporter runs as its own),
        # whatever the service's UMask=.
        replace_file(path, text, mode=0o644)

    def check_in_background(self, check: Callable[[], Checked]) -> None:
        """Run ``check`` (the installed version's upgrade check, which runs a
        process for up to 20 s) on a thread of its own; its result comes
        back through the loop as an event, so the loop goes on meanwhile."""
        import threading  # only for an upgrade: the resident superdaemon does without it

        done_read, done_write = socket.socketpair()
        result: list[HostEvent] = []

        def run() -> None:
            try:
                result.append(check())
            finally:
                done_write.send(b".")

        def finished() -> list[HostEvent]:
            self._unregister(done_read)
            done_read.close()
            done_write.close()
            return result

        self._register(done_read, finished)
        threading.Thread(target=run, name="upgrade-check", daemon=True).start()

    def wait(self, deadline: float | None) -> Iterator[HostEvent]:
        timeout = None if deadline is None else max(0.0, deadline - self.now())
        for key, _mask in self.selector.select(timeout):
            handler: Handler = key.data
            yield from handler()

    def close(self) -> None:
        """Stop catching signals; send TERM to any worker still running (only
        after an internal error).  TERM, not KILL: each finishes its requests
        and exits, under systemd drained by the unit's ExecStopPost= (see
        orphans.py) before a new superdaemon takes the sockets over."""
        signal.set_wakeup_fd(-1)
        for worker in list(self.workers.values()):
            self.signal(worker.pid, signal.SIGTERM)
            self._forget(worker)
        self.selector.close()
        self._wakeup_read.close()
        self._wakeup_write.close()
