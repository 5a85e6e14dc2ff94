"""asyncio servers on the inherited sockets, and a drain that loses nothing.

    servers = await listener.start_asyncio_servers(handle)   # or ..._protocol_servers
    listener.notify_ready()
    await stop_requested.wait()                               # e.g. SIGTERM
    await servers.drain(timeout=30)

Works on CPython's own event loop (3.11 and newer) and on uvloop.

Why not ``server.close()``: CPython's selector loop accepts a batch of
connections in one pass and builds their transports one pass later, each
registering with its ``asyncio.Server`` as it is built.  A ``close()`` in
between (a signal callback queued behind an accept batch does exactly that)
makes the registration fail; the error is swallowed outside debug mode and
the connection, its request unread, is reset when the process exits
(CPython gh-109564).  Under load with a reload every second that loses a few
connections in a thousand.  ``drain()`` removes the listening sockets from
the loop first (no more ``accept()``), lets the transports of the connections
already accepted be built, and only then closes the servers.

It then waits, bounded by ``timeout``, for every connection this process
accepted: a stream connection until its handler returns (including one whose
handler has not started yet), a protocol connection until
``connection_lost()``.  The listening sockets stay open in the superdaemon
and the next generation, so no connection is refused meanwhile.

Keep-alive (HTTP/1.1, and the proxies that pool connections to the app):
the drain closes no connection itself, since a client may be sending a
request on an idle one at that very moment (a proxy's pooled connection
is picked for the next request at any time) and would see it end unserved.
From ``drain()`` on, ``servers.draining`` is True, and a server that keeps
connections alive ends each one at a moment the client knows of:

- the reply to the next request carries ``Connection: close``, then the
  server closes (lingering: it reads and drops what the client still
  sends until the client closes too, so that no reset reaches it);
- or the client closes first;
- or the connection stays idle for the server's keep-alive timeout, as it
  would have ended without a drain.

``tests/apps/asyncio_http_app.py`` is such a server on streams; the
example app (``server_starter.example_app``) one on a protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping
from typing import Any

from .contract import listen_all

__all__ = [
    "AsyncioServers",
    "run",
    "start_asyncio_protocol_servers",
    "start_asyncio_servers",
    "stop_accepting",
    "wait_for_accepted_connections",
]

StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]


class _InFlight:
    """The connections of one process from accept to done, with their
    transports so that a drain past its deadline can cut them."""

    def __init__(self) -> None:
        self.transports: dict[object, asyncio.BaseTransport | None] = {}
        self.empty = asyncio.Event()
        self.empty.set()

    def opened(self, token: object) -> None:
        self.transports[token] = None
        self.empty.clear()

    def attached(self, token: object, transport: asyncio.BaseTransport) -> None:
        if token in self.transports:
            self.transports[token] = transport

    def done(self, token: object) -> None:
        self.transports.pop(token, None)
        if not self.transports:
            self.empty.set()


class _TrackedStreamProtocol(asyncio.StreamReaderProtocol):
    """A stream connection, in flight from the moment it is accepted until
    its handler has returned."""

    def __init__(self, in_flight: _InFlight, handler: StreamHandler, limit: int) -> None:
        self._in_flight = in_flight
        self._handler = handler
        self._handler_started = False
        in_flight.opened(self)
        super().__init__(asyncio.StreamReader(limit=limit), self._run)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._in_flight.attached(self, transport)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self._handler_started:  # lost before the handler could run
            self._in_flight.done(self)

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._handler_started = True
        try:
            result = self._handler(reader, writer)
            if result is not None:
                await result
        finally:
            self._in_flight.done(self)


class _TrackedProtocol(asyncio.Protocol):
    """The app's protocol, in flight until ``connection_lost()``; every call
    is passed through."""

    __slots__ = ("_in_flight", "protocol")

    def __init__(self, in_flight: _InFlight, protocol: asyncio.Protocol) -> None:
        self._in_flight = in_flight
        self.protocol = protocol
        in_flight.opened(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._in_flight.attached(self, transport)
        self.protocol.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.protocol.data_received(data)

    def eof_received(self) -> bool | None:
        return self.protocol.eof_received()

    def pause_writing(self) -> None:
        self.protocol.pause_writing()

    def resume_writing(self) -> None:
        self.protocol.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self.protocol.connection_lost(exc)
        finally:
            self._in_flight.done(self)


class AsyncioServers:
    """The ``asyncio.Server`` objects listening on the inherited stream sockets
    (iterate over them), and the connections they accepted."""

    def __init__(self, servers: list[asyncio.Server], in_flight: _InFlight) -> None:
        self.servers = servers
        self._in_flight = in_flight
        self.draining = False
        """True from the moment ``drain()`` is called: a keep-alive server
        answers every request from then on with ``Connection: close``."""

    def __iter__(self) -> Iterator[asyncio.Server]:
        return iter(self.servers)

    def __len__(self) -> int:
        return len(self.servers)

    def __getitem__(self, index: int) -> asyncio.Server:
        return self.servers[index]

    @property
    def connections(self) -> int:
        """Connections accepted and not yet done."""
        return len(self._in_flight.transports)

    async def drain(self, timeout: float = 30.0) -> int:
        """Stop accepting, close the servers once every accepted connection
        is attached, and wait until all of them are done or ``timeout``
        seconds have passed.  Returns how many were still open then; they are
        aborted.

        A keep-alive connection is not closed by the drain: the server
        decides when, checking ``draining`` (see the module's docstring)."""
        self.draining = True
        stop_accepting(self.servers)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await wait_for_accepted_connections(timeout)
        for server in self.servers:
            server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._in_flight.empty.wait(), max(0.0, deadline - loop.time()))
        left = list(self._in_flight.transports.values())
        for transport in left:
            if isinstance(transport, asyncio.WriteTransport):
                transport.abort()
            elif transport is not None:
                transport.close()
        return len(left)


