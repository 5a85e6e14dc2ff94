"""Test support: run a real superdaemon (ours or Perl's), wait on what it
logs, and talk HTTP to its workers.  Every wait is bounded."""

from __future__ import annotations

import abc
import contextlib
import fcntl
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
START_SERVER = str(BIN / "start_server")
PERL_START_SERVER = "/usr/bin/start_server"
EXAMPLE_APP = [sys.executable, "-m", "server_starter.example_app"]
APPS = ROOT / "tests" / "apps"
REPORTER = [sys.executable, str(ROOT / "tests" / "workers" / "reporter.py")]
# Debian's own interpreter, with Debian's aiohttp (3.8 on bookworm); the
# venv's python has PyPI's newest.
DEBIAN_PYTHON = "/usr/bin/python3"


def uvicorn_app(python: str = sys.executable, apps: Path | str = APPS) -> list[str]:
    """The ASGI test app under the uvicorn adapter."""
    return [
        python,
        "-m",
        "server_starter.uvicorn",
        "asgi_app:app",
        f"--app-dir={apps}",
        "--log-level=warning",
    ]


def gunicorn_uvicorn(python: str = sys.executable, apps: Path | str = APPS) -> list[str]:
    """gunicorn with our UvicornWorker, running the same ASGI test app."""
    return [
        python,
        "-m",
        "gunicorn",
        "-c",
        "python:server_starter.gunicorn",
        "-k",
        "server_starter.uvicorn_worker.UvicornWorker",
        "-w",
        "2",
        f"--chdir={apps}",
        "--log-level=warning",
        "asgi_app:app",
    ]


def aiohttp_app(python: str = sys.executable, apps: Path | str = APPS) -> list[str]:
    """The aiohttp test app under the aiohttp adapter."""
    return [python, "-m", "server_starter.aiohttp", "aiohttp_app:app", f"--app-dir={apps}"]


def keep_alive_servers(
    python: str = sys.executable, apps: Path | str = APPS
) -> dict[str, list[str]]:
    """Every server of ours that keeps connections alive, with its test app,
    run by ``python`` from ``apps``: each answers "/" with its generation in
    X-Server-Starter-Generation, and "/slow" with its head before its body."""
    return {
        "uvicorn adapter": uvicorn_app(python, apps),
        "gunicorn + UvicornWorker": gunicorn_uvicorn(python, apps),
        "example app": [python, "-m", "server_starter.example_app"],
        "aiohttp adapter": aiohttp_app(python, apps),
        "asyncio recipe": [python, f"{apps}/asyncio_http_app.py"],
    }


UVICORN_APP = uvicorn_app()
# gunicorn (Debian's, through the venv's system site-packages).
GUNICORN_UVICORN = gunicorn_uvicorn()
KEEP_ALIVE_SERVERS = keep_alive_servers()


README_BLOCK = re.compile(r"^<!-- readme-test: ([\w-]+) -->\n```(\w*)\n(.*?)^```$", re.M | re.S)


def readme_blocks() -> dict[str, str]:
    """The README's fenced blocks marked ``<!-- readme-test: NAME -->``, by
    name, verbatim: what the tests run as the README shows it."""
    text = (ROOT / "README.md").read_text()
    blocks = {name: body for name, _, body in README_BLOCK.findall(text)}
    assert len(blocks) == text.count("<!-- readme-test:"), "a marker not followed by a block"
    return blocks


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def http_get(
    port: int,
    path: str = "/",
    timeout: float = 10.0,
    unix: str | None = None,
    host: str = "127.0.0.1",
) -> tuple[int, dict[str, str], str]:
    conn: http.client.HTTPConnection
    if unix is not None:
        conn = _UnixHTTPConnection(unix, timeout)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read().decode()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def generation_of(port: int) -> int:
    status, headers, _ = http_get(port)
    assert status == 200
    return int(headers["x-server-starter-generation"])


def reports(directory: Path) -> list[dict[str, Any]]:
    """Worker reports, oldest generation first."""
    found = [json.loads(p.read_text()) for p in directory.glob("report-*.json")]
    return sorted(found, key=lambda r: int(r["env"].get("SERVER_STARTER_GENERATION", 0)))


