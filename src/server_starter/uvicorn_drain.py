"""uvicorn's h11 protocol and server with a drain that loses no request,
also on connections a proxy keeps alive.  Imported only where uvicorn is
used (``server_starter.uvicorn``, ``server_starter.uvicorn_worker``).

What uvicorn's own shutdown loses, and what the drain does instead:

- ``asyncio.Server.close()`` right behind an accept batch loses the
  connections whose transports were not built yet (CPython gh-109564): the
  drain stops accepting first and lets them attach (``asyncio_servers``).
- uvicorn closes at once every connection without a request in progress:
  one accepted a moment ago, whose request is on its way or half read, and
  every idle keep-alive connection.  A proxy (nginx ``keepalive``, HAProxy's
  pool) picks a pooled connection for its next request at any moment, so
  some of those closes cross a request on the wire: nginx answers 502
  ("upstream prematurely closed connection"), HAProxy fails the request.
- An in-flight reply whose head went out without ``Connection: close`` is
  followed by a close, which the client cannot expect.

The drain's rule: it closes no connection itself.  Every request that
arrives on a retiring connection is served, and its reply carries
``Connection: close``; a connection ends after that reply, or when the
client closes it, or when it has been idle for ``timeout_keep_alive``
(uvicorn's ``--timeout-keep-alive``, 5 s by default), just as it would
without a drain.  A reply whose head was already sent keeps the connection
alive; the request after it gets the ``Connection: close``.  Every close
after a reply lingers: FIN first, then what the client still sends is read
and dropped until it closes too (at most ``LINGER_SECONDS``), so that the
kernel never answers unread data with a reset.  uvicorn's
``timeout_graceful_shutdown`` bounds the whole drain.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Callable
from types import FrameType
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

from . import asyncio_servers

# The oldest uvicorn the drain is built on and tested with: 0.22 brought
# ``timeout_graceful_shutdown``, which bounds it.
MINIMUM_UVICORN = (0, 22)


class UvicornTooOld(ImportError):
    pass


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


if _release(uvicorn.__version__) < MINIMUM_UVICORN:
    _minimum = ".".join(map(str, MINIMUM_UVICORN))
    raise UvicornTooOld(
        f"uvicorn {uvicorn.__version__} is too old: the drain needs uvicorn {_minimum} or "
        f"later (Debian 12's python3-uvicorn is 0.17.6; pip install 'uvicorn>={_minimum}' "
        "in a venv)"
    )

__all__ = ["MINIMUM_UVICORN", "DrainingH11Protocol", "DrainingServer", "UvicornTooOld"]

LINGER_SECONDS = 2.0  # a client reads a reply's end and closes within this
CLOSE_HEADER = (b"connection", b"close")


class LingerOnClose:
    """The transport a reply cycle writes to, whose ``close()`` is the
    protocol's lingering close."""

    def __init__(self, transport: asyncio.Transport, linger: Callable[[], None]) -> None:
        self._transport = transport
        self._linger = linger

    def close(self) -> None:
        self._linger()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class DrainingH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, ending its connection the drain's way once
    ``shutdown()`` has been called."""

    draining = False
    discarding = False  # FIN sent after the last reply: what arrives is dropped
    first_request_timer: asyncio.TimerHandle | None = None
    linger_timer: asyncio.TimerHandle | None = None

    def shutdown(self) -> None:
        """uvicorn's server asks each connection to end: mark it, so that
        the next reply says ``Connection: close``; close nothing yet."""
        if self.draining:
            return
        self.draining = True
        if self.cycle is not None and not self.cycle.response_complete:
            self._reply_is_the_last(self.cycle)
        elif self.cycle is None and not self._request_begun():
            # Accepted, nothing received yet: its first request may be on
            # its way; uvicorn arms no timer before one, so the drain does.
            self.first_request_timer = self.loop.call_later(
                self.timeout_keep_alive, self._no_first_request
            )
        # Else it is idle between requests: its keep-alive timer runs.

    def handle_events(self) -> None:
        super().handle_events()
        if self.draining and self.cycle is not None and not self.cycle.response_complete:
            self._reply_is_the_last(self.cycle)

    def data_received(self, data: bytes) -> None:
        if self.discarding:
            return
        if self.first_request_timer is not None:
            self.first_request_timer.cancel()
            self.first_request_timer = None
        super().data_received(data)

    def on_response_complete(self) -> None:
        if self.discarding:  # uvicorn would arm a keep-alive timer
            self.server_state.total_requests += 1
            return
        super().on_response_complete()

    def eof_received(self) -> None:
        if self.discarding:  # the client has closed too: the linger is over
            self.transport.close()
        else:
            super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self.first_request_timer, self.linger_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def _request_begun(self) -> bool:
        return bool(self.conn.their_state is not h11.IDLE or self.conn.trailing_data[0])

    def _reply_is_the_last(self, cycle: RequestResponseCycle) -> None:
        """The reply to this request ends the connection, if its head has
        not gone out yet (else the client expects the connection to stay,
        and the next request's reply will say so)."""
        if cycle.response_started or not cycle.keep_alive:
            return
        cycle.keep_alive = False
        cycle.default_headers = [*cycle.default_headers, CLOSE_HEADER]
        cycle.transport = LingerOnClose(self.transport, self.linger)  # type: ignore[assignment]

    def _no_first_request(self) -> None:
        self.first_request_timer = None
        if self.cycle is None and not self._request_begun() and not self.transport.is_closing():
            self.conn.send(h11.ConnectionClosed())
            self.transport.close()

    def linger(self) -> None:
        if self.discarding or self.transport.is_closing():
            return
        self.discarding = True
        self._unset_keepalive_if_required()
        self.transport.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.linger_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)


class DrainingServer(uvicorn.Server):
    """Stops accepting and starts the drain the moment SIGTERM arrives
    (uvicorn itself would notice on its next 0.1 s tick, and answer
    keep-alive meanwhile), then drains by the rule above."""

    loop: asyncio.AbstractEventLoop | None = None
    on_started: Callable[[], object] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.loop = asyncio.get_running_loop()
        if self.started and self.on_started is not None:
            self.on_started()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        asyncio_servers.stop_accepting(self.servers)
        for connection in list(self.server_state.connections):
            connection.shutdown()  # from now on each reply says close

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._begin_drain()
        await asyncio_servers.wait_for_accepted_connections()
        self._begin_drain()  # again, for those of the last accept batch
        await super().shutdown(sockets)
