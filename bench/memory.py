"""make bench MODE=memory: the memory a reload costs, and what a rolling
reload (``--max-surge``) saves, beside the other ways to reload a
multi-worker WSGI app, in one run.

The app: tests/apps/wsgi_app.py, N gunicorn (or uWSGI) workers, each
importing for a while (``WSGI_APP_IMPORT_SECONDS``) and holding private
memory (``WSGI_APP_MEGABYTES``), under ``ab -r -c 20`` on its 50 ms route.
gunicorn is Debian's (python3-gunicorn on /usr/bin/python3), uWSGI is
Debian's (uwsgi-core, uwsgi-plugin-python3): one interpreter for all.

The ways, each started fresh:

- start_server + gunicorn: a reload runs the whole new generation beside
  the old one (today's default), without and with gunicorn's ``--preload``;
- gunicorn alone on the port, reloaded by ``kill -HUP`` of its master;
- uWSGI ``--lazy-apps``, reloaded one worker at a time by touching its
  ``--touch-chain-reload`` file;
- start_server ``--max-surge=1`` + gunicorn (the rolling reload), without
  and with ``--preload``.

Each is measured the same way: once it serves, ab runs for a while (the
steady state: its p99, and the PSS of the process tree sampled meanwhile,
the median taken), then ab runs again as long, and a few seconds in the
reload is triggered. Meanwhile the tree is sampled every SAMPLE_EVERY
seconds:

- the PSS of the tree: the sum of ``Pss:`` in /proc/PID/smaps_rollup of the
  top process (the superdaemon, gunicorn's master, uWSGI's master) and all
  its descendants (found through /proc/PID/task/*/children), each read
  when the tree changes and at least every PSS_REFRESH seconds, and moved
  by its change of resident size in between (PssReader); the peak is the
  largest sample from the trigger to the reload's end;
- the reload's end: the first sample in which no process of the tree at
  the trigger (the top process apart) is alive any more, and N workers
  that were not in it hold the app.  A worker is a process at the depth of
  the app's workers (gunicorn's or uWSGI's workers: children of the top
  process, or its grandchildren under start_server); it holds the app once
  it imported it (the app writes an empty file named by its pid in
  ``WSGI_APP_LOADED_DIR`` at the end of its import), or from its fork on
  when its parent imported it (``--preload``); a worker serves
  milliseconds after that;
- "p99 during": the 99th percentile of the requests ab started in the
  seconds from the trigger to the reload's end (ab's per-request start
  times are whole seconds); failed and non-2xx: ab's counts for the whole
  run with the reload.

The ``--max-surge`` rows are gated: peak PSS at most GATE_RATIO x steady,
0 failed, 0 non-2xx, p99 during at most GATE_RATIO x the steady p99 of the
same row, the reload done within N x the import time + GATE_SLACK_S.
Writes ``<out>/<date>-<mode>.json`` and, for a full run into the checkout,
the table of docs/measurements.md between the ``bench-memory`` markers.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from harness.apps import APPS, DEBIAN_PYTHON
from harness.http_clients import http_get
from harness.load import run_ab
from harness.processes import ROOT, START_SERVER, Daemon, free_port, worker_env

PROFILES: dict[str, dict[str, Any]] = {
    # The case: 4 workers importing for 2 s and holding 200 MB each.
    "memory": {
        "workers": 4,
        "megabytes": 200,
        "import_seconds": 2.0,
        "concurrency": 20,
        "ab_seconds": 25,  # each of the two ab runs: uWSGI's chain reload takes 13-16 s
        "lead_in_seconds": 3.0,  # the reload is triggered this long into the second
    },
    # The harness itself, for CI (tests/processes/test_bench.py).
    "memory-smoke": {
        "workers": 2,
        "megabytes": 20,
        "import_seconds": 0.3,
        "concurrency": 20,
        "ab_seconds": 5,
        "lead_in_seconds": 1.0,
    },
}
SAMPLE_EVERY = 0.05  # seconds between two samples of the tree
PSS_REFRESH = 1.0  # seconds: the oldest a process's smaps_rollup in a sample may be
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
GATE_RATIO = 1.3
GATE_SLACK_S = 4.0
PATH = "/50ms"
AB_REQUESTS = 100_000  # more than ab can send in ab_seconds: -t ends each run
RELOAD_TIMEOUT = 90.0

MARKERS = ("<!-- bench-memory:start -->", "<!-- bench-memory:end -->")


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# -- the process tree ---------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """The children of every thread of ``pid``."""
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError):
                kids += map(int, Path(f"/proc/{pid}/task/{task}/children").read_text().split())
    return kids


def gone(pid: int) -> bool:
    """Exited, or a zombie not yet reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def process_tree(top: int) -> dict[int, tuple[int, int]]:
    """Every live process of the tree under ``top``: pid -> (parent, depth)."""
    if gone(top):
        return {}
    found = {top: (0, 0)}
    pending = [top]
    while pending:
        pid = pending.pop()
        for kid in children_of(pid):
            if kid not in found and not gone(kid):
                found[kid] = (pid, found[pid][1] + 1)
                pending.append(kid)
    return found