def wait_for_reports(directory: Path, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    # Reports are files written by separate processes; a short bounded poll is
    # the only way to observe them without an extra channel.
    deadline = time.monotonic() + timeout
    while True:
        found = reports(directory)
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {count} worker reports in {directory}, got {found}")
        time.sleep(0.05)


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


def signals_received(directory: Path, pid: int) -> list[str]:
    path = directory / f"signals-{pid}.log"
    return path.read_text().split() if path.exists() else []


def children(pid: int) -> list[int]:
    """The pids of a process's children (none once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


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


class ClientThreads(abc.ABC):
    """Client threads running ``_run`` until the block ends."""

    threads: list[threading.Thread]
    stop: threading.Event

    @abc.abstractmethod
    def _run(self) -> None: ...

    def __enter__(self) -> Self:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


class Load(ClientThreads):
    """Client threads sending real HTTP requests until stopped."""

    def __init__(
        self, port: int, threads: int = 8, path: str = "/", unix: str | None = None
    ) -> None:
        self.port, self.path, self.unix = port, path, unix
        self.stop = threading.Event()
        self.generations: Counter[int] = Counter()
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                status, headers, body = http_get(self.port, self.path, unix=self.unix)
                ok = status == 200 and body.endswith(
                    ("!\n", f"{headers.get('x-server-starter-generation')}\n")
                )
                with self.lock:
                    if ok:
                        self.generations[int(headers["x-server-starter-generation"])] += 1
                    else:
                        self.failures.append(f"{status} {body!r}")
            except Exception as err:  # every failure counts, whatever its kind
                with self.lock:
                    self.failures.append(repr(err))

    def total(self) -> int:
        return sum(self.generations.values()) + len(self.failures)

    def refused(self) -> int:
        return sum("ConnectionRefusedError" in failure for failure in self.failures)


def aborted_on_close() -> int:
    """The kernel's count of sockets closed with data unread (``nstat``'s
    TcpExtTCPAbortOnClose): each is a reset the client sees, a request lost
    without a reply.  System-wide; read it before and after a run."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["TCPAbortOnClose"])
    raise RuntimeError("no TcpExt line in /proc/net/netstat")


