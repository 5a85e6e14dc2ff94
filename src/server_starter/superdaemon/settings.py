"""What start_server was told to do: options, environment and envdir,
parsed once.

Every option is declared once, as an :class:`Option` on the class whose
value it is; the parser is built from these (cli.py), and each is the
attribute it sets, which reads the value given, or its default:

- :class:`Resources`: what serve.py opens for the superdaemon's lifetime
  (``--port``, ``--pid-file``, ...); the client commands find a running
  one by two of them (``--pid-file``, ``--control-socket``);
- :class:`Settings`, fixed for the superdaemon's lifetime (``--interval``,
  ``--signal-on-hup``, ...);
- :class:`Tunables`, Perl's variables ``ENABLE_AUTO_RESTART``,
  ``AUTO_RESTART_INTERVAL`` and ``KILL_OLD_DELAY``.  Their options are
  exported to the workers as those variables (Perl does so; it is the
  contract), and an ``--envdir`` may change them between reloads, so they
  are read again, with the same parser, whenever they are needed;
- :class:`Client`: what ``--restart`` and ``--upgrade`` are told.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping, Sequence

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs the resident superdaemon ~2 MB; annotations need no import
    from argparse import Namespace
    from typing import Self

DEFAULT_SIGNAL = signal.SIGTERM
KILL_OLD_DELAY_WITH_AUTO_RESTART = 5.0  # Perl's default when auto-restart is on

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


class Option:
    """One option, declared once: its flag, how its text is read, its
    default, its help, and the Perl variable that stands in for it, if any.
    A descriptor: on an instance of the class declaring it, the value
    given, or the default."""

    parse: Callable[[str], object] | None = None  # None: a flag (store_true)
    shown: Callable[[object], str] = str
    repeatable = False  # each use adds a value (--port, --path)

    def __init__(
        self,
        flag: str,
        help: str,
        default: object = None,
        metavar: str = "",
        *,
        variable: str | None = None,
    ) -> None:
        self.flag, self.help, self.default, self.metavar = flag, help, default, metavar
        self.variable = variable
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def value(self, declared: Declared) -> object:
        given = declared.given.get(self.name)
        return self.default if given is None else given

    def help_text(self) -> str:
        return self.help.format(default=self.shown(self.default))

    def exported(self, value: object) -> str:
        """The value as its Perl variable holds it."""
        return self.shown(value)

    def read(self, text: str) -> object:
        """Its Perl variable's text (not empty) as a value."""
        assert self.parse is not None
        return self.parse(text)

    def from_variable(self, environ: Mapping[str, str]) -> object:
        """The value its Perl variable holds (None: unset or empty).  Raises
        SettingError naming the variable."""
        assert self.variable is not None
        text = environ.get(self.variable, "")
        if text == "":
            return None
        try:
            return self.read(text)
        except SettingError as err:
            raise SettingError(f"{self.variable}: {err}") from None


class Seconds(Option):
    parse = staticmethod(parse_seconds)
    shown = staticmethod(lambda value: f"{value:g}")

    def __get__(self, declared: Declared, owner: type | None = None) -> float:
        value = self.value(declared)
        assert isinstance(value, float)
        return value


class SignalOption(Option):
    parse = staticmethod(parse_signal)
    shown = staticmethod(lambda value: signal.Signals(value).name.removeprefix("SIG"))

    def __get__(self, declared: Declared, owner: type | None = None) -> signal.Signals:
        value = self.value(declared)
        assert isinstance(value, signal.Signals)
        return value


class Flag(Option):
    def __get__(self, declared: Declared, owner: type | None = None) -> bool:
        return bool(self.value(declared))

    def exported(self, value: object) -> str:
        return "1"

    def read(self, text: str) -> object:
        return text != "0"  # Perl's truth of a string


class Count(Option):
    parse = staticmethod(parse_positive_int)

    def __get__(self, declared: Declared, owner: type | None = None) -> int | None:
        value = self.value(declared)
        assert value is None or isinstance(value, int)
        return value


class Mode(Option):
    parse = staticmethod(parse_mode)
    shown = staticmethod(lambda value: f"{value:04o}")

    def __get__(self, declared: Declared, owner: type | None = None) -> int:
        value = self.value(declared)
        assert isinstance(value, int)
        return value


