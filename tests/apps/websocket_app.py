"""A websocket server whose clients never leave, with the two stops of
servers such as nginx or Starman: ``--signal-on-hup=USR1`` drains gracefully
(accepting stops, every websocket is kept until its client leaves, which
these never do), TERM stops at once (each websocket is closed with 1001,
going away).  ``/ws`` sends ``generation N`` and then holds the connection."""

import asyncio
import os
import signal

from aiohttp import WSCloseCode, web

from server_starter import listener

GENERATION = os.environ.get("SERVER_STARTER_GENERATION", "0")


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    request.app["sockets"].add(ws)
    try:
        await ws.send_str(f"generation {GENERATION}")
        async for _ in ws:  # until the client leaves, or TERM closes it
            pass
    finally:
        request.app["sockets"].discard(ws)
    return ws


async def main() -> None:
    app = web.Application()
    app["sockets"] = set()
    app.router.add_get("/ws", websocket)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    sites = [web.SockSite(runner, sock) for sock in listener.listen_all()]
    for site in sites:
        await site.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    draining: list[asyncio.Task[None]] = []

    async def stop_accepting() -> None:
        for site in sites:
            await site.stop()  # the websockets stay

    loop.add_signal_handler(
        signal.SIGUSR1, lambda: draining.append(loop.create_task(stop_accepting()))
    )
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    listener.notify_ready()
    await stop.wait()
    for ws in list(app["sockets"]):
        await ws.close(code=WSCloseCode.GOING_AWAY)
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
