"""No connection lost across reloads, under hundreds of concurrent
connections, for every kind of Python app the README shows: the asyncio
recipe on CPython's own loop, the uvicorn adapter, gunicorn with our
UvicornWorker, the aiohttp adapter and the example app (uvloop).

ab -c 500 (HTTP/1.0, a connection per request) while the superdaemon gets a
SIGHUP every RELOAD_EVERY seconds; ab's failures are counted by kind, beside
the kernel's count of connections closed with their request unread (a reset
for the client).  Keep-alive clients (HTTP/1.1, connections reused, never
retrying) are run against every server that keeps connections alive: its
drain must never end one under a request (``test_proxies.py`` does the
same through nginx and HAProxy).
Gentle loads (a few client threads) never showed these losses; they appear
from a few hundred connections at once."""

from __future__ import annotations

import contextlib
import http.client
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.apps import (
    APPS,
    DEBIAN_PYTHON,
    EXAMPLE_APP,
    GUNICORN_UVICORN,
    KEEP_ALIVE_SERVERS,
    UVICORN_APP,
    aiohttp_app,
)
from harness.http_clients import generation_of
from harness.load import KeepAliveLoad, aborted_on_close, reloading, run_ab
from harness.processes import ROOT, Daemon, reloads_done, serving, worker_env
from harness.reporting import report

pytestmark = pytest.mark.load

SRC = ROOT / "src"
CONCURRENCY = 500
RELOAD_EVERY = 0.3  # seconds: ten and more reloads within one ab run
GENERATION = "X-Server-Starter-Generation"
# name: (worker command, path, requests); every path answers after 100 ms
# with a body of one length, so that ab's "length" failures mean something.
APPS_UNDER_LOAD = {
    "asyncio recipe": ([sys.executable, str(APPS / "asyncio_http_app.py")], "/slow", 20_000),
    "uvicorn adapter": (UVICORN_APP, "/pause", 20_000),
    "gunicorn + UvicornWorker": (GUNICORN_UVICORN, "/pause", 30_000),  # slower to boot
    "example app": (EXAMPLE_APP, "/slow", 40_000),
}


def serving_app(worker: list[str]) -> contextlib.AbstractContextManager[Daemon]:
    # Another interpreter (Debian's, the newer ones) finds the package through PYTHONPATH.
    return serving(worker, "--require-notify", env=worker_env(PYTHONPATH=str(SRC)))


# The drain must be right on every CPython from Debian's 3.11 on: the recipe
# again on the newer interpreters this machine has (pyenv's, where present).
NEWER_PYTHONS = {
    version: path
    for version in ("3.12", "3.13")
    if (path := shutil.which(f"python{version}")) is not None
    and subprocess.run([path, "-c", ""], capture_output=True, check=False).returncode == 0
}
for version, python in NEWER_PYTHONS.items():
    APPS_UNDER_LOAD[f"asyncio recipe, Python {version}"] = (
        [python, str(APPS / "asyncio_http_app.py")],
        "/slow",
        20_000,
    )


@pytest.mark.parametrize("name", APPS_UNDER_LOAD)
def test_no_connection_lost_across_reloads(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    worker, path, requests = APPS_UNDER_LOAD[name]
    with serving_app(worker) as daemon:
        port = daemon.port
        with reloading(lambda: daemon.signal(signal.SIGHUP), RELOAD_EVERY):
            result = run_ab(f"http://127.0.0.1:{port}{path}", requests, CONCURRENCY, tmp_path)
        reloads = reloads_done(daemon)
    kinds = result["failures_by_kind"]
    report(
        capsys,
        f"{name}: ab -r -n {requests} -c {CONCURRENCY} {path}, {reloads} reloads: "
        f"{result['requests']} requests at {result['requests_per_second']:.0f}/s, "
        f"failed {result['failed']} {kinds}, {result['resets']} reset by the server",
    )
    assert result["requests"] == requests, result
    assert kinds == {"connect": 0, "receive": 0, "length": 0, "exceptions": 0}
    assert (result["failed"], result["non_2xx"], result["resets"]) == (0, 0, 0)
    assert reloads >= 10


# Beside PyPI's aiohttp, Debian 12's 3.8.
KEEP_ALIVE = {
    **KEEP_ALIVE_SERVERS,
    "aiohttp adapter, Debian's aiohttp": aiohttp_app(DEBIAN_PYTHON),
}


@pytest.mark.parametrize("name", KEEP_ALIVE)
def test_keep_alive_clients_never_see_a_connection_end_unserved(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """HTTP/1.1 clients reusing their connections and never retrying: a
    request in flight when its generation drains is answered (its reply may
    have started before: /slow sends its head before its body), and every
    request sent on a retiring connection too, its reply saying
    ``Connection: close``; no connection ends under a request, neither
    with a reset nor with a clean FIN."""
    worker = KEEP_ALIVE[name]
    with serving_app(worker) as daemon:
        port = daemon.port
        resets_before = aborted_on_close()
        with (
            KeepAliveLoad(port, "/slow", threads=40) as slow,
            KeepAliveLoad(port, "/", threads=40) as fast,
            reloading(lambda: daemon.signal(signal.SIGHUP), RELOAD_EVERY),
        ):
            daemon.wait_for(r"\(generation 16\) is ready", timeout=60)
        resets = aborted_on_close() - resets_before
        reloads = reloads_done(daemon)
    served = slow.served + fast.served
    report(
        capsys,
        f"{name}, keep-alive: 80 client threads, {reloads} reloads: {served} requests served "
        f"on {slow.connections + fast.connections} connections, "
        f"{slow.clean_closes + fast.clean_closes} ended unserved (a FIN before the reply), "
        f"{len(slow.failures) + len(fast.failures)} failed, {resets} reset by the server",
    )
    assert slow.failures + fast.failures == []
    assert slow.clean_closes + fast.clean_closes == 0
    assert resets == 0
    assert slow.served > 0 and fast.served > 0
    assert reloads >= 15


@pytest.mark.parametrize("name", KEEP_ALIVE)
def test_a_connection_streaming_its_replies_leaves_the_retiring_generation(name: str) -> None:
    """A client reusing one connection for /slow, whose replies the app
    streams (head first, body 0.3 s later): once the drain has begun, the
    next reply on it says ``Connection: close``, and the retiring
    generation exits long before its drain's deadline would cut the
    connection under a reply."""
    with serving_app(KEEP_ALIVE[name]) as daemon:
        port = daemon.port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            replies: list[tuple[str | None, str | None]] = []  # (generation, Connection:)
            while len(replies) < 20:
                conn.request("GET", "/slow")
                response = conn.getresponse()
                assert (response.status, bool(response.read())) == (200, True)
                replies.append((response.getheader(GENERATION), response.getheader("Connection")))
                if len(replies) == 1:  # the reload, with the connection kept and idle
                    daemon.signal(signal.SIGHUP)
                    daemon.wait_for(r"\(generation 2\) is ready")
                if response.will_close:
                    break
        finally:
            conn.close()
        assert replies[-1][1] == "close", replies
        daemon.wait_for(r"^old worker \d+ died", timeout=10)
        assert generation_of(port) == 2