class Text(Option):
    parse = staticmethod(str)

    def __get__(self, declared: Declared, owner: type | None = None) -> str | None:
        value = self.value(declared)
        assert value is None or isinstance(value, str)
        return value


class Repeated(Option):
    parse: Callable[[str], object] = staticmethod(str)
    repeatable = True

    def __get__(self, declared: Declared, owner: type | None = None) -> list[str]:
        value = self.value(declared)
        assert value is None or isinstance(value, list)
        return list(value or ())


# Label names the metrics use themselves, or Prometheus reserves.
RESERVED_LABELS = frozenset({"state", "outcome", "reason", "version", "pid"})


def parse_label(text: str) -> str:
    name, equals, _value = text.partition("=")
    if not equals:
        raise SettingError(f"{text!r} is not NAME=VALUE")
    valid = name[:1].isalpha() or name[:1] == "_"
    valid = valid and all(c.isascii() and (c.isalnum() or c == "_") for c in name)
    if not valid or name.startswith("__"):
        raise SettingError(f"{name!r} is not a Prometheus label name")
    if name in RESERVED_LABELS:
        raise SettingError(f"label {name!r} is one the metrics use themselves")
    return text


class Labels(Repeated):
    parse = staticmethod(parse_label)


class Declared:
    """A set of options, each declared once on the class (an :class:`Option`);
    an instance holds the values given, by attribute name (None: not given).
    (Plain classes, not dataclasses: see sockets.PortSpec.)"""

    def __init__(self, **given: object) -> None:
        unknown = set(given) - set(self.options())
        if unknown:
            raise TypeError(f"not options of {type(self).__name__}: {sorted(unknown)}")
        self.given = given

    @classmethod
    def options(cls) -> dict[str, Option]:
        return {name: value for name, value in vars(cls).items() if isinstance(value, Option)}

    @classmethod
    def given_in(
        cls, args: Namespace, environ: Mapping[str, str] | None = None
    ) -> dict[str, object]:
        """The values on the command line; with ``environ``, those with a
        Perl variable as that holds them (export_perl_variables put the
        command line's there)."""
        return {
            name: option.from_variable(environ)
            if environ is not None and option.variable is not None
            else getattr(args, name)
            for name, option in cls.options().items()
        }

    @classmethod
    def from_args(cls, args: Namespace) -> Self:
        return cls(**cls.given_in(args))


class Resources(Declared):
    """What serve.py opens and holds while the superdaemon runs."""

    port = Repeated(
        "--port",
        "TCP port to listen to: PORT (0.0.0.0), HOST:PORT, [V6ADDR]:PORT; "
        "=FD pins the descriptor; a 'u' before PORT means UDP (repeatable)",
        metavar="[HOST:]PORT[=FD]",
    )
    path = Repeated("--path", "unix socket path to listen to (repeatable)", metavar="PATH")
    path_mode = Mode(
        "--path-mode",
        "permissions of --path sockets (default {default}, as Perl's start_server)",
        0o777,
        "MODE",
    )
    backlog = Count("--backlog", "listen(2) backlog (default SOMAXCONN)", metavar="N")
    pid_file = Text(
        "--pid-file", "write start_server's pid here (locked while it runs)", metavar="FILE"
    )
    log_file = Text(
        "--log-file",
        "append stdout and stderr to FILE, or pipe them to CMD",
        metavar="FILE|'| CMD'",
    )
    daemonize = Flag("--daemonize", "fork into the background (needs --log-file)")
    control_socket = Text(
        "--control-socket",
        "unix socket for --restart (default $RUNTIME_DIRECTORY/start_server.sock, "
        "else PIDFILE.sock)",
        metavar="PATH",
    )


