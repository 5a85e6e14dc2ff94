"""Processes: a start_server run by a test (``Daemon``, ``running``,
``serving``), its commands (``run_start_server``, ``restart``), what its log
says (``reloads_done``, ``retiring_lifetimes``), and the /proc facts of any
process (``children``, ``grandchildren``, ``pid_alive``,
``process_figures``), the peak of any figure while a block runs
(``sampled_peak``); ``Terminal`` runs a command as a person does."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
START_SERVER = str(BIN / "start_server")
PERL_START_SERVER = "/usr/bin/start_server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))}
    for name in (
        "JOURNAL_STREAM",
        "INVOCATION_ID",
        "ENVDIR",
        "KILL_OLD_DELAY",
        "ENABLE_AUTO_RESTART",
        "AUTO_RESTART_INTERVAL",
        "RUNTIME_DIRECTORY",
    ):
        env.pop(name, None)
    env.update(extra)
    return env


def as_a_user_runs_it() -> dict[str, str]:
    """The environment of a user who has activated the project's venv: a
    shell whose PATH finds this checkout's start_server first."""
    env = worker_env()
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def run_shell(
    block: str, cwd: Path | str, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """A documented shell block run as written (``sh -e``: the first command
    that fails ends it), its output captured."""
    return subprocess.run(
        ["sh", "-ec", block],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Daemon:
    """A start_server process in its own session, its output collected by a
    reader thread so tests can wait for a line instead of sleeping."""

    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        pass_fds: Sequence[int] = (),
        umask: int = -1,
    ) -> None:
        self.argv = list(argv)
        self.port = 0  # the port it listens on, when serving() chose it
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            text=True,
            start_new_session=True,
            pass_fds=pass_fds,
            umask=umask,
        )
        self.lines: list[str] = []
        self.times: list[float] = []  # time.monotonic() at which each line arrived
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.times.append(time.monotonic())
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def matches(self, pattern: str) -> list[re.Match[str]]:
        regex = re.compile(pattern)
        with self._changed:
            return [m for m in map(regex.search, self.lines) if m]

    def arrivals(self, pattern: str) -> list[tuple[float, re.Match[str]]]:
        """(arrival time, match) of every output line matching ``pattern``."""
        regex = re.compile(pattern)
        with self._changed:
            pairs = [
                (t, regex.search(line)) for t, line in zip(self.times, self.lines, strict=True)
            ]
        return [(t, m) for t, m in pairs if m]

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 20.0) -> re.Match[str]:
        """Wait until ``count`` output lines match ``pattern``; return the last."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        found: list[re.Match[str]] = []
        scanned = 0  # lines already searched: a chatty worker can print 100,000s
        with self._changed:
            while True:
                found += [m for m in map(regex.search, self.lines[scanned:]) if m]
                scanned = len(self.lines)
                if len(found) >= count:
                    return found[count - 1]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"waited for {count} line(s) matching {pattern!r}, saw {len(found)}; "
                        f"the last of {scanned} output lines:\n" + "\n".join(self.lines[-200:])
                    )
                self._changed.wait(remaining)

    def signal(self, number: int) -> None:
        os.kill(self.proc.pid, number)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill_everything(self) -> None:
        """Last-resort cleanup: nothing the test started may outlive it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


@contextlib.contextmanager
def running(argv: Sequence[str], **kwargs: Any) -> Iterator[Daemon]:
    daemon = Daemon(argv, **kwargs)
    try:
        yield daemon
    finally:
        if daemon.proc.poll() is None:
            daemon.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                daemon.proc.wait(15)
        daemon.kill_everything()


@contextlib.contextmanager
def serving(
    app: Sequence[str],
    *options: str,
    env: dict[str, str] | None = None,
    ready: str = r"\(generation 1\) is ready",
    timeout: float = 20.0,
    program: str = START_SERVER,
    **kwargs: Any,
) -> Iterator[Daemon]:
    """``program`` (our start_server unless told) on a free port of
    127.0.0.1 (``daemon.port``) with ``options``, running ``app`` with
    ``env`` (worker_env() unless given), once its output says ``ready``:
    the first generation serves.  Stopped as running() stops it."""
    port = free_port()
    argv = [program, f"--port=127.0.0.1:{port}", *options, "--", *app]
    with running(argv, env=worker_env() if env is None else env, **kwargs) as daemon:
        daemon.port = port
        daemon.wait_for(ready, timeout=timeout)
        yield daemon