def run_ab(
    url: str,
    requests: int,
    concurrency: int,
    workdir: Path,
    timeout: float = 1800,
    seconds: int | None = None,
) -> dict[str, Any]:
    """``ab -r -n -c`` (HTTP/1.0, a connection per request), with
    per-request timings (-g) for percentiles and plots.  ab counts a failed
    request once for each kind of failure it saw: "receive" and "exceptions"
    are requests lost, "length" alone a body of another length.  "resets" is
    the kernel's count of aborted connections meanwhile.  With ``seconds``,
    ab stops after that long if the requests are not done by then."""
    timings = workdir / f"ab-{time.monotonic_ns()}.tsv"
    command = ["ab", "-r", "-q", "-s", "60", "-n", str(requests), "-c", str(concurrency)]
    if seconds is not None:
        command[1:1] = ["-t", str(seconds)]  # before -n, which ab's -t would reset
    resets_before = aborted_on_close()
    result = subprocess.run(
        [*command, "-g", str(timings), url],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    resets = aborted_on_close() - resets_before
    samples: list[tuple[float, int]] = []  # (start, epoch seconds; total ms)
    if timings.exists():
        for line in timings.read_text().splitlines()[1:]:
            fields = line.split("\t")
            with contextlib.suppress(ValueError, IndexError):
                samples.append((float(fields[1]), int(fields[4])))
        timings.unlink()
    samples.sort()
    totals = sorted(ms for _, ms in samples)
    return {
        **ab_figures(result.stdout + result.stderr),
        "resets": resets,
        "latency_ms": {
            "p50": percentile(totals, 50),
            "p99": percentile(totals, 99),
            "max": totals[-1] if totals else 0,
        },
        "ab_exit": result.returncode,
        "samples": samples,
    }


def ab_figures(output: str) -> dict[str, Any]:
    """What ab printed: requests, failures (and by kind), non-2xx, req/s."""

    def figure(name: str, kind: Callable[[str], float] = int) -> float:
        match = re.search(rf"^{name}:\s+([\d.]+)", output, re.M)
        return kind(match.group(1)) if match else 0

    breakdown = re.search(
        r"\(Connect: (\d+), Receive: (\d+), Length: (\d+), Exceptions: (\d+)\)", output
    )
    by_kind = map(int, breakdown.groups()) if breakdown else (0, 0, 0, 0)
    return {
        "requests": int(figure("Complete requests")),
        "failed": int(figure("Failed requests")),
        "refused": int(breakdown.group(1)) if breakdown else 0,
        "failures_by_kind": dict(
            zip(("connect", "receive", "length", "exceptions"), by_kind, strict=True)
        ),
        "non_2xx": int(figure("Non-2xx responses")),
        "requests_per_second": figure("Requests per second", float),
    }


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


def build_debs(out: Path, version: str | None = None) -> list[Path]:
    """Build our .debs into ``out`` (the version in the changelog, unless given)."""
    result = subprocess.run(
        [str(ROOT / "scripts" / "build-deb.sh"), *([version] if version else [])],
        env={**os.environ, "DIST_DIR": str(out)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"building the packages failed:\n{result.stderr[-3000:]}")
    return sorted(out.glob(f"*_{version}_all.deb" if version else "*.deb"))


def percentile(ordered: list[int], pct: float) -> float:
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return float(ordered[index])


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


@contextlib.contextmanager
def reloading(reload: Callable[[], object], every: float) -> Iterator[list[float]]:
    """Call ``reload`` every ``every`` seconds while the block runs; yields
    the list of wall-clock moments at which each was called."""
    moments: list[float] = []
    done = threading.Event()

    def loop() -> None:
        while not done.wait(every):
            moments.append(time.time())
            reload()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield moments
    finally:
        done.set()
        thread.join(120)


class KeepAliveLoad(ClientThreads):
    """HTTP/1.1 clients that reuse their connection for request after
    request, as a connection pool does, each on its own thread, and open a
    new one only when a reply said ``Connection: close``.  A connection the
    server ends before answering (EOF: the request unserved; a pool that
    retries hides it, a proxy answers 502) is counted in ``clean_closes``
    and replaced; a reset, a broken reply or a wrong status is a failure."""

    def __init__(self, port: int, path: str, threads: int = 50) -> None:
        self.port, self.path = port, path
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.served = 0
        self.clean_closes = 0
        self.connections = 0
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        while not self.stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            with self.lock:
                self.connections += 1
            try:
                self._requests(conn)
            except http.client.RemoteDisconnected:
                with self.lock:  # EOF before the status line: ended cleanly, unserved
                    self.clean_closes += 1
            except Exception as err:  # resets and anything else count as failures
                with self.lock:
                    self.failures.append(repr(err))
            finally:
                conn.close()

    def _requests(self, conn: http.client.HTTPConnection) -> None:
        """Requests on one connection until the server says it will close it."""
        while not self.stop.is_set():
            conn.request("GET", self.path)
            response = conn.getresponse()
            body = response.read()
            with self.lock:
                if response.status == 200 and body:
                    self.served += 1
                else:
                    self.failures.append(f"{response.status} {body!r}")
            if response.will_close:
                return


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


class FakeManager:
    """The receiving end of NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(20)
        self.messages: list[dict[str, str]] = []

    def next(self) -> dict[str, str]:
        payload = self.sock.recv(4096).decode()
        fields = dict(line.split("=", 1) for line in payload.split("\n") if "=" in line)
        self.messages.append(fields)
        return fields

    def keep_reading(self) -> None:
        """Read every message as it comes, in the background, as PID 1 does
        (an unread datagram queue fills after a few messages)."""

        def read() -> None:
            with contextlib.suppress(OSError):
                while True:
                    self.next()

        threading.Thread(target=read, daemon=True).start()

    def until(self, key: str) -> dict[str, str]:
        while True:
            fields = self.next()
            if key in fields:
                return fields


def report(capsys: Any, line: str) -> None:
    """Figures worth reading in the CI log."""
    with capsys.disabled():
        print(f"\n    [measured] {line}")
