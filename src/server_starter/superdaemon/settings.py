"""What the superdaemon was told to do: options, environment and envdir,
parsed once.

Two kinds of setting:

- :class:`Settings`, fixed for the superdaemon's lifetime (``--interval``,
  ``--signal-on-hup``, ...), each option declared once on it with its
  default;
- :class:`Tunables`, Perl's variables ``ENABLE_AUTO_RESTART``,
  ``AUTO_RESTART_INTERVAL`` and ``KILL_OLD_DELAY``.  Their options are
  exported to the workers as those variables (Perl does so; it is the
  contract), and an ``--envdir`` may change them between reloads, so they
  are read again, with the same parser, whenever they are needed.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping, Sequence

# Defaults of what is not a fixed setting (those are declared on Settings).
DEFAULTS: dict[str, float] = {
    "restart_timeout": 90.0,
    "auto_restart_interval": 360.0,
    "kill_old_delay": 0.0,
    "kill_old_delay_with_auto_restart": 5.0,  # Perl's default when auto-restart is on
}
DEFAULT_SIGNAL = signal.SIGTERM
STOP_TIMEOUT = 85.0  # below systemd's default TimeoutStopSec=90s; --stop waits as long
DEFAULT_PATH_MODE = 0o777  # as Perl's start_server

# The Perl variables, with the options that set them.
ENABLE_AUTO_RESTART = "ENABLE_AUTO_RESTART"
AUTO_RESTART_INTERVAL = "AUTO_RESTART_INTERVAL"
KILL_OLD_DELAY = "KILL_OLD_DELAY"
ENVDIR = "ENVDIR"


class SettingError(ValueError):
    """A value that cannot be used; the message is one line for the operator."""


def parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SettingError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < 10**9 or value != value:
        raise SettingError(f"{text!r} must be a non-negative number of seconds")
    return value


def parse_positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise SettingError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise SettingError(f"{text!r} must be positive")
    return value


def parse_signal(text: str) -> signal.Signals:
    name = text.strip().upper().removeprefix("SIG")
    try:
        return signal.Signals(int(name)) if name.isdigit() else signal.Signals["SIG" + name]
    except (KeyError, ValueError):
        raise SettingError(f"unknown signal {text!r}") from None


def parse_mode(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise SettingError(f"{text!r} is not an octal mode such as 0660") from None
    if not 0 <= value <= 0o777:
        raise SettingError(f"{text!r} is not a permission mode (000 to 777)")
    return value


def signal_name(number: signal.Signals) -> str:
    return number.name.removeprefix("SIG")


class Tunables:
    """Perl's variables as they stand for the next decision."""

    __slots__ = ("auto_restart", "auto_restart_interval", "kill_old_delay")

    def __init__(self, auto_restart: bool, auto_restart_interval: float, kill_old_delay: float):
        self.auto_restart = auto_restart
        self.auto_restart_interval = auto_restart_interval
        self.kill_old_delay = kill_old_delay

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Tunables:
        """Raises SettingError naming the variable that is not a number."""
        auto_restart = environ.get(ENABLE_AUTO_RESTART, "") not in ("", "0")
        # Perl: ``$ENV{AUTO_RESTART_INTERVAL} || 360``, so 0 means the default.
        interval = (
            _seconds_variable(environ, AUTO_RESTART_INTERVAL) or DEFAULTS["auto_restart_interval"]
        )
        delay = _seconds_variable(environ, KILL_OLD_DELAY)
        if delay is None:
            delay = DEFAULTS[
                "kill_old_delay_with_auto_restart" if auto_restart else "kill_old_delay"
            ]
        return cls(auto_restart, interval, delay)


def _seconds_variable(environ: Mapping[str, str], name: str) -> float | None:
    text = environ.get(name, "")
    if text == "":
        return None
    try:
        return parse_seconds(text)
    except SettingError as err:
        raise SettingError(f"{name}: {err}") from None


class Option:
    """One option of the fixed settings, declared once: its flag, how its text
    is read, its default and its help.  The parser is built from these
    (cli.py), and each is the attribute of :class:`Settings` it sets: a
    descriptor that reads the value given, or the default."""

    parse: Callable[[str], object] | None = None  # None: a flag (store_true)
    shown: Callable[[object], str] = str

    def __init__(self, flag: str, help: str, default: object = None, metavar: str = "") -> None:
        self.flag, self.help, self.default, self.metavar = flag, help, default, metavar
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def value(self, settings: Settings) -> object:
        given = settings.given.get(self.name)
        return self.default if given is None else given

    def help_text(self) -> str:
        return self.help.format(default=self.shown(self.default))


class Seconds(Option):
    parse = staticmethod(parse_seconds)
    shown = staticmethod(lambda value: f"{value:g}")

    def __get__(self, settings: Settings, owner: type | None = None) -> float:
        value = self.value(settings)
        assert isinstance(value, float)
        return value


