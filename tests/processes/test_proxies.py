"""Behind the proxies users run: no request fails across reloads when nginx
or HAProxy keeps a pool of keep-alive connections to the app.

Each run reloads the superdaemon every second under load through the
proxy, and counts failures where each kind shows: at the client (ab's
failures and non-2xx replies, wrk's socket errors and non-2xx replies) and
in the proxy's own log (nginx's "upstream prematurely closed connection",
HAProxy's per-request termination state and retries), since a proxy that
retries an idempotent request on another connection hides the error from
the client.  The loads:

- ab: 512-byte POSTs at c=200 over HTTP/1.0 through nginx, which pools its
  upstream connections whatever the client speaks (HAProxy does not pool
  for HTTP/1.0 clients: each request gets its own server connection);
- wrk: HTTP/1.1 keep-alive clients at c=200, POSTs and GETs alternating on
  every connection, through nginx and through HAProxy with its default
  ``http-reuse safe`` and with ``http-reuse always``.

The drain's rule (see ``server_starter.asyncio_servers``): a retiring
generation closes a connection only after a reply that said
``Connection: close``, when the client closes, or when it has been idle
for the server's keep-alive timeout.  Before it, a retiring generation
closed its idle keep-alive connections at once, and these runs counted
hundreds of failures for each adapter."""

from __future__ import annotations

import signal
import statistics
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from harness import proxies
from harness.apps import (
    APPS,
    DEBIAN_PYTHON,
    EXAMPLE_APP,
    GUNICORN_UVICORN,
    UVICORN_APP,
    aiohttp_app,
)
from harness.load import reloading
from harness.processes import ROOT, Daemon, reloads_done, retiring_lifetimes, serving, worker_env
from harness.reporting import report

pytestmark = [
    pytest.mark.load,
    pytest.mark.skipif(bool(proxies.available()), reason=f"missing {proxies.available()}"),
]

RELOAD_EVERY = 1.0  # seconds, as an operator's deploy loop at its busiest
SECONDS = 12  # of load per run (whole seconds, for wrk): eleven reloads
CONCURRENCY = 200
SRC = ROOT / "src"

# name: (worker command, path); each path reads the request's body.
CONTENDERS = {
    "uvicorn adapter": (UVICORN_APP, "/echo"),
    "gunicorn + UvicornWorker": (GUNICORN_UVICORN, "/echo"),
    "example app": (EXAMPLE_APP, "/"),
    "aiohttp adapter, PyPI's aiohttp": (aiohttp_app(), "/echo"),
    "aiohttp adapter, Debian's aiohttp": (aiohttp_app(DEBIAN_PYTHON), "/echo"),
    "asyncio recipe": ([sys.executable, str(APPS / "asyncio_http_app.py")], "/echo"),
}
ProxyFactory = Callable[[int, Path], AbstractContextManager[proxies.Proxy]]
SETUPS: dict[str, tuple[ProxyFactory, str]] = {
    "nginx, ab POST": (proxies.nginx, "ab"),
    "nginx, wrk": (proxies.nginx, "wrk"),
    "HAProxy http-reuse safe, wrk": (lambda port, d: proxies.haproxy(port, d, "safe"), "wrk"),
    "HAProxy http-reuse always, wrk": (lambda port, d: proxies.haproxy(port, d, "always"), "wrk"),
}


def all_retired(daemon: Daemon, reloads: int) -> None:
    """Every retiring generation exits in bounded time: within the longest
    drain (the adapters' 30 s; an idle connection ends after 5 s)."""
    daemon.wait_for(r"^old worker \d+ died", count=reloads, timeout=40)


@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("contender", CONTENDERS)
def test_no_request_fails_behind_a_pooling_proxy(
    contender: str, setup: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    worker, path = CONTENDERS[contender]
    make_proxy, client = SETUPS[setup]
    with serving(worker, "--require-notify", env=worker_env(PYTHONPATH=str(SRC))) as daemon:
        port = daemon.port
        with make_proxy(port, tmp_path) as proxy:
            url = f"http://127.0.0.1:{proxy.port}{path}"
            with reloading(lambda: daemon.signal(signal.SIGHUP), RELOAD_EVERY):
                if client == "ab":
                    result = proxies.run_ab_post(url, CONCURRENCY, SECONDS, tmp_path)
                else:
                    result = proxies.run_wrk(url, CONCURRENCY, SECONDS, tmp_path)
        errors = proxy.errors()  # read once it has exited: every line is written
        reloads = reloads_done(daemon)
        all_retired(daemon, reloads)
        lifetimes = retiring_lifetimes(daemon)
    failed = {k: v for k, v in result.items() if k not in ("requests", "requests_per_second")}
    report(
        capsys,
        f"{contender}, {setup}: {result['requests']} requests at "
        f"{result['requests_per_second']:.0f}/s, {reloads} reloads, failed at the client "
        f"{failed}, {len(errors)} errors in the proxy's log; a retiring generation lived "
        f"{statistics.median(lifetimes):.2f} s (median), {max(lifetimes):.2f} s (max)",
    )
    assert errors == [], errors[:5]
    assert set(failed.values()) == {0}, failed
    assert reloads >= 10
    assert result["requests"] >= 5_000
