"""The asyncio adapter's drain, in process: real sockets, one event loop,
no superdaemon.  (Under load and reloads: tests/processes/test_zero_loss.py.)"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator

import pytest

from server_starter import listener


@pytest.fixture
def listening() -> Iterator[tuple[socket.socket, dict[str, str]]]:
    """A listening socket, and the environment a superdaemon would give for
    a duplicate of it (the adapter closes its own copy when it drains)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        environ = {"SERVER_STARTER_PORT": f"127.0.0.1:{port}={os.dup(sock.fileno())}"}
        yield sock, environ


def test_drain_waits_for_a_handler_in_flight(
    listening: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, environ = listening

    async def scenario() -> tuple[int, bytes]:
        started = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            started.set()
            await asyncio.sleep(0.2)
            writer.write(b"done\n")
            await writer.drain()
            writer.close()

        servers = await listener.start_asyncio_servers(handle, environ)
        reader, writer = await asyncio.open_connection(*sock.getsockname())
        writer.write(b"hello\n")
        await started.wait()
        assert servers.connections == 1
        cut = await servers.drain(timeout=5)
        reply = await reader.read()
        writer.close()
        return cut, reply

    assert asyncio.run(scenario()) == (0, b"done\n")


def test_drain_cuts_what_outlives_its_timeout(
    listening: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, environ = listening

    async def scenario() -> tuple[int, bytes]:
        class Silent(asyncio.Protocol):
            pass  # never answers, never closes

        servers = await listener.start_asyncio_protocol_servers(Silent, environ)
        reader, writer = await asyncio.open_connection(*sock.getsockname())
        while servers.connections == 0:
            await asyncio.sleep(0.01)
        cut = await servers.drain(timeout=0.2)
        reply = await reader.read()  # the abort ends the connection
        writer.close()
        return cut, reply

    assert asyncio.run(scenario()) == (1, b"")


def test_a_drained_server_accepts_no_more(
    listening: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, environ = listening
    handled: list[str] = []

    async def scenario() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            handled.append("one")
            writer.close()

        servers = await listener.start_asyncio_servers(handle, environ)
        assert len(servers) == 1 and servers[0].is_serving()
        assert await servers.drain(timeout=1) == 0
        assert not servers[0].is_serving()
        _, writer = await asyncio.open_connection(*sock.getsockname())
        await asyncio.sleep(0.2)
        writer.close()

    asyncio.run(scenario())
    # The connection waits in the backlog of the socket the test still holds,
    # for the next generation: the drained process took nothing.
    assert handled == []
    sock.settimeout(1)
    conn, _ = sock.accept()
    conn.close()


def test_the_cpython_internals_the_drain_relies_on_are_still_there() -> None:
    """stop_accepting() and wait_for_accepted_connections() reach into
    CPython's selector loop (see asyncio_servers' docstring): fail loudly,
    here, when a new CPython renames what they use."""
    import inspect
    from asyncio import selector_events

    loop_class = selector_events.BaseSelectorEventLoop
    accept2 = getattr(loop_class, "_accept_connection2", None)
    assert accept2 is not None, "BaseSelectorEventLoop._accept_connection2 is gone"
    assert inspect.iscoroutinefunction(accept2)
    assert accept2.__qualname__.endswith("._accept_connection2")
    # The accept pass schedules one such task per connection accepted.
    accept = getattr(loop_class, "_accept_connection", None)
    assert accept is not None, "BaseSelectorEventLoop._accept_connection is gone"
    assert "_accept_connection2" in inspect.getsource(accept)
    assert callable(loop_class.remove_reader)
