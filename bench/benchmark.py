"""make bench: every contender on the same app, the same load and the same
machine, in one run.

Scenarios (see docs/measurements.md, "Benchmark"):

1. reference: ``ab -r -n N -c C`` on the example app's /slow (writes
   "Hello, ", flushes, sleeps 100 ms, writes the rest) while a reload is
   requested every second: our start_server, Perl's start_server 0.35, and
   the same app under ours with no reload at all (the baseline); the
   asyncio recipe of docs/python.md (CPython's loop) under ours, stopping with
   drain() and with close() then wait; then an ASGI app's /pause (100 ms):
   the uvicorn adapter under ours, and gunicorn with our UvicornWorker and
   with uvicorn's, each reloaded by its own HUP.
2. systemd: the same load in a booted systemd 252, a reload every second:
   ``systemctl reload`` of our units; ``systemctl restart`` of the app
   socket-activated with no superdaemon; gunicorn with
   ``ExecReload=kill -HUP $MAINPID``; the same gunicorn under ours; the
   uvicorn adapter under ours; plain uvicorn socket-activated with
   ``systemctl restart``; gunicorn with our UvicornWorker and its own HUP.
3. latency: from the reload request to the old generation's signal, and to
   the first answer of the new generation, for an app ready in 50 ms and one
   ready in 2 s; ours (readiness notified) against Perl's (--interval rule).
4. footprint: the superdaemon's RSS, CPU time and wake-ups idle and across
   many reloads, ours beside Perl's.
5. behind nginx: each app under ours behind nginx keeping a pool of
   keep-alive connections (``keepalive 64``), a reload every second, with
   ab's 512-byte POSTs (HTTP/1.0 clients) and then wrk's HTTP/1.1
   keep-alive clients alternating POSTs and GETs; failures by kind at the
   client and in nginx's error log: our adapters and the example app, and
   beside them aiohttp served the plain way, uvicorn's own UvicornWorker,
   gunicorn's gthread worker and the seed's Go program
   (``bench/seed/main.go``, ``http.Server.Shutdown``).

Writes ``<out>/<date>.json`` and ``<out>/<date>.png`` (latency over time,
reloads marked) and, unless --smoke, the table of docs/measurements.md.

``--mode=memory`` (and ``memory-smoke``) runs bench/memory.py alone: the
memory of a reload, rolling (``--max-surge``) and not, beside gunicorn's
HUP and uWSGI's chain reload.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import memory  # bench/memory.py: --mode=memory

# The tests' harness: real processes, proxies and wrk (the development venv
# has tests/ on its path).
from harness import proxies
from harness.apps import APPS, EXAMPLE_APP, GUNICORN_UVICORN, UVICORN_APP, aiohttp_app
from harness.debs import build_debs
from harness.http_clients import http_get
from harness.load import reloading, run_ab
from harness.processes import (
    PERL_START_SERVER,
    START_SERVER,
    Daemon,
    free_port,
    process_figures,
    reloads_done,
    worker_env,
)

ROOT = Path(__file__).resolve().parent.parent

PROFILES: dict[str, dict[str, Any]] = {
    # A run of the harness itself, for CI: tiny numbers, no booted systemd.
    "smoke": {
        "requests": 600,
        "concurrency": 20,
        "latency_repeats": 1,
        "slow_boot": 0.5,
        "idle_seconds": 1.0,
        "footprint_reloads": 3,
        "systemd": False,
        "proxy_seconds": 2,
        "go": False,
    },
    "quick": {
        "requests": 20_000,
        "concurrency": 1000,
        "latency_repeats": 3,
        "slow_boot": 2.0,
        "idle_seconds": 10.0,
        "footprint_reloads": 20,
        "systemd": True,
        "proxy_seconds": 12,
        "go": True,
    },
    "full": {
        "requests": 100_000,
        "concurrency": 1000,
        "latency_repeats": 5,
        "slow_boot": 2.0,
        "idle_seconds": 60.0,
        "footprint_reloads": 100,
        "systemd": True,
        "proxy_seconds": 20,
        "go": True,
    },
}
RELOAD_EVERY = 1.0  # seconds, as DESIGN's reference scenario asks
FAST_BOOT = 0.05


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# -- load ---------------------------------------------------------------------


def load_while_reloading(
    port: int,
    reload: Callable[[], None] | None,
    profile: dict[str, Any],
    workdir: Path,
    path: str = "/slow",
) -> dict[str, Any]:
    """The profile's ab load on ``path``, with ``reload`` requested every
    RELOAD_EVERY seconds meanwhile (none when it is None)."""
    moments: list[float] = []
    with reloading(reload, RELOAD_EVERY) if reload else contextlib.nullcontext(moments) as moments:
        result = run_ab(
            f"http://127.0.0.1:{port}{path}", profile["requests"], profile["concurrency"], workdir
        )
    result["reload_requests"] = len(moments)
    result["reload_moments"] = moments
    return result


# -- scenario 1: reference ------------------------------------------------------


OUR_UVICORN_WORKER = "server_starter.uvicorn_worker.UvicornWorker"
STOCK_UVICORN_WORKER = "uvicorn.workers.UvicornWorker"
ASYNCIO_RECIPE = [sys.executable, str(APPS / "asyncio_http_app.py")]


def superdaemon(
    kind: str,
    port: int,
    envdir: Path | None = None,
    options: tuple[str, ...] = (),
    app: list[str] = EXAMPLE_APP,
) -> Daemon:
    program = START_SERVER if kind == "ours" else PERL_START_SERVER
    argv = [program, f"--port=127.0.0.1:{port}", *options]
    if envdir is not None:
        argv.append(f"--envdir={envdir}")
    return Daemon([*argv, "--", *app], env=worker_env())


def gunicorn_asgi(worker_class: str, port: int) -> Daemon:
    """gunicorn on its own (no superdaemon), reloaded by its own HUP."""
    argv = [sys.executable, "-m", "gunicorn", "-k", worker_class, "-w", "2"]
    argv += [f"--chdir={APPS}", f"--bind=127.0.0.1:{port}", "--log-level=info", "asgi_app:app"]
    return Daemon(argv, env=worker_env())


def gunicorn_version() -> str:
    import gunicorn

    return str(gunicorn.__version__)


def stop(daemon: Daemon) -> None:
    if daemon.proc.poll() is None:
        daemon.signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            daemon.wait(60)
    daemon.kill_everything()


def reference(profile: dict[str, Any], workdir: Path) -> dict[str, Any]:
    gunicorn = f"gunicorn {gunicorn_version()}"
    contenders: dict[str, Any] = {}
    ours, perl = partial(superdaemon, "ours"), partial(superdaemon, "perl")
    rows: list[tuple[str, str, Callable[[int], Daemon], str, bool]] = [
        # name, app, how to start it on a port, path, reloaded
        ("no reloads (baseline)", "example app", ours, "/slow", False),
        ("ours: start_server, HUP every 1 s", "example app", ours, "/slow", True),
        ("Perl start_server 0.35, HUP every 1 s", "example app", perl, "/slow", True),
        (
            "ours running the asyncio recipe (drain), HUP every 1 s",
            "asyncio app",
            partial(superdaemon, "ours", app=ASYNCIO_RECIPE),
            "/slow",
            True,
        ),
        (
            "ours running the asyncio recipe with close() then wait, HUP every 1 s",
            "asyncio app",
            partial(superdaemon, "ours", app=[*ASYNCIO_RECIPE, "close-then-wait"]),
            "/slow",
            True,
        ),
        (
            "ours running the uvicorn adapter, HUP every 1 s",
            "ASGI app",
            partial(superdaemon, "ours", app=UVICORN_APP),
            "/pause",
            True,
        ),
        (
            f"{gunicorn} + our UvicornWorker, its own HUP every 1 s",
            "ASGI app",
            partial(gunicorn_asgi, OUR_UVICORN_WORKER),
            "/pause",
            True,
        ),
        (
            f"{gunicorn} + uvicorn's UvicornWorker, its own HUP every 1 s",
            "ASGI app",
            partial(gunicorn_asgi, STOCK_UVICORN_WORKER),
            "/pause",
            True,
        ),
    ]
    for name, app, start, path, reloads in rows:
        port = free_port()
        daemon = start(port)
        try:
            wait_until_answering(port)
            log(f"reference: {name}")
            reload = (lambda d=daemon: d.signal(signal.SIGHUP)) if reloads else None
            result = load_while_reloading(port, reload, profile, workdir, path)
            superdaemon_reloads = len(daemon.matches(r"starting new worker")) - 1
            gunicorn_reloads = len(daemon.matches(r"Handling signal: hup"))
            result["reloads"] = max(superdaemon_reloads, gunicorn_reloads)
            result["app"] = app
        finally:
            stop(daemon)
        contenders[name] = result
    add_ratios(contenders, "no reloads (baseline)")
    return {
        "load": (
            f"ab -r -n {profile['requests']} -c {profile['concurrency']}, a 100 ms handler "
            f"(the example app's /slow, the ASGI app's /pause), reload every {RELOAD_EVERY:g} s"
        ),
        "contenders": contenders,
    }


# -- scenario 5: behind nginx ---------------------------------------------------

PROXY_CONCURRENCY = 200
SEED_SOURCE = ROOT / "bench" / "seed" / "main.go"


def build_seed(workdir: Path) -> list[str]:
    """The seed's Go program, built with Go's standard library alone."""
    binary = workdir / "seed"
    env = {**os.environ, "GOCACHE": str(workdir / "gocache"), "GOPATH": str(workdir / "gopath")}
    subprocess.run(
        ["go", "build", "-o", str(binary), str(SEED_SOURCE)], env=env, check=True, timeout=600
    )
    return [str(binary)]


def behind_nginx(profile: dict[str, Any], workdir: Path) -> dict[str, Any]:
    gunicorn = f"gunicorn {gunicorn_version()}"
    stock_worker = [
        STOCK_UVICORN_WORKER if arg == OUR_UVICORN_WORKER else arg for arg in GUNICORN_UVICORN
    ]
    gthread = [sys.executable, "-m", "gunicorn", "-c", "python:server_starter.gunicorn"]
    gthread += ["-k", "gthread", "--threads", "16", "--keep-alive", "30", "-w", "2"]
    gthread += [f"--chdir={APPS}", "--log-level=warning", "wsgi_app:app"]
    rows: list[tuple[str, list[str], str]] = [
        ("uvicorn adapter", UVICORN_APP, "/echo"),
        (f"{gunicorn} + our UvicornWorker", GUNICORN_UVICORN, "/echo"),
        ("aiohttp adapter", aiohttp_app(), "/echo"),
        ("example app", EXAMPLE_APP, "/"),
        ("asyncio recipe", ASYNCIO_RECIPE, "/echo"),
        (f"{gunicorn} + uvicorn's UvicornWorker", stock_worker, "/echo"),
        (
            "aiohttp the plain way (SockSite, cleanup)",
            [sys.executable, str(APPS / "aiohttp_plain.py")],
            "/echo",
        ),
        (f"{gunicorn} gthread, --keep-alive 30 (WSGI)", gthread, "/echo"),
    ]
    if profile["go"]:
        rows.append(("Go net/http program, bench/seed (Shutdown)", build_seed(workdir), "/echo"))
    seconds = profile["proxy_seconds"]
    contenders: dict[str, Any] = {}
    for name, app, path in rows:
        log(f"behind nginx: {name}")
        result: dict[str, Any] = {}
        for load in ("ab", "wrk"):
            figures: dict[str, Any]
            port = free_port()
            daemon = superdaemon("ours", port, options=("--require-notify",), app=app)
            try:
                wait_until_answering(port)
                with proxies.nginx(port, workdir) as proxy:
                    url = f"http://127.0.0.1:{proxy.port}{path}"
                    with reloading(partial(daemon.signal, signal.SIGHUP), RELOAD_EVERY) as asked:
                        if load == "ab":
                            figures = dict(
                                proxies.run_ab_post(url, PROXY_CONCURRENCY, seconds, workdir)
                            )
                        else:
                            figures = dict(
                                proxies.run_wrk(url, PROXY_CONCURRENCY, seconds, workdir)
                            )
                    if asked:
                        # A reload asked for during the load may still be
                        # starting (gunicorn boots slowly): count it once it is
                        # ready instead of stopping it half-way.
                        daemon.wait_for(r"\(generation \d+\) is ready", count=2, timeout=60)
                errors = proxy.errors()
                figures["proxy_errors"] = len(errors)
                figures["proxy_errors_by_kind"] = nginx_error_kinds(errors)
                figures["reloads"] = reloads_done(daemon)
            finally:
                stop(daemon)
            result[load] = figures
        contenders[name] = result
    return {
        "load": (
            f"through nginx (keepalive 64), a reload every {RELOAD_EVERY:g} s: "
            f"ab -r -t {seconds} -c {PROXY_CONCURRENCY} with 512-byte POSTs; "
            f"wrk -t2 -c{PROXY_CONCURRENCY} -d{seconds}s, POSTs and GETs alternating"
        ),
        "contenders": contenders,
    }


def nginx_error_kinds(errors: list[str]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for line in errors:
        match = re.search(r"\] \d+#\d+: \*\d+ (.+?) while ", line)
        kind = match.group(1) if match else line.split("]", 1)[-1].strip()[:60]
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def wait_until_answering(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if http_get(port, timeout=5)[0] == 200:
                return
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: nothing answers on port {port}")
        time.sleep(0.05)


def add_ratios(contenders: dict[str, Any], baseline_name: str) -> None:
    """Throughput and p99 against the baseline, for the rows of its app."""
    base = contenders[baseline_name]
    for result in contenders.values():
        if result.get("app") != base.get("app"):
            result["throughput_vs_baseline"] = result["p99_vs_baseline"] = None
            continue
        rps = base["requests_per_second"]
        result["throughput_vs_baseline"] = (
            round(result["requests_per_second"] / rps, 3) if rps else None
        )
        p99 = base["latency_ms"]["p99"]
        result["p99_vs_baseline"] = round(result["latency_ms"]["p99"] / p99, 3) if p99 else None


# -- scenario 2: systemd ---------------------------------------------------------

PLAIN_SOCKET = """[Socket]
ListenStream=127.0.0.1:{port}
Backlog=4096
"""
# The example app straight under systemd: it takes SERVER_STARTER_PORT, so
# name systemd's descriptor 3 in that format.
PLAIN_SERVICE = """[Unit]
# A restart every second would hit the default start limit (5 in 10 s) and
# leave the unit failed: lift it, to measure the restarts themselves.
StartLimitIntervalSec=0