def pss_kib(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    match = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else 0


class Sample(NamedTuple):
    moment: float  # time.monotonic()
    pss_kib: int  # the whole tree's
    alive: frozenset[int]  # every process of the tree
    workers: frozenset[int]  # the processes at the workers' depth
    holding: frozenset[int]  # those of them that hold the app


class PssReader:
    """The tree's PSS at every sample, without walking every page table
    each time: reading smaps_rollup costs the reader about 5 ms of CPU per
    200 MB mapped (the kernel visits every page), and read 20 times a
    second it slowed the imports it measured (4 new workers filling 200 MB
    each took seconds longer).  So each process's ``Pss:`` is read when the
    tree changes (a fork or an exit changes what its members share) and at
    least every PSS_REFRESH seconds; in between, a process's PSS moves by
    the pages it gained or lost (``resident`` in /proc/PID/statm): the pages
    a process touches anew are its own, as the app's objects are."""

    def __init__(self) -> None:
        self.known: dict[int, tuple[int, int, float]] = {}  # pid: resident KiB, PSS, when read
        self.reads = 0

    def total(self, pids: frozenset[int], now: float) -> int:
        changed = pids != frozenset(self.known)
        fresh: dict[int, tuple[int, int, float]] = {}
        total = 0
        for pid in pids:
            try:
                resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KIB
            except (OSError, IndexError, ValueError):
                continue  # gone
            known = self.known.get(pid)
            if changed or known is None or now - known[2] >= PSS_REFRESH:
                known = (resident, pss_kib(pid), now)
                self.reads += 1
            fresh[pid] = known
            total += max(0, known[1] + resident - known[0])
        self.known = fresh
        return total


def sample(top: int, depth: int, loaded: Path, reader: PssReader) -> Sample:
    moment = time.monotonic()
    tree = process_tree(top)
    marked = set(os.listdir(loaded))
    workers = frozenset(pid for pid, (_, level) in tree.items() if level == depth)
    holding = frozenset(pid for pid in workers if str(pid) in marked or str(tree[pid][0]) in marked)
    alive = frozenset(tree)
    return Sample(moment, reader.total(alive, moment), alive, workers, holding)


class Sampler:
    """Samples the tree every SAMPLE_EVERY seconds until stopped; once told
    of a reload (``watch``), notes the first sample in which it is done."""

    def __init__(self, top: int, depth: int, loaded: Path, workers: int) -> None:
        self.top, self.depth, self.loaded, self.wanted = top, depth, loaded, workers
        self.samples: list[Sample] = []
        self.stopped = threading.Event()
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.old: frozenset[int] | None = None
        self.triggered = 0.0
        self.reader = PssReader()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(10)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self.stopped.is_set():
            taken = sample(self.top, self.depth, self.loaded, self.reader)
            with self.lock:
                self.samples.append(taken)
                if self.old is not None and not self.done.is_set() and self._finished(taken):
                    self.done.set()
            next_at = max(next_at + SAMPLE_EVERY, time.monotonic())
            self.stopped.wait(next_at - time.monotonic())

    def _finished(self, taken: Sample) -> bool:
        assert self.old is not None
        return not (self.old & taken.alive) and len(taken.holding - self.old) >= self.wanted

    def watch(self) -> frozenset[int]:
        """The reload starts now: every process of the tree but the top one
        is the old code's.  Returns them."""
        old = frozenset(process_tree(self.top)) - {self.top}
        with self.lock:
            self.old, self.triggered = old, time.monotonic()
        return old

    def since(self, start: float) -> list[Sample]:
        with self.lock:
            return [s for s in self.samples if s.moment >= start]


def ready(sampler: Sampler) -> bool:
    with sampler.lock:
        last = sampler.samples[-1] if sampler.samples else None
    return last is not None and len(last.holding) >= sampler.wanted


# -- the ways to reload -------------------------------------------------------------


@dataclass
class Way:
    name: str
    kind: str  # "start_server", "gunicorn" or "uwsgi"
    options: tuple[str, ...] = ()  # start_server's
    preload: bool = False
    gated: bool = False

    @property
    def depth(self) -> int:
        """How deep in the tree the app's workers are."""
        return 2 if self.kind == "start_server" else 1


WAYS = [
    Way("start_server + gunicorn (whole overlap, today's default)", "start_server"),
    Way("the same with gunicorn --preload", "start_server", preload=True),
    Way("gunicorn alone, its own HUP", "gunicorn"),
    Way("uWSGI --lazy-apps, --touch-chain-reload", "uwsgi"),
    Way("start_server --max-surge=1 + gunicorn", "start_server", ("--max-surge=1",), gated=True),
    Way(
        "start_server --max-surge=1 + gunicorn --preload",
        "start_server",
        ("--max-surge=1",),
        preload=True,
        gated=True,
    ),
]


def command(way: Way, port: int, workers: int, reload_file: Path) -> list[str]:
    gunicorn = [DEBIAN_PYTHON, "-m", "gunicorn"]
    app = [f"--chdir={APPS}", "-w", str(workers), *(["--preload"] if way.preload else [])]
    app.append("wsgi_app:app")
    if way.kind == "start_server":
        superdaemon = [START_SERVER, f"--port=127.0.0.1:{port}", "--require-notify", *way.options]
        return [*superdaemon, "--", *gunicorn, "-c", "python:server_starter.gunicorn", *app]
    if way.kind == "gunicorn":
        return [*gunicorn, f"--bind=127.0.0.1:{port}", *app]
    return [
        "uwsgi",
        "--plugin=python3",
        f"--http-socket=127.0.0.1:{port}",
        "--master",
        f"--processes={workers}",
        "--lazy-apps",
        f"--touch-chain-reload={reload_file}",
        f"--wsgi-file={APPS / 'wsgi_app.py'}",
        "--callable=app",
        "--need-app",
        "--die-on-term",  # TERM stops it (uWSGI 2.0 reloads on TERM otherwise)
        "--disable-logging",  # no line per request
    ]


def shown(argv: list[str], port: int, workdir: Path) -> str:
    """The command as the docs show it: no path of this machine."""
    text = " ".join(argv)
    for path, name in (
        (f"{START_SERVER} ", "start_server "),
        (f"{DEBIAN_PYTHON} ", "python3 "),
        (f"{workdir}/", ""),
        (f"{ROOT}/", ""),
    ):
        text = text.replace(path, name)
    return text.replace(str(port), "PORT")


def trigger(way: Way, daemon: Daemon, reload_file: Path) -> None:
    if way.kind == "uwsgi":
        os.utime(reload_file)  # uWSGI's master looks at the file every second
    else:
        daemon.signal(signal.SIGHUP)  # the superdaemon, or gunicorn's master


TRIGGERS = {
    "start_server": "kill -HUP of the superdaemon",
    "gunicorn": "kill -HUP of gunicorn's master",
    "uwsgi": "touch of the --touch-chain-reload file",
}


def stop(daemon: Daemon, pids: frozenset[int]) -> None:
    """Stop the way the app stops, then make sure nothing of it is left."""
    if daemon.proc.poll() is None:
        daemon.signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            daemon.wait(60)
    daemon.kill_everything()
    for pid in pids:  # start_server's generations run in process groups of their own
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


# -- one way, measured ----------------------------------------------------------------


def ab_figures(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "requests": result["requests"],
        "failed": result["failed"],
        "non_2xx": result["non_2xx"],
        "requests_per_second": result["requests_per_second"],
        "p50_ms": result["latency_ms"]["p50"],
        "p99_ms": result["latency_ms"]["p99"],
        "max_ms": result["latency_ms"]["max"],
    }


def percentile(values: list[int], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return float(ordered[index])


def mib(kib: float) -> float:
    return round(kib / 1024, 1)


@dataclass
class Observed:
    """What one way's two ab runs and the samples of its tree gave."""

    steady: dict[str, Any]  # run_ab's result, steady
    steady_pss_kib: float  # the median of the samples during it
    during: dict[str, Any]  # run_ab's result, with the reload
    samples: list[Sample]  # from the trigger on
    old: frozenset[int]  # the tree at the trigger, the top process apart
    triggered: float  # time.monotonic() at the trigger
    triggered_at: float  # time.time() at the trigger
    finished: bool  # done within RELOAD_TIMEOUT
    pss_reads_per_sample: float
    exited: int | None  # the top process's exit status, if it exited during the run
    load_average: list[float]  # the machine's (1 minute) before and after


def measure(way: Way, profile: dict[str, Any], workdir: Path) -> dict[str, Any]:
    workers, seconds = profile["workers"], profile["ab_seconds"]
    port = free_port()
    slug = re.sub(r"\W+", "-", way.name).strip("-")
    loaded = workdir / f"loaded-{slug}"
    loaded.mkdir()
    reload_file = workdir / f"reload-{slug}"
    reload_file.touch()
    argv = command(way, port, workers, reload_file)
    env = worker_env(
        PYTHONPATH=str(ROOT / "src"),  # server_starter.gunicorn for Debian's python3
        WSGI_APP_IMPORT_SECONDS=str(profile["import_seconds"]),
        WSGI_APP_MEGABYTES=str(profile["megabytes"]),
        WSGI_APP_LOADED_DIR=str(loaded),
    )
    url = f"http://127.0.0.1:{port}{PATH}"
    daemon = Daemon(argv, env=env, cwd=workdir)
    sampler = Sampler(daemon.pid, way.depth, loaded, workers)
    try:
        with sampler:
            deadline = time.monotonic() + 120
            while not (ready(sampler) and answers(port)):
                if time.monotonic() > deadline or daemon.proc.poll() is not None:
                    raise SystemExit(f"bench: {way.name} never served:\n{daemon.output()[-3000:]}")
                time.sleep(0.1)
            time.sleep(1)  # let it settle
            load_before = round(os.getloadavg()[0], 2)  # the machine's, shared

            log(f"memory: {way.name}: steady, ab -c {profile['concurrency']} -t {seconds}")
            started = time.monotonic()
            steady = run_ab(url, AB_REQUESTS, profile["concurrency"], workdir, seconds=seconds)
            steady_pss = statistics.median(s.pss_kib for s in sampler.since(started))

            log(f"memory: {way.name}: a reload {profile['lead_in_seconds']:g} s into the load")
            during: dict[str, Any] = {}
            load = threading.Thread(
                target=lambda: during.update(
                    run_ab(url, AB_REQUESTS, profile["concurrency"], workdir, seconds=seconds)
                )
            )
            load.start()
            time.sleep(profile["lead_in_seconds"])
            triggered_at = time.time()
            old = sampler.watch()
            trigger(way, daemon, reload_file)
            deadline = time.monotonic() + RELOAD_TIMEOUT
            while not sampler.done.wait(0.2) and daemon.proc.poll() is None:
                if time.monotonic() > deadline:
                    break
            load.join()
            time.sleep(2 * SAMPLE_EVERY)
            finished = sampler.done.is_set()
            exited = daemon.proc.poll()
            if exited is not None:  # a figure, and what it said before it went
                log(f"memory: {way.name}: exited during the run ({exited}):")
                print("\n".join(daemon.output().splitlines()[-40:]), file=sys.stderr)
        observed = Observed(
            steady,
            steady_pss,
            during,
            sampler.since(sampler.triggered),
            old,
            sampler.triggered,
            triggered_at,
            finished,
            round(sampler.reader.reads / max(1, len(sampler.since(0))), 2),
            exited,
            [load_before, round(os.getloadavg()[0], 2)],
        )
    finally:
        stop(daemon, frozenset().union(*(s.alive for s in sampler.since(0))))
    return analyse(way, profile, daemon, observed, shown(argv, port, workdir))


def answers(port: int) -> bool:
    try:
        return http_get(port, PATH, timeout=5)[0] == 200
    except OSError:
        return False


def seconds_or_none(value: float | None) -> str:
    return "not done" if value is None else f"{value:.1f} s"


def analyse(
    way: Way, profile: dict[str, Any], daemon: Daemon, seen: Observed, shown_command: str
) -> dict[str, Any]:
    workers, old, samples = profile["workers"], seen.old, seen.samples

    def first(predicate: Callable[[Sample], bool]) -> float | None:
        found = next((s for s in samples if predicate(s)), None)
        return None if found is None else round(found.moment - seen.triggered, 2)

    old_gone = first(lambda s: not (old & s.alive))
    new_hold = first(lambda s: len(s.holding - old) >= workers)
    done = first(lambda s: not (old & s.alive) and len(s.holding - old) >= workers)
    window = [s for s in samples if done is None or s.moment - seen.triggered <= done]
    peak = max(s.pss_kib for s in window)
    # The requests ab started from the trigger's second to the end's (ab
    # notes whole seconds).
    first_second = int(seen.triggered_at)
    last_second = int(seen.triggered_at + (done if done is not None else RELOAD_TIMEOUT))
    in_window = [ms for start, ms in seen.during["samples"] if first_second <= start <= last_second]
    # From a new worker's first sample to its first holding the app.
    appeared: dict[int, float] = {}
    holds: dict[int, float] = {}
    for s in samples:
        for pid in s.workers - old:
            appeared.setdefault(pid, s.moment)
        for pid in s.holding - old:
            holds.setdefault(pid, s.moment)
    boots = sorted(round(holds[pid] - appeared[pid], 2) for pid in holds if pid in appeared)
    result: dict[str, Any] = {
        "command": shown_command,
        "trigger": TRIGGERS[way.kind],
        "steady": {**ab_figures(seen.steady), "pss_mib": mib(seen.steady_pss_kib)},
        "reload": {
            **ab_figures(seen.during),
            "peak_pss_mib": mib(peak),
            "peak_ratio": round(peak / seen.steady_pss_kib, 2),
            "old_gone_s": old_gone,
            "new_workers_hold_the_app_s": new_hold,
            "reload_s": done if seen.finished else None,
            "load_covered_it": done is not None
            and done + profile["lead_in_seconds"] < profile["ab_seconds"],
            "requests_during": len(in_window),
            "p99_during_ms": percentile(in_window, 99),
            "max_during_ms": max(in_window, default=0),
            "most_workers": max(len(s.workers) for s in window),
            "fewest_holding_the_app": min(len(s.holding) for s in window),
            "samples": len(window),
            "worker_boots_s": boots,
        },
        "pss_reads_per_sample": seen.pss_reads_per_sample,
        "exited_during_the_run": seen.exited,
        "load_average": seen.load_average,
        # The tree from the trigger to a second after the reload's end:
        # seconds, PSS in MiB, workers, workers holding the app.
        "series": [
            [round(s.moment - seen.triggered, 2), mib(s.pss_kib), len(s.workers), len(s.holding)]
            for s in samples
            if done is None or s.moment - seen.triggered <= done + 1
        ],
    }
    if way.kind == "start_server":
        result["superdaemon_signals"] = {
            name: len(daemon.matches(rf"sending {name} to worker")) for name in ("TTIN", "TTOU")
        }
    if way.gated:
        result["gates"] = gates(result, profile)
    return result


def gates(result: dict[str, Any], profile: dict[str, Any]) -> dict[str, Any]:
    steady, reload = result["steady"], result["reload"]
    p99_ratio = round(reload["p99_during_ms"] / steady["p99_ms"], 2) if steady["p99_ms"] else None
    budget = profile["workers"] * profile["import_seconds"] + GATE_SLACK_S
    took = reload["reload_s"]
    return {
        "peak_pss_ratio": {
            "value": reload["peak_ratio"],
            "limit": GATE_RATIO,
            "pass": reload["peak_ratio"] <= GATE_RATIO,
        },
        "failed": {"value": reload["failed"], "limit": 0, "pass": reload["failed"] == 0},
        "non_2xx": {"value": reload["non_2xx"], "limit": 0, "pass": reload["non_2xx"] == 0},
        "p99_ratio": {
            "value": p99_ratio,
            "limit": GATE_RATIO,
            "pass": p99_ratio is not None and p99_ratio <= GATE_RATIO,
        },
        "reload_s": {"value": took, "limit": budget, "pass": took is not None and took <= budget},
    }


# -- the run ----------------------------------------------------------------------------


def versions() -> dict[str, str]:
    def output(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        except OSError:
            return "unknown"
        return (done.stdout or done.stderr).strip() or "unknown"

    return {
        "gunicorn": output([DEBIAN_PYTHON, "-c", "import gunicorn; print(gunicorn.__version__)"]),
        "uwsgi": output(["uwsgi", "--version"]),
    }


def missing() -> list[str]:
    found = [] if shutil.which("ab") else ["ab (apache2-utils)"]
    if not shutil.which("uwsgi"):
        found.append("uwsgi (uwsgi-core)")
    if not Path("/usr/lib/uwsgi/plugins/python3_plugin.so").exists():
        found.append("uwsgi-plugin-python3")
    gunicorn = subprocess.run([DEBIAN_PYTHON, "-c", "import gunicorn"], check=False)
    if gunicorn.returncode != 0:
        found.append("python3-gunicorn")
    return found


def main(mode: str, out: Path, machine: dict[str, str]) -> int:
    profile = PROFILES[mode]
    absent = missing()
    if absent:
        print(f"bench: missing {absent} (scripts/install-deps.sh bench)", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d")
    started = time.monotonic()
    results: dict[str, Any] = {
        "date": stamp,
        "mode": mode,
        "profile": profile,
        "machine": {**machine, **versions()},
        "load": (
            f"{profile['workers']} workers each importing for {profile['import_seconds']:g} s "
            f"and holding {profile['megabytes']} MB; ab -r -c {profile['concurrency']} "
            f"-t {profile['ab_seconds']} on {PATH} (50 ms) steady, then again with one reload "
            f"{profile['lead_in_seconds']:g} s in; the tree sampled every "
            f"{SAMPLE_EVERY * 1000:.0f} ms"
        ),
        "contenders": {},
    }
    with tempfile.TemporaryDirectory(prefix="server-starter-bench-") as tmp:
        for way in WAYS:
            results["contenders"][way.name] = measure(way, profile, Path(tmp))
    results["duration_s"] = round(time.monotonic() - started, 1)
    json_path = out / f"{stamp}-{mode}.json"
    # A list of numbers on one line: the series stays readable.
    text = re.sub(
        r"\[\s*(-?[\d.]+(?:,\s*-?[\d.]+)*)\s*\]",
        lambda match: "[" + re.sub(r",\s*", ", ", match.group(1)) + "]",
        json.dumps(results, indent=2),
    )
    json_path.write_text(text + "\n")
    table = markdown(results)
    if mode == "memory" and out.resolve().is_relative_to(ROOT):
        update_measurements(table)
    print(table)
    log(f"wrote {json_path} in {results['duration_s']:g} s")
    return 0


def markdown(results: dict[str, Any]) -> str:
    facts, profile = results["machine"], results["profile"]
    workers = profile["workers"]
    lines = [
        f"Run of {results['date']} (`make bench MODE={results['mode']}`), {facts['nproc']} "
        f"cores, Linux {facts['kernel']}, ab {facts['ab']}, Debian's gunicorn "
        f"{facts['gunicorn']} and uWSGI {facts['uwsgi']}, server-starter "
        f"{facts['server_starter']}: {results['load']}.",
        "",
        "| way | steady PSS of the tree | peak during the reload | reload (old gone / "
        f"{workers} new hold the app) | p99 steady | p99 during | failed / non-2xx "
        "| workers at most / holding the app at least |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["contenders"].items():
        steady, reload = r["steady"], r["reload"]
        seconds = seconds_or_none
        if r["exited_during_the_run"] is not None:
            name += f" (exited during the run, status {r['exited_during_the_run']})"
        lines.append(
            f"| {name} | {steady['pss_mib']:,.0f} MiB | {reload['peak_pss_mib']:,.0f} MiB "
            f"({reload['peak_ratio']:.2f}x) | {seconds(reload['reload_s'])} "
            f"({seconds(reload['old_gone_s'])} / {seconds(reload['new_workers_hold_the_app_s'])}) "
            f"| {steady['p99_ms']:,.0f} ms | {reload['p99_during_ms']:,.0f} ms "
            f"| {reload['failed']:,} / {reload['non_2xx']:,} "
            f"| {reload['most_workers']} / {reload['fewest_holding_the_app']} |"
        )
    loads = [load for r in results["contenders"].values() for load in r["load_average"]]
    budget = workers * profile["import_seconds"] + GATE_SLACK_S
    lines += [
        "",
        f"The machine's load average (1 minute), read before and after each way, ranged "
        f"from {min(loads):g} to {max(loads):g} (other work shares the machine).",
        "",
        f"Gates of the `--max-surge` rows: peak PSS at most {GATE_RATIO:g}x steady, 0 failed, "
        f"0 non-2xx, p99 during at most {GATE_RATIO:g}x the steady p99, the reload within "
        f"{workers} x {profile['import_seconds']:g} s + {GATE_SLACK_S:g} s = {budget:g} s.",
        "",
        "| way | peak PSS | failed | non-2xx | p99 during / steady | reload |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results["contenders"].items():
        if "gates" not in r:
            continue
        cells = []
        for key in ("peak_pss_ratio", "failed", "non_2xx", "p99_ratio", "reload_s"):
            gate = r["gates"][key]
            value = gate["value"]
            text = "—" if value is None else f"{value:g}"
            if key in ("peak_pss_ratio", "p99_ratio") and value is not None:
                text += "x"
            elif key == "reload_s" and value is not None:
                text += " s"
            cells.append(f"{text} {'pass' if gate['pass'] else '**FAIL**'}")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def update_measurements(table: str) -> None:
    """Rewrite the table between the markers of docs/measurements.md."""
    page = ROOT / "docs" / "measurements.md"
    text = page.read_text()
    start, end = MARKERS
    if start not in text:
        return
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    page.write_text(f"{head}{start}\n{table}{end}{tail}")