def run(main: Coroutine[Any, Any, int]) -> int:
    """``asyncio.run(main)``, on uvloop when it is installed: it spends a
    third of the CPU time per request that CPython's own loop does; the
    drain serves both alike."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    if sys.version_info >= (3, 12):
        return asyncio.run(main, loop_factory=uvloop.new_event_loop)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return asyncio.run(main)


def stop_accepting(servers: Iterable[asyncio.Server]) -> None:
    """No more ``accept()`` in this process, at once; safe to call more than
    once.  On CPython's selector loop the listening sockets leave the loop
    but the servers stay open, so that connections already accepted can
    still attach to them (then ``await wait_for_accepted_connections()``
    before closing).  Other loops (uvloop) attach a connection in the same
    step as its accept, so closing the server is enough there."""
    for server in servers:
        loop = server.get_loop()
        if isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
            for sock in server.sockets:
                loop.remove_reader(sock.fileno())
        else:
            server.close()


async def wait_for_accepted_connections(timeout: float = 5.0) -> None:
    """Wait until the transports of the connections the loop has already
    accepted are built (CPython builds them in one task each, after the
    accept pass)."""
    me = asyncio.current_task()
    pending = [
        task
        for task in asyncio.all_tasks()
        if task is not me
        and getattr(task.get_coro(), "__qualname__", "").endswith("._accept_connection2")
    ]
    if pending:
        await asyncio.wait(pending, timeout=timeout)


async def _start(
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    environ: Mapping[str, str] | None,
    kwargs: dict[str, Any],
) -> list[asyncio.Server]:
    loop = asyncio.get_running_loop()
    # create_server() calls listen() again on the shared socket: keep the
    # backlog start_server gives it by default rather than asyncio's 100.
    kwargs.setdefault("backlog", socket.SOMAXCONN)
    servers = []
    for sock in listen_all(environ):
        if sock.type != socket.SOCK_STREAM:
            continue
        if sock.family == socket.AF_UNIX:
            server = await loop.create_unix_server(protocol_factory, sock=sock, **kwargs)
        else:
            server = await loop.create_server(protocol_factory, sock=sock, **kwargs)
        servers.append(server)
    return servers


async def start_asyncio_servers(
    client_connected_cb: StreamHandler,
    environ: Mapping[str, str] | None = None,
    *,
    limit: int = 2**16,
    **kwargs: Any,
) -> AsyncioServers:
    """``asyncio.start_server`` (or ``start_unix_server``) on every inherited
    stream socket: ``client_connected_cb(reader, writer)`` per connection.
    Other keyword arguments go to ``loop.create_server``."""
    in_flight = _InFlight()
    servers = await _start(
        lambda: _TrackedStreamProtocol(in_flight, client_connected_cb, limit), environ, kwargs
    )
    return AsyncioServers(servers, in_flight)


async def start_asyncio_protocol_servers(
    protocol_factory: Callable[[], asyncio.Protocol],
    environ: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> AsyncioServers:
    """``loop.create_server`` (or ``create_unix_server``) with
    ``protocol_factory`` on every inherited stream socket.  The transport's
    ``get_protocol()`` is a pass-through wrapper whose ``.protocol`` is yours."""
    in_flight = _InFlight()
    servers = await _start(lambda: _TrackedProtocol(in_flight, protocol_factory()), environ, kwargs)
    return AsyncioServers(servers, in_flight)