[Service]
ExecStart=/usr/bin/env SERVER_STARTER_PORT=127.0.0.1:{port}=3 /usr/bin/server-starter-example
DynamicUser=yes
"""
GUNICORN_ARGS = "--chdir /srv/apps -k gthread -w 4 --threads 250 wsgi_app:app"
GUNICORN_SERVICE = """[Service]
ExecStart=/usr/bin/python3 -m gunicorn {args}
ExecReload=/bin/kill -HUP $MAINPID
DynamicUser=yes
"""


UVICORN_ENV = "Environment=PYTHONPATH=/srv/pylib\n"  # uvicorn, h11 and click from the venv
UVICORN_SERVICE = (
    """[Unit]
StartLimitIntervalSec=0

[Service]
ExecStart=/usr/bin/python3 -m uvicorn --fd 3 --app-dir /srv/apps --log-level warning asgi_app:app
DynamicUser=yes
"""
    + UVICORN_ENV
)
GUNICORN_UVICORN_ARGS = (
    f"--chdir /srv/apps -k {OUR_UVICORN_WORKER} -w 2 --log-level warning asgi_app:app"
)


def uvicorn_library(workdir: Path) -> Path:
    """uvicorn and what it imports, copied from the venv for the booted
    system (Debian's bookworm packages an older uvicorn)."""
    import click
    import h11
    import uvicorn

    library = workdir / "pylib"
    for module in (uvicorn, h11, click):
        assert module.__file__ is not None
        shutil.copytree(Path(module.__file__).parent, library / module.__name__)
    return library


def systemd_scenario(profile: dict[str, Any], workdir: Path) -> dict[str, Any]:
    from harness.machine import SUITES, booted, reference_service

    debs = workdir / "debs"
    debs.mkdir()
    try:
        build_debs(debs)
    except RuntimeError as err:
        raise SystemExit(f"bench: {err}") from None
    binds = [
        (debs, "/debs"),
        (ROOT / "tests" / "apps", "/srv/apps"),
        (uvicorn_library(workdir), "/srv/pylib"),
    ]
    contenders: dict[str, Any] = {}
    with booted(SUITES["bookworm"], binds, workdir / "console.log") as machine:
        debs_inside = sorted(f"/debs/{p.name}" for p in debs.glob("*.deb"))
        machine.run(
            "env",
            "DEBIAN_FRONTEND=noninteractive",
            "apt-get",
            "install",
            "-y",
            *debs_inside,
            timeout=300,
        )
        units = {
            "plain.socket": PLAIN_SOCKET.format(port=8081),
            "plain.service": PLAIN_SERVICE.format(port=8081),
            "gunicorn.socket": PLAIN_SOCKET.format(port=8082),
            "gunicorn.service": GUNICORN_SERVICE.format(args=GUNICORN_ARGS),
            "gapp.socket": PLAIN_SOCKET.format(port=8083),
            "gapp.service": reference_service(
                "gapp",
                "/usr/bin/python3 -m gunicorn -c python:server_starter.gunicorn " + GUNICORN_ARGS,
            )
            + "SystemCallFilter=@setuid\n",
            "uapp.socket": PLAIN_SOCKET.format(port=8084),
            "uapp.service": reference_service(
                "uapp",
                "/usr/bin/python3 -m server_starter.uvicorn --app-dir /srv/apps "
                "--log-level warning asgi_app:app",
            )
            + UVICORN_ENV,
            "uplain.socket": PLAIN_SOCKET.format(port=8085),
            "uplain.service": UVICORN_SERVICE,
            "ugunicorn.socket": PLAIN_SOCKET.format(port=8086),
            "ugunicorn.service": GUNICORN_SERVICE.format(args=GUNICORN_UVICORN_ARGS) + UVICORN_ENV,
        }
        for name, text in units.items():
            machine.run("tee", f"/etc/systemd/system/{name}", input=text)
        # The restart row restarts app every second: lift the start limit, as
        # the plain units do, to measure the restarts rather than the limit.
        machine.run("mkdir", "-p", "/etc/systemd/system/app.service.d")
        machine.run(
            "tee",
            "/etc/systemd/system/app.service.d/bench.conf",
            input="[Unit]\nStartLimitIntervalSec=0\n",
        )
        machine.run("systemctl", "daemon-reload")
        for name, unit, port, action, note in (
            ("ours: systemctl reload app", "app", 8080, "reload", "example app"),
            ("ours: in-place upgrade of the superdaemon", "app", 8080, "upgrade", "example app"),
            ("ours: systemctl restart app", "app", 8080, "restart", "example app"),
            ("no superdaemon: systemctl restart", "plain", 8081, "restart", "example app"),
            ("gunicorn 20.1: ExecReload=kill -HUP", "gunicorn", 8082, "reload", "WSGI app"),
            ("ours running gunicorn 20.1: systemctl reload", "gapp", 8083, "reload", "WSGI app"),
            (
                "ours running the uvicorn adapter: systemctl reload",
                "uapp",
                8084,
                "reload",
                "ASGI app",
            ),
            ("uvicorn, no superdaemon: systemctl restart", "uplain", 8085, "restart", "ASGI app"),
            (
                "gunicorn 20.1 + our UvicornWorker: ExecReload=kill -HUP",
                "ugunicorn",
                8086,
                "reload",
                "ASGI app",
            ),
        ):
            machine.run("systemctl", "start", f"{unit}.socket")
            wait_until_answering(port)
            machine.run("systemctl", "start", f"{unit}.service")  # no reload merged into a start
            log(f"systemd: {name}")

            refused: list[str] = []

            def reload(
                unit: str = unit, action: str = action, refused: list[str] = refused
            ) -> None:
                if action == "upgrade":  # what apt install of a new server-starter does
                    done = machine.run(
                        "server-starter",
                        "--upgrade",
                        f"--control-socket=/run/{unit}/start_server.sock",
                        check=False,
                        timeout=120,
                    )
                    if done.returncode != 0:
                        refused.append(done.stderr.strip())
                else:
                    machine.run("systemctl", action, unit, check=False, timeout=120)

            path = "/pause" if note == "ASGI app" else "/slow"
            result = load_while_reloading(port, reload, profile, workdir, path)
            result["reloads"] = result["reload_requests"]
            if refused:
                raise SystemExit(f"bench: an in-place upgrade failed: {refused[0]}")
            result["app"] = note
            result["unit_state_after"] = machine.run(
                "systemctl", "is-active", unit, check=False
            ).stdout.strip()
            machine.run("systemctl", "stop", f"{unit}.socket", f"{unit}.service", check=False)
            contenders[name] = result
    return {
        "load": (
            f"ab -r -n {profile['requests']} -c {profile['concurrency']} /slow from the host, "
            f"a reload (or restart) every {RELOAD_EVERY:g} s, systemd 252 in systemd-nspawn"
        ),
        "contenders": contenders,
    }


# -- scenario 3: reload latency ---------------------------------------------------


def latency(profile: dict[str, Any], workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for boot in (FAST_BOOT, profile["slow_boot"]):
        for kind, name, options in (
            # Without --require-notify ours keeps Perl's rule (ready after
            # --interval alive, or at READY=1 if that comes first) ...
            ("ours", "ours", ()),
            # ... with it, only READY=1 counts (the reference unit uses it).
            ("ours", "ours --require-notify", ("--require-notify", "--ready-timeout=30")),
            ("perl", "Perl start_server 0.35", ()),
        ):
            envdir = workdir / f"env-{len(results)}"
            envdir.mkdir()
            (envdir / "EXAMPLE_APP_BOOT_SECONDS").write_text(f"{boot}\n")
            port = free_port()
            daemon = superdaemon(kind, port, envdir, options)
            signalled: list[float] = []
            answered: list[float] = []
            try:
                wait_until_answering(port)
                for repeat in range(profile["latency_repeats"]):
                    expected = repeat + 2
                    requested = time.monotonic()
                    daemon.signal(signal.SIGHUP)
                    while generation_answering(port) != expected:
                        if time.monotonic() - requested > 60:
                            raise SystemExit(f"bench: generation {expected} never answered")
                        time.sleep(0.005)  # a probe every 5 ms: the resolution of the figure
                    answered.append(time.monotonic() - requested)
                    daemon.wait_for(r"sending TERM to old workers", count=repeat + 1, timeout=60)
                    arrival = daemon.arrivals(r"sending TERM to old workers")[repeat][0]
                    signalled.append(arrival - requested)
                    daemon.wait_for(r"old worker \d+ died", count=repeat + 1, timeout=60)
            finally:
                stop(daemon)
            results[f"{name}, app ready in {boot:g} s"] = {
                "old_signalled_s": summary(signalled),
                "new_answers_s": summary(answered),
                # Between the old generation's signal and the new one's first
                # answer nobody accepts: connections wait in the backlog.
                "nobody_accepting_s": summary(
                    [max(0.0, a - s) for s, a in zip(signalled, answered, strict=True)]
                ),
                "repeats": len(signalled),
            }
    return results


def generation_answering(port: int) -> int:
    try:
        return int(http_get(port, timeout=30)[1].get("x-server-starter-generation", 0))
    except OSError:
        return 0


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


# -- scenario 4: footprint ---------------------------------------------------------


def footprint(profile: dict[str, Any]) -> dict[str, Any]:
    ports = {"ours": free_port(), "Perl start_server 0.35": free_port()}
    daemons = {name: superdaemon(name.split()[0].lower(), port) for name, port in ports.items()}
    results: dict[str, Any] = {}
    try:
        for port in ports.values():
            wait_until_answering(port)
        # Side by side, idle, over the same period.
        seconds = profile["idle_seconds"]
        time.sleep(1)  # Perl's start-up ends with a sleep of --interval; let it finish
        before = {name: process_figures(d.pid) for name, d in daemons.items()}
        time.sleep(seconds)  # the idle period being measured
        after = {name: process_figures(d.pid) for name, d in daemons.items()}
        for name in daemons:
            results[name] = {
                "idle_seconds": seconds,
                "idle_rss_kib": after[name]["rss_kib"],
                "idle_cpu_s": round(after[name]["cpu_s"] - before[name]["cpu_s"], 3),
                "idle_wakeups_per_minute": round(
                    (after[name]["context_switches"] - before[name]["context_switches"])
                    * 60
                    / seconds,
                    1,
                ),
            }
        reloads = profile["footprint_reloads"]
        for name, daemon in daemons.items():
            log(f"footprint: {reloads} reloads of {name}")
            start = process_figures(daemon.pid)
            done = 0
            for number in range(reloads):
                daemon.signal(signal.SIGHUP)
                try:
                    daemon.wait_for(r"old worker \d+ died", count=number + 1, timeout=60)
                except AssertionError:  # a contender that stalls is a figure, not a crash
                    log(f"footprint: {name} stalled after {done} reloads")
                    results[name]["stalled_after_reloads"] = done
                    break
                done += 1
            end = process_figures(daemon.pid)
            results[name].update(
                {
                    "reloads": done,
                    "rss_kib_after_reloads": end["rss_kib"],
                    "cpu_ms_per_reload": round(
                        (end["cpu_s"] - start["cpu_s"]) * 1000 / max(done, 1), 1
                    ),
                }
            )
    finally:
        for daemon in daemons.values():
            stop(daemon)
    return results


# -- output ------------------------------------------------------------------------


def machine_facts() -> dict[str, str]:
    def version(command: list[str], pattern: str) -> str:
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=30).stdout
        except OSError:
            return "unknown"
        match = re.search(pattern, out)
        return match.group(1) if match else "unknown"

    return {
        "nproc": str(os.cpu_count()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "server_starter": version([START_SERVER, "--version"], r"(\S+)"),
        "perl_server_starter": version(
            ["perl", "-MServer::Starter", "-e", "print $Server::Starter::VERSION"], r"(\S+)"
        ),
        "ab": version(["ab", "-V"], r"Version (\S+)"),
        "systemd": version(["systemctl", "--version"], r"systemd (\d+)"),
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (scenario, name, result)
        for scenario in ("reference", "systemd")
        if "contenders" in results.get(scenario, {})
        for name, result in results[scenario]["contenders"].items()
    ]
    figure, axes = plt.subplots(len(panels), 1, figsize=(10, 2.4 * len(panels)), squeeze=False)
    for axis, (scenario, name, result) in zip(axes[:, 0], panels, strict=True):
        samples = result["samples"]
        if samples:
            start = samples[0][0]
            axis.plot(
                [t - start for t, _ in samples],
                [ms for _, ms in samples],
                ",",
                alpha=0.5,
            )
            for moment in result.get("reload_moments", []):
                axis.axvline(moment - start, color="red", linewidth=0.6, alpha=0.6)
        axis.set_title(
            f"{scenario}: {name} — {result['failed']} failed of {result['requests']}",
            fontsize=9,
        )
        axis.set_ylabel("latency (ms)")
        axis.set_yscale("log")
    axes[-1, 0].set_xlabel("seconds since the first request (red: reload requested)")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def markdown(results: dict[str, Any]) -> str:
    facts = results["machine"]
    lines = [
        f"Run of {results['date']} (`make bench MODE={results['mode']}`), "
        f"{facts['nproc']} cores, Linux {facts['kernel']}, ab {facts['ab']}, "
        f"server-starter {facts['server_starter']}, "
        f"Perl Server::Starter {facts['perl_server_starter']}.",
        "",
    ]
    for scenario in ("reference", "systemd"):
        block = results.get(scenario, {})
        if "contenders" not in block:
            continue
        lines += [
            f"**{scenario}**: {block['load']}. ab counts a lost request once per kind "
            "of failure (receive, length, exceptions); resets: connections the kernel "
            "aborted with data unread meanwhile (`TcpExtTCPAbortOnClose`).",
            "",
            "| contender | requests | failed | receive / length / exceptions | resets "
            "| non-2xx | req/s | vs baseline | p50 ms | p99 ms | max ms | reloads |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in block["contenders"].items():
            ratio = r.get("throughput_vs_baseline")
            kinds = r["failures_by_kind"]
            lines.append(
                f"| {name} | {r['requests']:,} | {r['failed']:,} "
                f"| {kinds['receive']:,} / {kinds['length']:,} / {kinds['exceptions']:,} "
                f"| {r['resets']:,} | {r['non_2xx']:,} "
                f"| {r['requests_per_second']:,.0f} | {'' if ratio is None else f'{ratio:.2f}'} "
                f"| {r['latency_ms']['p50']:g} | {r['latency_ms']['p99']:g} "
                f"| {r['latency_ms']['max']:g} | {r['reloads']} |"
            )
        lines.append("")
    lines += [
        "**reload latency** (HUP to old generation signalled / to new generation "
        "answering, median of the repeats, seconds):",
        "",
        "| contender | old signalled | new answers | nobody accepting |",
        "|---|---|---|---|",
    ]
    for name, r in results["latency"].items():
        gap = r["nobody_accepting_s"]
        lines.append(
            f"| {name} | {r['old_signalled_s']['median']:.2f} | {r['new_answers_s']['median']:.2f} "
            f"| {gap['median']:.2f} (max {gap['max']:.2f}) |"
        )
    block = results["behind_nginx"]
    lines += [
        "",
        f"**behind nginx**: {block['load']}. Failed at the client: ab's failed and non-2xx "
        "(nginx's 502s); wrk's socket errors and non-2xx. In nginx's log: upstream errors, "
        "also those of requests nginx retried on another connection.",
        "",
        "| app under ours | ab: requests | non-2xx / failed | nginx log | wrk: requests "
        "| socket errors / non-2xx | nginx log |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in block["contenders"].items():
        ab, wrk = r["ab"], r["wrk"]
        sockets = wrk["connect"] + wrk["read"] + wrk["write"] + wrk["timeout"]
        lines.append(
            f"| {name} | {ab['requests']:,} | {ab['non_2xx']:,} / {ab['failed']:,} "
            f"| {ab['proxy_errors']:,} | {wrk['requests']:,} | {sockets:,} / {wrk['non_2xx']:,} "
            f"| {wrk['proxy_errors']:,} |"
        )
    lines += [
        "",
        "**footprint** (the superdaemon alone):",
        "",
        "| superdaemon | RSS idle | CPU idle | wake-ups/min idle | RSS after reloads "
        "| CPU per reload |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results["footprint"].items():
        lines.append(
            f"| {name} | {r['idle_rss_kib'] / 1024:.1f} MiB | {r['idle_cpu_s']:.2f} s in "
            f"{r['idle_seconds']:g} s | {r['idle_wakeups_per_minute']:g} "
            f"| {r['rss_kib_after_reloads'] / 1024:.1f} MiB after {r['reloads']}"
            f"{' (then stalled: no new worker in 60 s)' if 'stalled_after_reloads' in r else ''} "
            f"| {r['cpu_ms_per_reload']:g} ms |"
        )
    return "\n".join(lines) + "\n"


README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"


def update_readme(table: str, plot_path: Path) -> None:
    """Rewrite the table of docs/measurements.md, where the README's figures live."""
    readme = ROOT / "docs" / "measurements.md"
    text = readme.read_text()
    if README_START not in text:
        return
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    image = f"![latency over time](../{plot_path.relative_to(ROOT)})\n"
    readme.write_text(f"{head}{README_START}\n{table}\n{image}{README_END}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mode", choices=sorted(PROFILES) + sorted(memory.PROFILES), default="full"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if args.mode in memory.PROFILES:
        return memory.main(args.mode, args.out, machine_facts())
    profile = PROFILES[args.mode]
    if shutil.which("ab") is None:
        print("bench: ab not found (apt-get install apache2-utils)", file=sys.stderr)
        return 1
    missing = proxies.available() + (["go"] if profile["go"] and shutil.which("go") is None else [])
    if missing:
        print(f"bench: missing {missing} (scripts/install-deps.sh bench)", file=sys.stderr)
        return 1
    if profile["systemd"] and os.geteuid() != 0:
        print("bench: the systemd scenario boots a container: run as root", file=sys.stderr)
        return 1
    # ab -c 1000 and a thousand connections per worker need the descriptors.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if wanted < 4 * profile["concurrency"]:
        print(f"bench: the descriptor limit ({wanted}) is too low for the load", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d")
    started = time.monotonic()
    results: dict[str, Any] = {
        "date": stamp,
        "mode": args.mode,
        "profile": profile,
        "machine": machine_facts(),
    }
    with tempfile.TemporaryDirectory(prefix="server-starter-bench-") as tmp:
        workdir = Path(tmp)
        results["reference"] = reference(profile, workdir)
        if profile["systemd"]:
            results["systemd"] = systemd_scenario(profile, workdir)
        else:
            results["systemd"] = {"skipped": f"not run in {args.mode} mode"}
        log("latency")
        results["latency"] = latency(profile, workdir)
        log("footprint")
        results["footprint"] = footprint(profile)
        results["behind_nginx"] = behind_nginx(profile, workdir)
    results["duration_s"] = round(time.monotonic() - started, 1)
    json_path, plot_path = args.out / f"{stamp}.json", args.out / f"{stamp}.png"
    plot(results, plot_path)
    table = markdown(results)
    for scenario in ("reference", "systemd"):
        for result in results[scenario].get("contenders", {}).values():
            result.pop("samples")  # in the plot; too many for the JSON
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    if args.mode != "smoke" and args.out.resolve().is_relative_to(ROOT):
        update_readme(table, plot_path.resolve())
    print(table)
    log(f"wrote {json_path} and {plot_path} in {results['duration_s']:g} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
