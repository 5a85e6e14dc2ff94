"""An aiohttp app for the aiohttp adapter: ``/echo`` reads the whole body
and answers after 20 ms with a body of one length; ``/`` names the
generation; ``/slow`` sends its head, then its body 0.3 s later."""

import asyncio
import os

from aiohttp import web

GENERATION = os.environ.get("SERVER_STARTER_GENERATION", "0")
HEADERS = {"X-Server-Starter-Generation": GENERATION}


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    await asyncio.sleep(0.02)
    return web.Response(text=f"read {len(body):6d}\n", headers=HEADERS)


async def root(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(text=f"generation {GENERATION}\n", headers=HEADERS)


async def slow(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers=HEADERS)
    await response.prepare(request)
    await response.write(b"generation ")
    await asyncio.sleep(0.3)
    await response.write(f"{GENERATION}\n".encode())
    await response.write_eof()
    return response


app = web.Application()
app.router.add_route("*", "/echo", echo)
app.router.add_route("*", "/slow", slow)
app.router.add_route("*", "/", root)
