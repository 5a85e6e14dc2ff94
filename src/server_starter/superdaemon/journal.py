"""Lifecycle logging: Perl start_server's lines on stderr, or structured journal
entries when systemd runs us.

Every event carries ``SERVER_STARTER_EVENT`` and, where a worker is involved,
``SERVER_STARTER_GENERATION`` and ``SERVER_STARTER_WORKER_PID``, so
``journalctl -u app SERVER_STARTER_EVENT=reload`` is a restart log.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Mapping
from enum import StrEnum

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO


class Event(StrEnum):
    START = "start"
    SPAWN = "spawn"
    READY = "ready"
    FAILED = "failed"
    RELOAD = "reload"
    DRAIN = "drain"
    KILL = "kill"
    EXIT = "exit"
    STOP = "stop"
    UPGRADE = "upgrade"


# syslog priorities
ERR, WARNING, NOTICE, INFO = 3, 4, 5, 6


JOURNAL_SOCKET = "/run/systemd/journal/socket"


def under_systemd(environ: Mapping[str, str]) -> bool:
    """Run by systemd, with a journal to write to.  (libsystemd drops entries
    silently when journald is not running, so its socket must exist.)"""
    started_by_systemd = "JOURNAL_STREAM" in environ or "INVOCATION_ID" in environ
    return started_by_systemd and os.path.exists(JOURNAL_SOCKET)


JournalSend = Callable[..., None]


def _journal_sender() -> JournalSend | None:
    try:
        from systemd import journal
    except ImportError:
        return None
    send: JournalSend = journal.send
    return send


class EventLog:
    """Where the superdaemon's events go.

    ``to_journal`` selects structured journal entries; otherwise lines are
    written to ``stream`` (stderr, or the --log-file it was pointed at).
    """

    def __init__(self, to_journal: bool, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self._journal = _journal_sender() if to_journal else None
        if to_journal and self._journal is None:
            self.stream.write("start_server: python3-systemd is not installed; logging to stderr\n")

    def event(
        self,
        event: Event,
        message: str,
        *,
        priority: int = INFO,
        generation: int | None = None,
        pid: int | None = None,
        **fields: object,
    ) -> None:
        extra: dict[str, str] = {"SERVER_STARTER_EVENT": event.value}
        if generation is not None:
            extra["SERVER_STARTER_GENERATION"] = str(generation)
        if pid is not None:
            extra["SERVER_STARTER_WORKER_PID"] = str(pid)
        for name, value in fields.items():
            extra["SERVER_STARTER_" + name.upper()] = str(value)
        self._emit(message, priority, extra)

    def line(self, message: str, priority: int = INFO) -> None:
        """A line that is no lifecycle event (notices, hints)."""
        self._emit(message, priority, {})

    def _emit(self, message: str, priority: int, extra: dict[str, str]) -> None:
        if self._journal is not None:
            try:
                self._journal(
                    message, PRIORITY=str(priority), SYSLOG_IDENTIFIER="start_server", **extra
                )
                return
            except OSError:
                pass  # journald unreachable: fall through to the stream
        try:
            self.stream.write(message + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed or full log must never stop the superdaemon


def describe_status(status: int) -> str:
    """A raw wait status as an operator reads it."""
    if os.WIFEXITED(status):
        return f"exit code {os.WEXITSTATUS(status)}"
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"killed by {name}"
    return f"status {status}"
