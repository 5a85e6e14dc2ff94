"""An asyncio app on the inherited sockets: on each connection it says
"accepted", then after a line and 0.3 s its generation; drains on SIGTERM."""

import asyncio
import os
import signal

from server_starter import listener

GENERATION = os.environ.get("SERVER_STARTER_GENERATION", "0")


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"accepted\n")
    await writer.drain()
    await reader.readline()
    await asyncio.sleep(0.3)
    writer.write(f"generation {GENERATION}\n".encode())
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def main() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    servers = await listener.start_asyncio_servers(handle)
    listener.notify_ready()
    await stop.wait()
    await servers.drain(timeout=30)  # stop accepting, finish every accepted connection


asyncio.run(main())