class Terminal:
    """A command run as a person runs it in a terminal: on a pseudo-terminal
    that is its controlling terminal, as the leader of a new session, so the
    terminal's Ctrl-C signals its whole foreground process group.  What it
    prints is read by a thread (a full terminal would block its writers)."""

    def __init__(self, argv: Sequence[str], env: dict[str, str]) -> None:
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
            # After setsid, in the child: the pty becomes its terminal.
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(slave)
        self._output = bytearray()
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: every process holding the terminal is gone
                chunk = b""
            with self._changed:
                if not chunk:
                    self._changed.notify_all()
                    return
                self._output += chunk
                self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return self._output.decode(errors="replace").replace("\r\n", "\n")

    def wait_for(self, pattern: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not re.search(pattern, self._output.decode(errors="replace"), re.M):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._reader.is_alive():
                    shown = self.output  # the condition's lock is reentrant
                    raise AssertionError(f"waited for {pattern!r}; the terminal shows:\n{shown}")
                self._changed.wait(remaining)

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        # Everything of the session, whatever process group it moved to.
        for entry in Path("/proc").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if entry.name.isdigit():
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    if int(fields[3]) == self.proc.pid:
                        os.kill(int(entry.name), signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._reader.join(10)
        os.close(self.master)


def children(pid: int) -> list[int]:
    """The pids of a process's children (none once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def grandchildren(pid: int) -> int:
    """How many children the children of ``pid`` have: the workers under a
    superdaemon's generations."""
    return sum(len(children(child)) for child in children(pid))


class Peak:
    """The most ``measure()`` returned, sampled every ``every`` seconds on a
    thread of its own (``sampled_peak``); a sample that raises is skipped."""

    def __init__(self, measure: Callable[[], int], every: float) -> None:
        self.measure, self.every = measure, every
        self.peak = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.done.wait(self.every):
            with contextlib.suppress(OSError, ValueError, KeyError):
                self.peak = max(self.peak, self.measure())


@contextlib.contextmanager
def sampled_peak(measure: Callable[[], int], every: float = 0.02) -> Iterator[Peak]:
    """Sample ``measure`` while the block runs: a whole generation's overlap
    (twice the workers for the length of a boot) cannot hide between
    samples 20 ms apart."""
    sampling = Peak(measure, every)
    sampling.thread.start()
    try:
        yield sampling
    finally:
        sampling.done.set()
        sampling.thread.join(5)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes.
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return False


def process_figures(pid: int) -> dict[str, float]:
    """A process's resident memory, CPU time and context switches, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines())
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {
        "rss_kib": int(fields["VmRSS"].split()[0]),
        "cpu_s": (int(stat[11]) + int(stat[12])) / ticks,  # utime + stime
        "voluntary_switches": int(fields["voluntary_ctxt_switches"]),
        "context_switches": int(fields["voluntary_ctxt_switches"])
        + int(fields["nonvoluntary_ctxt_switches"]),
    }


def wait_for_file(path: Path, predicate: Any, timeout: float = 10.0) -> str:
    """Bounded wait until ``predicate(text)`` holds for a file another process
    writes (Perl updates its status file after logging, with no other sign)."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        if predicate(text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never satisfied the condition; it holds {text!r}")
        time.sleep(0.02)


def run_start_server(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
    cwd: Path | None = None,
    pass_fds: Sequence[int] = (),
) -> subprocess.CompletedProcess[str]:
    """Run start_server to completion (--restart, --stop, a bad command line)
    and capture its output; ``env`` defaults to ``worker_env()``."""
    return subprocess.run(
        [START_SERVER, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=worker_env() if env is None else env,
        cwd=cwd,
        pass_fds=pass_fds,
        check=False,
    )


def restart(pid_file: Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return run_start_server("--restart", f"--pid-file={pid_file}", timeout=timeout)


def reloads_done(daemon: Daemon) -> int:
    """Generations made ready after the first, from the superdaemon's log."""
    return len(daemon.matches(r"\(generation \d+\) is ready")) - 1


def retiring_lifetimes(daemon: Daemon) -> list[float]:
    """Seconds from the TERM sent to each retiring worker to its exit, from
    the superdaemon's log lines as they arrived."""
    signalled: dict[str, float] = {}
    for moment, match in daemon.arrivals(r"sending TERM to old workers:([\d,]+)"):
        for pid in match.group(1).split(","):
            signalled.setdefault(pid, moment)
    return sorted(
        moment - signalled[match.group(1)]
        for moment, match in daemon.arrivals(r"^old worker (\d+) died")
        if match.group(1) in signalled
    )
