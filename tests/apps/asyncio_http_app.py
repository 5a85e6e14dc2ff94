"""The README's asyncio recipe, as an app would write it: an HTTP/1.0
server on asyncio streams and CPython's own event loop.  Every path waits
100 ms (the seed's handler), then answers "hello"; the generation is in a
header, so that every body has the same length.

With the argument ``close-then-wait`` it stops the obvious way instead of
``drain()``: ``server.close()``, then wait for the handlers (the recipe that
loses connections, kept to measure it)."""

import asyncio
import os
import signal
import sys

from server_starter import listener

REPLY = (
    "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n"
    f"X-Server-Starter-Generation: {os.environ.get('SERVER_STARTER_GENERATION', '0')}\r\n"
    "\r\nhello\n"
).encode()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.1)
        writer.write(REPLY)
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass  # the client went away
    finally:
        writer.close()


async def main() -> None:
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
