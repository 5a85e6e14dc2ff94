"""The README's asyncio recipe, as an app would write it: an HTTP server
on asyncio streams and CPython's own event loop, keeping HTTP/1.1
connections alive.  Every path reads the request's body, waits 100 ms (the
seed's handler), then answers "hello"; the generation is in a header, so
that every body has the same length.  ``GET /stream`` sends its head and
"hel" at once and "lo" 0.5 s later (a request a test can see in flight).

With the argument ``close-then-wait`` it stops the obvious way instead of
``drain()``: ``server.close()``, then wait for the handlers (the recipe that
loses connections, kept to measure it)."""

import asyncio
import os
import signal
import sys

from server_starter import listener
from server_starter.asyncio_servers import AsyncioServers

IDLE_TIMEOUT = 5.0  # an idle connection is closed after this, draining or not
HEAD = (
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n"
    f"X-Server-Starter-Generation: {os.environ.get('SERVER_STARTER_GENERATION', '0')}\r\n"
).encode()
servers: AsyncioServers  # set in main(), before any connection is served


def keep_alive(head: bytes) -> bool:
    lines = head.lower().split(b"\r\n")
    connection = [line for line in lines[1:] if line.startswith(b"connection:")]
    if lines[0].endswith(b"http/1.1"):
        return not any(b"close" in line for line in connection)
    return any(b"keep-alive" in line for line in connection)


def body_length(head: bytes) -> int:
    for line in head.lower().split(b"\r\n")[1:]:
        if line.startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
            except TimeoutError:
                break  # idle too long
            await reader.readexactly(body_length(head))
            if head.startswith(b"GET /stream "):  # the head and a first part, the rest later
                writer.write(HEAD + b"Connection: close\r\n\r\nhel")
                await writer.drain()
                await asyncio.sleep(0.5)
                writer.write(b"lo\n")
                await writer.drain()
                break
            await asyncio.sleep(0.1)
            # Once the generation drains, each reply ends its connection:
            # the client knows it, so it never sends into a closing one.
            again = keep_alive(head) and not servers.draining
            writer.write(HEAD + (b"\r\nhello\n" if again else b"Connection: close\r\n\r\nhello\n"))
            await writer.drain()
            if not again:
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass  # the client went away
    finally:
        writer.close()


async def main() -> None:
    global servers
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    servers = await listener.start_asyncio_servers(handle)
    listener.notify_ready()
    await stop.wait()
    if sys.argv[1:] == ["close-then-wait"]:
        for server in servers:
            server.close()
        for server in servers:
            await server.wait_closed()  # Python 3.12+ waits for the connections; 3.11 does not
        await asyncio.gather(*(asyncio.all_tasks() - {asyncio.current_task()}))
    else:
        await servers.drain(timeout=30)  # stop accepting, finish every accepted connection


asyncio.run(main())
