"""Load: client threads counting every outcome (``Load``, one connection
per request; ``KeepAliveLoad``, HTTP/1.1 connections reused), ``ab`` and
its figures, reloads on a rhythm while the load runs, the kernel's count
of connections reset on close."""

from __future__ import annotations

import abc
import contextlib
import http.client
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

from harness.http_clients import http_get


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


def percentile(ordered: list[int], pct: float) -> float:
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return float(ordered[index])


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
