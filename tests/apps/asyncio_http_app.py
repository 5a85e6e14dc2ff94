"""The README's asyncio recipe, as an app would write it: an HTTP/1.0
server on asyncio streams and CPython's own event loop.  Every path waits
100 ms (the seed's handler), then answers "hello"; the generation is in a
header, so that every body has the same length."""

import asyncio
import os
import signal

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
    await servers.drain(timeout=30)  # stop accepting, finish every accepted connection


asyncio.run(main())
