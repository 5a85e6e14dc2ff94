"""The worker side: pick up the sockets a superdaemon passed, and say when you
are ready.  The Python twin of Go's ``listener.ListenAll()`` and Perl's
``Server::Starter::server_ports()``; works under any start_server (ours,
Perl's, Go's), since all of them write ``SERVER_STARTER_PORT``.

    from server_starter import listener

    sockets = listener.listen_all()      # ready socket.socket objects
    ... accept connections on them ...
    listener.notify_ready()              # the new generation may take over now
"""

from __future__ import annotations

import os
import socket
import socketserver
from collections.abc import Callable, Mapping

from . import contract
from .contract import GENERATION_VARIABLE, NotUnderServerStarter, listen_all, ports

__all__ = [
    "NotUnderServerStarter",
    "adopt_socketserver",
    "generation",
    "listen_all",
    "notify_ready",
    "notify_status",
    "notify_stopping",
    "ports",
    "start_asyncio_protocol_servers",
    "start_asyncio_servers",
]

TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from typing import Any, TypeVar

    from .asyncio_servers import AsyncioServers

    ServerT = TypeVar("ServerT", bound=socketserver.BaseServer)


def generation(environ: Mapping[str, str] | None = None) -> int | None:
    """This worker's generation number, or None outside a superdaemon."""
    env = os.environ if environ is None else environ
    value = env.get(GENERATION_VARIABLE, "")
    return int(value) if value.isdigit() else None


def notify_ready(status: str | None = None) -> bool:
    """Tell the superdaemon this generation can serve (``READY=1``), so it
    signals the old one now rather than after ``--interval``.  Returns False
    when nobody listens (no ``NOTIFY_SOCKET``: e.g. under Perl's start_server;
    or the superdaemon is gone)."""
    return _tell("READY=1" + (f"\nSTATUS={status}" if status else ""))


def notify_status(status: str) -> bool:
    """Free-form status text, logged by the superdaemon."""
    return _tell(f"STATUS={status}")


def notify_stopping() -> bool:
    return _tell("STOPPING=1")


def _tell(message: str) -> bool:
    # Never an exception in the app: a worker whose superdaemon died (its
    # notify socket gone) is drained by the unit's ExecStopPost= and must
    # still finish its requests.  sd_notify() too only returns an error.
    try:
        return contract.notify(message)
    except OSError:
        return False


# -- adapters -------------------------------------------------------------------


def adopt_socketserver(
    server_class: type[ServerT], handler_class: Callable[..., Any], sock: socket.socket
) -> ServerT:
    """A ``socketserver`` server (``TCPServer``, ``ThreadingHTTPServer``,
    ``UnixStreamServer``, ...) accepting on an inherited socket instead of binding
    its own.  For a graceful stop, give the class ``daemon_threads = False``
    and ``block_on_close = True``, then call ``shutdown()`` (stop accepting)
    and ``server_close()`` (wait for the requests in flight) on SIGTERM."""
    server = server_class.__new__(server_class)
    # BaseServer's set-up only: TCPServer's would create a socket of its own.
    socketserver.BaseServer.__init__(server, sock.getsockname(), handler_class)
    server.socket = sock  # type: ignore[attr-defined]
    # Several generations share the socket: another may win the race for a
    # connection between select() and accept(), so accept must not block.
    sock.setblocking(False)
    return server


async def start_asyncio_servers(
    client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
    environ: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> AsyncioServers:
    """``asyncio.start_server`` on every inherited stream socket (TCP or
    unix).  On SIGTERM, ``await servers.drain(timeout)``: it stops accepting
    without losing a connection and waits for every one accepted.  See
    ``server_starter.asyncio_servers``."""
    from . import asyncio_servers

    return await asyncio_servers.start_asyncio_servers(client_connected_cb, environ, **kwargs)


async def start_asyncio_protocol_servers(
    protocol_factory: Callable[[], asyncio.Protocol],
    environ: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> AsyncioServers:
    """``loop.create_server(protocol_factory)`` on every inherited stream
    socket, with the same ``drain()``."""
    from . import asyncio_servers

    return await asyncio_servers.start_asyncio_protocol_servers(protocol_factory, environ, **kwargs)
