"""When to start a generation again, unasked: the backoff of a streak of
failures, and Perl's auto-restart.

A streak of failures starts at the first failure after a generation became
ready (becoming ready ends a streak).  Each failed start adds one and waits
--interval, doubled for each further failure up to --backoff-max.  A
serving generation that dies before it has served --backoff-max carries on
the streak its own start ended, so an app that crashes soon after each
start still backs off; one that served longer starts a new streak.  The
first unexpected death of a streak respawns at once, as Perl does."""

from __future__ import annotations

from .settings import Settings


class RestartPolicy:
    __slots__ = ("auto_restart", "failures", "last_restart", "retry_at", "settings")

    def __init__(self, settings: Settings, auto_restart: bool) -> None:
        self.settings = settings
        # Whether auto-restart is on is decided at start (as Perl does).
        self.auto_restart = auto_restart
        self.failures = 0  # failed starts, failed reloads and unexpected deaths in a row
        self.retry_at: float | None = None  # when the next start is tried
        self.last_restart: float | None = None  # when a generation last became ready

    def ready(self, now: float) -> int:
        """A generation became ready: the streak ends; returns its length."""
        streak, self.failures = self.failures, 0
        self.last_restart = now
        return streak

    def failed(self) -> None:
        self.failures += 1

    def died(self, served: float, streak_at_ready: int) -> None:
        """A serving generation died unasked after ``served`` seconds."""
        carried = streak_at_ready if served < self.settings.backoff_max else 0
        self.failures = max(self.failures, carried) + 1

    def delay(self, after_death: bool) -> float:
        """How long to wait before the next start (0: at once)."""
        steps = self.failures - (2 if after_death else 1)
        if steps < 0:
            return 0.0
        first = max(self.settings.interval, 1.0)
        return float(min(first * 2**steps, self.settings.backoff_max))

    def auto_restart_at(self, interval: float, forced: bool) -> float | None:
        """When auto-restart reloads next; with old generations still
        draining (``forced``), up to twice the interval (Perl)."""
        if not self.auto_restart or self.last_restart is None:
            return None
        return self.last_restart + interval * (2 if forced else 1)
