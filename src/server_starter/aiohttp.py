"""Serve an aiohttp app on the inherited sockets, with a drain that loses
no request, also on the connections a proxy keeps alive:

    start_server --port 8080 --require-notify -- \\
        python3 -m server_starter.aiohttp myapp:app [--app-dir DIR]

or from your own code, in place of ``aiohttp.web.run_app(app)``:

    from server_starter import aiohttp as server_starter_aiohttp
    server_starter_aiohttp.run_app(app)

``myapp:app`` names a ``web.Application``, or a function (sync or async)
that returns one.  ``READY=1`` goes to the superdaemon once the app's
start-up hooks have run and every inherited stream socket is served.

Why not ``web.SockSite`` and ``runner.cleanup()``, as aiohttp's docs
suggest for inherited sockets: the site's ``server.close()`` loses the
connections CPython accepted but had not attached yet (gh-109564), and the
clean-up closes every idle keep-alive connection at once, under a proxy
that may be sending a request on it (measured: 1,176 of 20,000 POSTs
answered 502 by nginx with a reload every second).  Here, on SIGTERM or
SIGINT:

1. accepting stops at once (``asyncio_servers.AsyncioServers.drain``), and
   the app's ``on_shutdown`` hooks run (where aiohttp apps close their
   websockets);
2. every request that arrives on an open connection is served, and its
   reply carries ``Connection: close`` (an ``on_response_prepare`` hook,
   so that a reply the handler streams itself says it too: a middleware
   sees such a reply only once its head is out, and the connection would
   stay with the retiring generation until the drain's deadline cut it);
   a reply prepared before the drain keeps its connection alive, and the
   next reply on it ends it;
3. an idle connection ends when the client closes it or after
   ``keepalive_timeout`` (5 s here: aiohttp's own default, 75 s in 3.8 to
   3.10 and 3,630 s in 3.14, would keep a retiring generation that long),
   and the whole drain is bounded by ``drain_timeout``; then ``on_cleanup``
   runs.

Works with Debian 12's aiohttp (3.8) and PyPI's (3.14), on CPython's own
loop and on uvloop.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import signal
import sys
from collections.abc import Awaitable
from typing import Any

import aiohttp
from aiohttp import hdrs, web

from . import asyncio_servers, listener

__all__ = ["run_app", "serve"]

DRAIN_TIMEOUT = 30.0  # below start_server's --stop-timeout, which would SIGKILL
KEEPALIVE_TIMEOUT = 5.0  # uvicorn's default; a proxy's pool should close sooner
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Runner(web.AppRunner):
    """The app's runner, whose shutdown hooks run once: at the start of the
    drain (aiohttp 3.9 and later run them again in ``cleanup()``)."""

    _shut_down = False

    async def shutdown(self) -> None:
        if not self._shut_down:
            self._shut_down = True
            await super().shutdown()


async def serve(
    app: web.Application,
    *,
    drain_timeout: float = DRAIN_TIMEOUT,
    keepalive_timeout: float = KEEPALIVE_TIMEOUT,
    stop: asyncio.Event | None = None,
    **runner_kwargs: Any,
) -> int:
    """Serve ``app`` on every inherited stream socket until SIGTERM or
    SIGINT (or ``stop`` is set), then drain.  Other keyword arguments go to
    ``web.AppRunner``.  Returns how many connections the drain had to cut."""
    draining = False  # read by the hook, set once the stop comes

    async def close_when_draining(request: web.Request, response: web.StreamResponse) -> None:
        # Called by every reply's prepare(), after aiohttp chose its headers
        # and before they go out: the one moment at which a reply the handler
        # streams itself (a StreamResponse it prepares) can still say close.
        if draining:
            response.force_close()  # and aiohttp closes once the reply is done
            response.headers[hdrs.CONNECTION] = "close"

    app.on_response_prepare.append(close_when_draining)
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, stop.set)
    runner = _Runner(app, keepalive_timeout=keepalive_timeout, **runner_kwargs)
    await runner.setup()
    assert runner.server is not None
    servers = await asyncio_servers.start_asyncio_protocol_servers(runner.server)
    if not servers:
        await runner.cleanup()
        raise listener.NotUnderServerStarter("no stream socket in SERVER_STARTER_PORT")
    listener.notify_ready(f"aiohttp {aiohttp.__version__} serving")
    await stop.wait()
    listener.notify_stopping()
    draining = True  # before the hooks: what they answer says close
    asyncio_servers.stop_accepting(servers)
    await runner.shutdown()
    cut = await servers.drain(drain_timeout)
    await runner.cleanup()
    return cut


def run_app(app: web.Application | Awaitable[web.Application], **kwargs: Any) -> int:
    """``serve(app)`` in a new event loop (``asyncio_servers.run``: uvloop's
    when it is installed);
    ``app`` may also be an awaitable that makes it.  Returns the process's
    exit status: 1, with a line on stderr, when there is no socket to serve."""

    async def made_and_served() -> int:
        return await serve(await app if inspect.isawaitable(app) else app, **kwargs)

    try:
        cut = asyncio_servers.run(made_and_served())
    except listener.NotUnderServerStarter as err:
        print(f"server_starter.aiohttp: {err}", file=sys.stderr)
        return 1
    if cut:
        print(f"server_starter.aiohttp: {cut} connections cut at the drain's end", file=sys.stderr)
    return 0


def load_app(spec: str) -> web.Application | Awaitable[web.Application]:
    """``module:attribute``: an Application, or a function returning one."""
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(f"the app must be given as module:attribute, not {spec!r}")
    found = getattr(importlib.import_module(module_name), attribute, None)
    if found is None:
        raise ValueError(f"module {module_name!r} has no attribute {attribute!r}")
    if isinstance(found, web.Application):
        return found
    if callable(found):
        made = found()
        if isinstance(made, web.Application) or inspect.isawaitable(made):
            return made
    raise ValueError(f"{spec} is neither an aiohttp web.Application nor a function returning one")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m server_starter.aiohttp")
    parser.add_argument("app", help="the app, as module:attribute (an Application or a factory)")
    parser.add_argument("--app-dir", default=".", help="directory to import the app from")
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=DRAIN_TIMEOUT,
        metavar="SECONDS",
        help=f"longest drain on SIGTERM (default {DRAIN_TIMEOUT:g})",
    )
    parser.add_argument(
        "--keepalive-timeout",
        type=float,
        default=KEEPALIVE_TIMEOUT,
        metavar="SECONDS",
        help=f"close a connection idle this long, also while draining "
        f"(default {KEEPALIVE_TIMEOUT:g})",
    )
    args = parser.parse_args(argv)
    try:
        listener.ports()
        sys.path.insert(0, args.app_dir)
        app = load_app(args.app)
    except (listener.NotUnderServerStarter, ValueError, ImportError) as err:
        print(f"server_starter.aiohttp: {err}", file=sys.stderr)
        return 1
    return run_app(app, drain_timeout=args.drain_timeout, keepalive_timeout=args.keepalive_timeout)


if __name__ == "__main__":
    sys.exit(main())