class SignalOption(Option):
    parse = staticmethod(parse_signal)
    shown = staticmethod(lambda value: signal.Signals(value).name.removeprefix("SIG"))

    def __get__(self, settings: Settings, owner: type | None = None) -> signal.Signals:
        value = self.value(settings)
        assert isinstance(value, signal.Signals)
        return value


class Flag(Option):
    def __get__(self, settings: Settings, owner: type | None = None) -> bool:
        return bool(self.value(settings))


class Count(Option):
    parse = staticmethod(parse_positive_int)

    def __get__(self, settings: Settings, owner: type | None = None) -> int | None:
        value = self.value(settings)
        assert value is None or isinstance(value, int)
        return value


class Text(Option):
    parse = staticmethod(str)

    def __get__(self, settings: Settings, owner: type | None = None) -> str | None:
        value = self.value(settings)
        assert value is None or isinstance(value, str)
        return value


class Settings:
    """The fixed settings of one superdaemon: each option declared once,
    here.  (A plain class, not a dataclass: see sockets.PortSpec.)"""

    interval = Seconds(
        "--interval",
        "a worker alive this long counts as ready unless it notifies (default {default}); "
        "also the first retry delay",
        1.0,
        "SECONDS",
    )
    signal_on_hup = SignalOption(
        "--signal-on-hup",
        "signal sent to old workers when a new one is ready (default {default})",
        DEFAULT_SIGNAL,
        "SIGNAL",
    )
    signal_on_term = SignalOption(
        "--signal-on-term",
        "signal sent to the workers when start_server gets TERM (default {default}); "
        "INT and QUIT always send TERM, as in Perl's start_server",
        DEFAULT_SIGNAL,
        "SIGNAL",
    )
    require_notify = Flag(
        "--require-notify", "a worker is ready only when it sends READY=1 to $NOTIFY_SOCKET"
    )
    ready_timeout = Seconds(
        "--ready-timeout",
        "with --require-notify: give up on a worker without READY=1 after this (default {default})",
        60.0,
        "SECONDS",
    )
    stop_timeout = Seconds(
        "--stop-timeout",
        "SIGKILL a signalled worker still running after this long (default {default}, "
        "under systemd's 90s TimeoutStopSec)",
        STOP_TIMEOUT,
        "SECONDS",
    )
    backoff_max = Seconds(
        "--backoff-max",
        "longest wait between attempts to start a failing worker (default {default})",
        30.0,
        "SECONDS",
    )
    keep_oom_score = Flag(
        "--keep-oom-score",
        "leave the workers' oom_score_adj as the service sets it (by default a starting "
        "generation gets 1000, the serving one half-way: the OOM killer's first victims)",
    )
    max_draining = Count(
        "--max-draining",
        "at most N replaced generations draining at once: a reload beyond that stops the "
        "oldest (--signal-on-term, SIGKILL after --stop-timeout) (default unlimited)",
        metavar="N",
    )
    directory = Text("--dir", "working directory of the server program", metavar="PATH")
    status_file = Text("--status-file", "write GEN:PID of every live worker here", metavar="FILE")
    metrics_file = Text(
        "--metrics-file",
        "write the Prometheus text format here at each event (for node_exporter's "
        "textfile collector)",
        metavar="FILE",
    )

    def __init__(
        self, command: Sequence[str], *, envdir: str | None = None, **given: object
    ) -> None:
        """``given``: the options' values by attribute name (None: not given)."""
        unknown = set(given) - set(self.options())
        if unknown:
            raise TypeError(f"not settings: {sorted(unknown)}")
        self.command = list(command)
        self.given = given
        self.envdir = envdir or None
        if given.get("ready_timeout") is not None and not self.require_notify:
            raise SettingError("--ready-timeout applies only with --require-notify")

    @classmethod
    def options(cls) -> dict[str, Option]:
        return {name: value for name, value in vars(cls).items() if isinstance(value, Option)}

    @property
    def ready_wait(self) -> float:
        """How long a starting generation has to become ready."""
        return self.ready_timeout if self.require_notify else self.interval


def export_perl_variables(
    environ: dict[str, str],
    *,
    envdir: str | None,
    enable_auto_restart: bool,
    auto_restart_interval: float | None,
    kill_old_delay: float | None,
) -> None:
    """Options win; otherwise Perl's environment variables stand in.  Either
    way the value is exported to the workers, as Perl does.  Raises
    SettingError if the environment holds one that is not a number."""
    if envdir is not None:
        environ[ENVDIR] = envdir
    if enable_auto_restart:
        environ[ENABLE_AUTO_RESTART] = "1"
    if kill_old_delay is not None:
        environ[KILL_OLD_DELAY] = f"{kill_old_delay:g}"
    if auto_restart_interval is not None:
        environ[AUTO_RESTART_INTERVAL] = f"{auto_restart_interval:g}"
    Tunables.from_environ(environ)  # refuses a bad value now, not at the first reload
