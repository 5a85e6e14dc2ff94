"""Run an ASGI app with uvicorn on the inherited sockets:

    start_server --port 8000 --require-notify -- \\
        python3 -m server_starter.uvicorn myapp:app [--app-dir DIR]

uvicorn serves every inherited stream socket (TCP or unix) and binds
nothing; ``READY=1`` goes to the superdaemon once uvicorn has started (the
app's lifespan start-up included).  SIGTERM stops accepting at once and
drains, bounded by ``--timeout-graceful-shutdown``, without losing a
connection the process has accepted (``DrainingServer``).

For gunicorn's ``-k``, see ``server_starter.uvicorn_worker``.  Needs uvicorn
(``pip install uvicorn``); HTTP is served by h11.

What uvicorn's own shutdown loses, and what the drain does instead:

- ``asyncio.Server.close()`` right behind an accept batch loses the
  connections whose transports were not built yet (CPython gh-109564): the
  drain stops accepting first and lets them attach (``asyncio_servers``).
- uvicorn closes at once every connection without a request in progress:
  one accepted a moment ago, whose request is on its way or half read, is
  reset.  The drain serves that request (with ``Connection: close``).
- An idle keep-alive connection is closed at once, so a request the client
  sends meanwhile is reset; an in-flight HTTP/1.1 reply ends without
  ``Connection: close``, so the client reuses the connection and is reset.
  The drain sends ``Connection: close`` where the reply has not started,
  and ends every connection with a lingering close: it sends FIN first and
  discards, unread, whatever the client still sends until it closes too
  (bounded by ``LINGER_SECONDS``), so the client sees the connection end
  cleanly, never a reset, and can retry on a new one.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from types import FrameType
from typing import Any

from . import asyncio_servers, listener

LINGER_SECONDS = 2.0
CLOSE_HEADER = (b"connection", b"close")


def draining_classes() -> tuple[type[Any], type[Any]]:
    """The h11 protocol and the server that drain without a reset, built
    on the installed uvicorn (imported only when asked for)."""
    import h11
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class _LingerOnClose:
        """The transport a reply cycle writes to, whose ``close()`` is the
        protocol's lingering close."""

        def __init__(self, transport: asyncio.Transport, linger: Any) -> None:
            self._transport = transport
            self._linger = linger

        def close(self) -> None:
            self._linger()

        def __getattr__(self, name: str) -> Any:
            return getattr(self._transport, name)

    class DrainingH11Protocol(H11Protocol):
        draining = False
        discarding = False  # FIN sent: what arrives is read and dropped
        requests_done = 0
        drain_timer: asyncio.TimerHandle | None = None

        def on_response_complete(self) -> None:
            self.requests_done += 1
            if not self.discarding:  # else it would arm a keep-alive timer
                super().on_response_complete()

        def data_received(self, data: bytes) -> None:
            if self.discarding:
                return
            super().data_received(data)
            if self.draining:
                self._last_request()

        def eof_received(self) -> None:
            if self.discarding:  # the client has closed too: the linger is over
                self.transport.close()
            else:
                super().eof_received()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.drain_timer is not None:
                self.drain_timer.cancel()
            super().connection_lost(exc)

        def shutdown(self) -> None:
            """uvicorn's shutdown asks each connection to end: serve what
            this one has been sent, then close it lingering."""
            if self.draining:
                return
            self.draining = True
            if self.cycle is not None and not self.cycle.response_complete:
                self._last_request()
            elif self.requests_done and not self._request_begun():
                self.linger()  # idle between requests
            else:
                # A fresh connection: its first request is on its way.
                self._unset_keepalive_if_required()
                self.drain_timer = self.loop.call_later(self.timeout_keep_alive, self._give_up)

        def _request_begun(self) -> bool:
            return bool(self.conn.their_state is not h11.IDLE or self.conn.trailing_data[0])

        def _last_request(self) -> None:
            cycle = self.cycle
            if cycle is None or cycle.response_complete or cycle.keep_alive is False:
                return
            cycle.keep_alive = False
            if not cycle.response_started:
                cycle.default_headers = [*cycle.default_headers, CLOSE_HEADER]
            cycle.transport = _LingerOnClose(self.transport, self.linger)  # type: ignore[assignment]
            if self.drain_timer is not None:
                self.drain_timer.cancel()
                self.drain_timer = None

        def _give_up(self) -> None:
            self.drain_timer = None
            if self.cycle is None or self.cycle.response_complete:
                self.linger()

        def linger(self) -> None:
            if self.discarding or self.transport.is_closing():
                return
            self.discarding = True
            self._unset_keepalive_if_required()
            self.transport.resume_reading()
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.drain_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    class DrainingServer(uvicorn.Server):
        """Stops accepting the moment SIGTERM arrives (uvicorn itself would
        notice on its next 0.1 s tick) and drains without a reset."""

        loop: asyncio.AbstractEventLoop | None = None
        on_started: Any = None

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            self.loop = asyncio.get_running_loop()
            if self.started and self.on_started is not None:
                self.on_started()

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            if self.loop is not None and not self.loop.is_closed():
                self.loop.call_soon_threadsafe(asyncio_servers.stop_accepting, self.servers)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            asyncio_servers.stop_accepting(self.servers)
            await asyncio_servers.wait_for_accepted_connections()
            for connection in list(self.server_state.connections):
                connection.shutdown()
            await super().shutdown(sockets)

    return DrainingH11Protocol, DrainingServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m server_starter.uvicorn")
    parser.add_argument("app", help="the ASGI app, as module:attribute")
    parser.add_argument("--app-dir", default=".", help="directory to import the app from")
    parser.add_argument(
        "--timeout-graceful-shutdown",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest drain on SIGTERM (default 30)",
    )
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        print(
            "server_starter.uvicorn: uvicorn is not installed (pip install uvicorn)",
            file=sys.stderr,
        )
        return 1
    try:
        sockets = [s for s in listener.listen_all() if s.type == socket.SOCK_STREAM]
    except (listener.NotUnderServerStarter, ValueError) as err:
        print(f"server_starter.uvicorn: {err}", file=sys.stderr)
        return 1
    if not sockets:
        print("server_starter.uvicorn: no stream socket in SERVER_STARTER_PORT", file=sys.stderr)
        return 1

    protocol, server_class = draining_classes()
    sys.path.insert(0, args.app_dir)
    config = uvicorn.Config(
        args.app,
        http=protocol,
        log_level=args.log_level,
        timeout_graceful_shutdown=int(args.timeout_graceful_shutdown),
    )
    server = server_class(config)
    server.on_started = lambda: listener.notify_ready(f"uvicorn {uvicorn.__version__} serving")
    server.run(sockets=sockets)
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
