"""A generation: one spawn of the server program, as plain data, and the
states it goes through (supervisor.py moves it from one to the next)."""

from __future__ import annotations

import enum
import signal

from ..contract import WorkerCount

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs the resident superdaemon ~2 MB; annotations need no import
    from typing import TypedDict

    class ResizeState(TypedDict):
        signal: int
        from_target: int
        deadline: float

    class GenerationState(TypedDict):
        number: int
        pid: int
        spawned_at: float
        is_reload: bool
        state: str
        deadline: float | None
        ready_at: float | None
        streak_at_ready: int
        since: float  # absent from the first versions' hand-over
        failure: str | None  # absent before rolling reloads
        workers: str | None  # absent before rolling reloads
        resize: ResizeState | None  # absent before rolling reloads
        whole: int | None  # absent before rolling reloads
        oom_kills_at_spawn: int | None  # absent before rolling reloads


class State(enum.Enum):
    STARTING = "starting"  # deadline: ready by --interval (or --ready-timeout)
    ROLLING = "rolling"  # ready with some workers, grown while the serving one shrinks
    FAILED = "failed"  # its start or roll failed: stopped; deadline: SIGKILL, unless sent
    SERVING = "serving"  # no deadline
    RETIRING = "retiring"  # replaced; deadline: signal it after --kill-old-delay
    DRAINING = "draining"  # signalled; deadline: SIGKILL after --stop-timeout
    EVICTED = "evicted"  # over --max-draining, sent --signal-on-term; deadline: SIGKILL
    KILLED = "killed"  # served, replaced, still running after --stop-timeout: sent SIGKILL
    REAPED = "reaped"  # exited; no longer the supervisor's


# The states of a generation that has not served (yet): its exit is a failed start.
UNPROVEN = frozenset({State.STARTING, State.ROLLING, State.FAILED})
# The states of one that served and was replaced.
REPLACED = frozenset({State.RETIRING, State.DRAINING, State.EVICTED, State.KILLED})


class Resize:
    """A SIGTTIN or SIGTTOU sent to a generation, until its report shows the
    worker booted (TTIN) or gone (TTOU), or ``deadline`` passes."""

    __slots__ = ("deadline", "from_target", "signal")

    def __init__(self, sent: signal.Signals, from_target: int, deadline: float) -> None:
        self.signal, self.from_target, self.deadline = sent, from_target, deadline

    @property
    def grows(self) -> bool:
        return self.signal == signal.SIGTTIN

    def done(self, workers: WorkerCount) -> bool:
        if self.grows:
            return workers.ready > self.from_target and workers.target > self.from_target
        return workers.ready < self.from_target and workers.target < self.from_target

    def to_dict(self) -> ResizeState:
        return {
            "signal": int(self.signal),
            "from_target": self.from_target,
            "deadline": self.deadline,
        }

    @classmethod
    def from_dict(cls, data: ResizeState) -> Resize:
        return cls(signal.Signals(data["signal"]), data["from_target"], data["deadline"])


class Generation:
    """One spawn of the server program: plain data.  (Plain classes with
    __slots__, not dataclasses: see sockets.PortSpec.)"""

    __slots__ = (
        "deadline",
        "failure",
        "is_reload",
        "number",
        "oom_kills_at_spawn",
        "pid",
        "ready_at",
        "resize",
        "since",
        "spawned_at",
        "state",
        "streak_at_ready",
        "whole",
        "workers",
    )

    def __init__(
        self,
        number: int,
        pid: int,
        spawned_at: float,
        is_reload: bool,
        state: State = State.STARTING,
        deadline: float | None = None,
        ready_at: float | None = None,
        streak_at_ready: int = 0,
        since: float | None = None,
    ) -> None:
        self.number = number
        self.pid = pid
        self.spawned_at = spawned_at
        self.is_reload = is_reload
        self.state = state
        self.deadline = deadline
        self.ready_at = ready_at  # None: never served, so its exit is a failed start
        self.streak_at_ready = streak_at_ready  # failures in a row its start ended
        self.since = spawned_at if since is None else since  # in its state since
        self.failure: str | None = None  # why it failed (FAILED)
        # The service's OOM kills when it was spawned (Host.oom_kills).
        self.oom_kills_at_spawn: int | None = None
        self.workers: WorkerCount | None = None  # None: it reports no workers
        self.resize: Resize | None = None  # a SIGTTIN or SIGTTOU in flight
        # Its target when a roll began to shrink it: grown back to it if the roll fails.
        self.whole: int | None = None

    def to_dict(self) -> GenerationState:
        return {
            "number": self.number,
            "pid": self.pid,
            "spawned_at": self.spawned_at,
            "is_reload": self.is_reload,
            "state": self.state.value,
            "deadline": self.deadline,
            "ready_at": self.ready_at,
            "streak_at_ready": self.streak_at_ready,
            "since": self.since,
            "failure": self.failure,
            "workers": None if self.workers is None else str(self.workers),
            "resize": None if self.resize is None else self.resize.to_dict(),
            "whole": self.whole,
            "oom_kills_at_spawn": self.oom_kills_at_spawn,
        }

    @classmethod
    def from_dict(cls, data: GenerationState) -> Generation:
        state = State(data["state"])
        if state is State.KILLED and data["ready_at"] is None:
            state = State.FAILED  # the versions before FAILED killed a start this way
        gen = cls(
            number=data["number"],
            pid=data["pid"],
            spawned_at=data["spawned_at"],
            is_reload=data["is_reload"],
            state=state,
            deadline=data["deadline"],
            ready_at=data["ready_at"],
            streak_at_ready=data["streak_at_ready"],
            since=data.get("since"),
        )
        gen.failure = data.get("failure")
        gen.whole = data.get("whole")
        gen.oom_kills_at_spawn = data.get("oom_kills_at_spawn")
        workers, resize = data.get("workers"), data.get("resize")
        gen.workers = None if workers is None else WorkerCount.parse(workers)
        gen.resize = None if resize is None else Resize.from_dict(resize)
        return gen
