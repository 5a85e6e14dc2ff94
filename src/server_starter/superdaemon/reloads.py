"""The reload ledger: each reload in flight, the clients waiting for its
outcome (a control connection each; none for a HUP), the reload asked for
while a generation was starting, and the record of outcomes an operator
reads in ``--status`` and the metrics.  The supervisor decides what a
reload's outcome is; the ledger keeps who is owed an answer, answers each
exactly once, and counts."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs the resident superdaemon ~2 MB; annotations need no import
    from typing import Literal, TypedDict

    from .generation import Generation

    class LastReload(TypedDict):
        generation: int
        outcome: str  # one of OUTCOMES, or "in_progress"
        reason: str | None
        started_at: float  # monotonic in the record, Unix seconds in the status
        duration_seconds: float | None

    class RecordState(TypedDict):
        started_at: float
        reloads: dict[str, int]
        last_reload: LastReload | None
        last_success_at: float | None
        last_success_duration: float | None
        exits: dict[str, int]

    class ReloadState(TypedDict):
        generation: int | None
        replaced: int | None
        failure: str | None
        answers: list[int]  # the waiting clients, by their index in the hand-over
        started_at: float | None  # absent from the first versions' hand-over


# A reload's outcomes, and why a worker exited, as --status and the metrics
# count them (docs/watching.md says what each means).
SUCCEEDED, FAILED, IN_PROGRESS = "succeeded", "failed", "in_progress"
OUTCOMES = (SUCCEEDED, FAILED)
EXIT_REASONS = (
    "failed_start",
    "probation",
    "died",
    "oom_killed",
    "drained",
    "evicted",
    "killed",
    "stopped",
)


class Record:
    """Counts and the last reload: what the state machine does not keep, but
    an operator asks for.  Handed over in an in-place upgrade."""

    __slots__ = (
        "exits",
        "last_reload",
        "last_success_at",
        "last_success_duration",
        "reloads",
        "started_at",
    )

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at  # monotonic, like every time the record keeps
        self.reloads = dict.fromkeys(OUTCOMES, 0)
        self.last_reload: LastReload | None = None
        self.last_success_at: float | None = None
        self.last_success_duration: float | None = None
        self.exits = dict.fromkeys(EXIT_REASONS, 0)

    def reload_done(
        self, generation: int, ok: bool, reason: str | None, started_at: float, now: float
    ) -> None:
        outcome = SUCCEEDED if ok else FAILED
        self.reloads[outcome] += 1
        duration = now - started_at
        self.last_reload = {
            "generation": generation,
            "outcome": outcome,
            "reason": reason,
            "started_at": started_at,
            "duration_seconds": duration,
        }
        if ok:
            self.last_success_at, self.last_success_duration = now, duration

    def exited(self, reason: str) -> None:
        self.exits[reason] += 1

    def to_dict(self) -> RecordState:
        return {
            "started_at": self.started_at,
            "reloads": dict(self.reloads),
            "last_reload": self.last_reload,
            "last_success_at": self.last_success_at,
            "last_success_duration": self.last_success_duration,
            "exits": dict(self.exits),
        }

    @classmethod
    def from_dict(cls, data: RecordState) -> Record:
        record = cls(data["started_at"])
        record.reloads.update(data["reloads"])
        record.last_reload = data["last_reload"]
        record.last_success_at = data["last_success_at"]
        record.last_success_duration = data["last_success_duration"]
        record.exits.update(data["exits"])
        return record


# What a client that asked for the in-place upgrade waits for.
UPGRADE: Literal["upgrade"] = "upgrade"


class Answer(abc.ABC):
    """A client waiting for the outcome of its request (a control
    connection), answered by one call.  It records what it waits for, a
    :class:`Reload` or the upgrade: an in-place upgrade's hand-over names it
    by that."""

    __slots__ = ("waits_for",)

    def __init__(self) -> None:
        self.waits_for: Reload | Literal["upgrade"] | None = None

    @abc.abstractmethod
    def __call__(self, ok: bool, message: str) -> None:
        """Answer, once."""


class Reload:
    """One reload and the clients waiting for its outcome (none for a HUP).

    It is answered exactly once: when its generation is ready and the one it
    replaced has been signalled (or exited first); when the start failed; or
    when start_server stops.  Requests that arrive while a generation is
    starting join the next reload (coalescing)."""

    __slots__ = ("answers", "failure", "generation", "number", "replaced", "started_at")

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.number: int | None = None  # of the generation started for it
        self.generation: Generation | None = None  # that generation, once spawned
        self.replaced: Generation | None = None  # serving when `generation` became ready
        self.failure: str | None = None  # why `generation` failed
        self.started_at: float | None = None  # its generation's spawn, when one served

    def enlist(self, answer: Answer) -> None:
        answer.waits_for = self
        self.answers.append(answer)

    def answer(self, ok: bool, message: str) -> None:
        answers, self.answers = self.answers, []
        for answer in answers:
            answer(ok, message)


Outcome = Callable[["Reload"], "tuple[bool, str] | None"]


class Ledger:
    """The reloads in flight, the next one, and the record.

    A reload is started for each generation started (a HUP's, a client's,
    a retry's); requests that arrive while a generation is starting or
    rolling join ``next``, started once that generation settles: one more
    reload, never a pile of generations."""

    __slots__ = ("in_flight", "next", "record")

    def __init__(self, now: float) -> None:
        self.in_flight: list[Reload] = []  # started, not answered yet
        self.next: Reload | None = None  # asked for while a generation was starting
        self.record = Record(now)

    def begin(self, reload: Reload) -> None:
        self.in_flight.append(reload)

    def of(self, gen: Generation) -> list[Reload]:
        """The reloads in flight that started ``gen``."""
        return [reload for reload in self.in_flight if reload.generation is gen]

    def failed(self, gen: Generation, reason: str) -> None:
        """``gen`` failed: its reloads say why (the first reason stands: a
        roll stopped says why it was, not only that its generation exited)."""
        for reload in self.of(gen):
            reload.failure = reload.failure or reason

    def join_next(self, answer: Answer | None) -> bool:
        """Enlist ``answer`` in the next reload; True if that was just created."""
        created = self.next is None
        if self.next is None:
            self.next = Reload()
        if answer is not None:
            self.next.enlist(answer)
        return created

    def take_next(self) -> Reload | None:
        reload, self.next = self.next, None
        return reload

    def running(self) -> list[Reload]:
        """Reloads under way: those whose generation was started beside a serving one."""
        return [r for r in self.in_flight if r.started_at is not None and r.number is not None]

    def settle(self, outcome: Outcome, now: float, stopping: bool) -> None:
        """Answer every reload whose ``outcome`` is known, and record it (a
        reload cut short by a stop is no outcome of the new code)."""
        for reload in list(self.in_flight):
            known = outcome(reload)
            if known is None:
                continue
            self.in_flight.remove(reload)
            ok, message = known
            if not stopping and reload.started_at is not None and reload.number is not None:
                reason = None if ok else message
                self.record.reload_done(reload.number, ok, reason, reload.started_at, now)
            reload.answer(ok, message)
        if stopping and self.next is not None:
            self.next.answer(False, "start_server is stopping")
            self.next = None

    # -- as plain data, for the in-place upgrade ------------------------------------

    @staticmethod
    def reload_data(reload: Reload, clients: Sequence[Answer]) -> ReloadState:
        return {
            "generation": reload.number,
            "replaced": reload.replaced.number if reload.replaced else None,
            "failure": reload.failure,
            "answers": [i for i, client in enumerate(clients) if client.waits_for is reload],
            "started_at": reload.started_at,
        }

    @staticmethod
    def reload_from(
        entry: ReloadState,
        clients: Sequence[Answer],
        numbered: Callable[[int | None, bool], Generation | None],
    ) -> Reload:
        reload = Reload()
        reload.number = entry["generation"]
        reload.generation = numbered(entry["generation"], False)
        reload.replaced = numbered(entry["replaced"], True)
        reload.failure = entry["failure"]
        for index in entry["answers"]:
            reload.enlist(clients[index])
        reload.started_at = entry.get("started_at")
        return reload
