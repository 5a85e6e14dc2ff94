"""What the superdaemon was told to do: options, environment and envdir,
parsed once, with one table of defaults.

Two kinds of setting:

- :class:`Settings`, fixed for the superdaemon's lifetime (``--interval``,
  ``--signal-on-hup``, ...);
- :class:`Tunables`, Perl's variables ``ENABLE_AUTO_RESTART``,
  ``AUTO_RESTART_INTERVAL`` and ``KILL_OLD_DELAY``.  Their options are
  exported to the workers as those variables (Perl does so; it is the
  contract), and an ``--envdir`` may change them between reloads, so they
  are read again, with the same parser, whenever they are needed.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping, Sequence

DEFAULTS: dict[str, float] = {
    "interval": 1.0,
    "ready_timeout": 60.0,
    "stop_timeout": 85.0,  # below systemd's default TimeoutStopSec=90s
    "backoff_max": 30.0,
    "restart_timeout": 90.0,
    "auto_restart_interval": 360.0,
    "kill_old_delay": 0.0,
    "kill_old_delay_with_auto_restart": 5.0,  # Perl's default when auto-restart is on
}
DEFAULT_SIGNAL = signal.SIGTERM
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


class Settings:
    """The fixed settings of one superdaemon.  (Plain classes, not
    dataclasses: see sockets.PortSpec.)"""

    def __init__(
        self,
        command: Sequence[str],
        *,
        interval: float | None = None,
        signal_on_hup: signal.Signals | None = None,
        signal_on_term: signal.Signals | None = None,
        require_notify: bool = False,
        ready_timeout: float | None = None,
        stop_timeout: float | None = None,
        backoff_max: float | None = None,
        directory: str | None = None,
        status_file: str | None = None,
        envdir: str | None = None,
    ) -> None:
        if ready_timeout is not None and not require_notify:
            raise SettingError("--ready-timeout applies only with --require-notify")
        self.command = list(command)
        self.interval = _or_default(interval, "interval")
        self.signal_on_hup = signal_on_hup or DEFAULT_SIGNAL
        self.signal_on_term = signal_on_term or DEFAULT_SIGNAL
        self.require_notify = require_notify
        self.ready_timeout = _or_default(ready_timeout, "ready_timeout")
        self.stop_timeout = _or_default(stop_timeout, "stop_timeout")
        self.backoff_max = _or_default(backoff_max, "backoff_max")
        self.directory = directory
        self.status_file = status_file
        self.envdir = envdir or None

    @property
    def ready_wait(self) -> float:
        """How long a starting generation has to become ready."""
        return self.ready_timeout if self.require_notify else self.interval


def _or_default(value: float | None, name: str) -> float:
    return DEFAULTS[name] if value is None else value


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