class Settings(Declared):
    """The fixed settings of one superdaemon."""

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
        85.0,  # below systemd's default TimeoutStopSec=90s; --stop waits as long
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
    max_surge = Count(
        "--max-surge",
        "rolling reload: start the new generation with K workers and move the serving one's "
        "to it K at a time, for programs that report their workers (see the worker "
        "contract); needs --require-notify (default: the whole generation at once)",
        metavar="K",
        variable="SERVER_STARTER_MAX_SURGE",
    )
    directory = Text("--dir", "working directory of the server program", metavar="PATH")
    status_file = Text("--status-file", "write GEN:PID of every live worker here", metavar="FILE")
    metrics_file = Text(
        "--metrics-file",
        "write the Prometheus text format here at each event (for node_exporter's "
        "textfile collector)",
        metavar="FILE",
    )
    metrics_labels = Labels(
        "--metrics-label",
        "add this label to every series of --metrics-file, e.g. unit=%%n in a unit file, so "
        "that several apps on one host stay apart (repeatable)",
        metavar="NAME=VALUE",
    )
    envdir = Text(
        "--envdir",
        "directory of environment variables for the workers, re-read before each start",
        metavar="DIR",
        variable=ENVDIR,
    )

    def __init__(self, command: Sequence[str] = (), **given: object) -> None:
        super().__init__(**given)
        self.command = list(command)

    @classmethod
    def from_args(cls, args: Namespace, environ: Mapping[str, str] | None = None) -> Self:
        """With ``environ``, --envdir as the superdaemon reads it: from ENVDIR."""
        return cls(args.command, **cls.given_in(args, environ))

    def check(self) -> None:
        """Refuse what cannot be meant (SettingError)."""
        if self.given.get("ready_timeout") is not None and not self.require_notify:
            raise SettingError("--ready-timeout applies only with --require-notify")
        if self.max_surge is not None and not self.require_notify:
            raise SettingError("--max-surge applies only with --require-notify")
        if self.metrics_labels and self.metrics_file is None:
            raise SettingError("--metrics-label applies only with --metrics-file")
        names = [label.partition("=")[0] for label in self.metrics_labels]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise SettingError(f"--metrics-label {repeated[0]} is given twice")

    @property
    def ready_wait(self) -> float:
        """How long a starting generation has to become ready."""
        return self.ready_timeout if self.require_notify else self.interval


class Tunables(Declared):
    """Perl's variables as they stand for the next decision."""

    auto_restart = Flag(
        "--enable-auto-restart", "restart the worker periodically", variable=ENABLE_AUTO_RESTART
    )
    auto_restart_interval = Seconds(
        "--auto-restart-interval",
        "period of --enable-auto-restart (default {default})",
        360.0,
        "SECONDS",
        variable=AUTO_RESTART_INTERVAL,
    )
    kill_old_delay = Seconds(
        "--kill-old-delay",
        "wait this long after a new worker is ready before signalling old ones "
        f"(default {{default}}, or {KILL_OLD_DELAY_WITH_AUTO_RESTART:g} with auto-restart)",
        0.0,
        "SECONDS",
        variable=KILL_OLD_DELAY,
    )

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Tunables:
        """Raises SettingError naming the variable that is not a number."""
        values = {name: option.from_variable(environ) for name, option in cls.options().items()}
        # Perl: ``$ENV{AUTO_RESTART_INTERVAL} || 360``, so 0 means the default.
        values["auto_restart_interval"] = values["auto_restart_interval"] or None
        if values["kill_old_delay"] is None and values["auto_restart"]:
            values["kill_old_delay"] = KILL_OLD_DELAY_WITH_AUTO_RESTART
        return cls(**values)


class Client(Declared):
    """What a request to a running superdaemon (--restart, --upgrade) is
    told besides where it is (Resources' --pid-file and --control-socket)."""

    restart_timeout = Seconds(
        "--restart-timeout",
        "how long --restart waits for the outcome (default {default})",
        90.0,
        "SECONDS",
    )


def export_perl_variables(environ: dict[str, str], args: Namespace) -> None:
    """Options win; otherwise Perl's environment variables stand in.  Either
    way the value is exported to the workers, as Perl does.  Raises
    SettingError if the environment holds one that is not a number."""
    for declared in (Settings, Tunables):
        for name, option in declared.options().items():
            value = getattr(args, name)
            if option.variable is not None and value is not None:
                environ[option.variable] = option.exported(value)
    Tunables.from_environ(environ)  # refuses a bad value now, not at the first reload
