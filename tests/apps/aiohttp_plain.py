"""The same aiohttp app served the plain way aiohttp's documentation gives
for inherited sockets: a ``web.SockSite`` per socket and
``runner.cleanup()`` on SIGTERM.  Kept to measure what that loses beside
``server_starter.aiohttp``."""

import asyncio
import signal

from aiohttp import web
from aiohttp_app import app

from server_starter import listener


async def main() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    runner = web.AppRunner(app)
    await runner.setup()
    for sock in listener.listen_all():
        await web.SockSite(runner, sock).start()
    listener.notify_ready()
    await stop.wait()
    await runner.cleanup()


asyncio.run(main())
