"""What the host tells the supervisor happened: each readable descriptor of
the loop is read by the host and becomes one of these (host.py), which the
supervisor handles in order (``Supervisor.handle``)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .reloads import Answer


class Signalled:
    """A signal arrived (one of HANDLED_SIGNALS)."""

    __slots__ = ("number",)

    def __init__(self, number: int) -> None:
        self.number = number


class Exited:
    """A worker exited with the raw wait ``status``; ``oom_killed``: the
    kernel's OOM killer killed it."""

    __slots__ = ("oom_killed", "pid", "status")

    def __init__(self, pid: int, status: int, oom_killed: bool = False) -> None:
        self.pid, self.status, self.oom_killed = pid, status, oom_killed


class Notified:
    """A notify datagram on a generation's own socket; ``pid``: its worker."""

    __slots__ = ("fields", "pid")

    def __init__(self, pid: int, fields: dict[str, str]) -> None:
        self.pid, self.fields = pid, fields


class Requested:
    """A control socket request, and the client to answer."""

    __slots__ = ("answer", "command")

    def __init__(self, command: str, answer: Answer) -> None:
        self.command, self.answer = command, answer


class Checked:
    """The installed version's check for an in-place upgrade is done: its
    version, or why it cannot take over (``Host.check_in_background``)."""

    __slots__ = ("error", "version")

    def __init__(self, version: str | None, error: str | None) -> None:
        self.version, self.error = version, error


HostEvent = Signalled | Exited | Notified | Requested | Checked
