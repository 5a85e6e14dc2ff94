"""A dependency-free ASGI app for the uvicorn adapter test."""

import asyncio
import os

GENERATION = os.environ.get("SERVER_STARTER_GENERATION", "0")


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    headers = [
        (b"content-type", b"text/plain"),
        (b"x-server-starter-generation", GENERATION.encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if scope["path"] == "/slow":  # headers first, so a client knows it is in flight
        await send({"type": "http.response.body", "body": b"generation ", "more_body": True})
        await asyncio.sleep(0.3)
        await send({"type": "http.response.body", "body": f"{GENERATION}\n".encode()})
    elif scope["path"] == "/echo":  # reads the whole body, answers after 20 ms
        size = 0
        more = True
        while more:
            message = await receive()
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        await asyncio.sleep(0.02)
        await send({"type": "http.response.body", "body": b"read %6d\n" % size})
    elif scope["path"].endswith("/scope"):  # what uvicorn made of it (root_path prefixes path)
        client = scope["client"][0] if scope.get("client") else ""
        text = f"root_path={scope.get('root_path', '')} client={client}\n"
        await send({"type": "http.response.body", "body": text.encode()})
    elif scope["path"] == "/pause":  # the seed's 100 ms handler, a body of one length for ab
        await asyncio.sleep(0.1)
        await send({"type": "http.response.body", "body": b"hello\n"})
    else:
        await send({"type": "http.response.body", "body": f"generation {GENERATION}\n".encode()})


def make_app():  # type: ignore[no-untyped-def]
    """The same app from a factory, for uvicorn's --factory."""
    return app
