"""Run an ASGI app with uvicorn on the inherited sockets:

    start_server --port 8000 --require-notify -- \\
        python3 -m server_starter.uvicorn myapp:app [--app-dir DIR]

uvicorn serves every inherited stream socket (TCP or unix) and binds
nothing; ``READY=1`` goes to the superdaemon once uvicorn has started (the
app's lifespan start-up included); SIGTERM is uvicorn's graceful shutdown,
which finishes the requests in flight (bounded by
``--timeout-graceful-shutdown``).  Needs uvicorn (``pip install uvicorn``).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from types import FrameType

from . import listener


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m server_starter.uvicorn")
    parser.add_argument("app", help="the ASGI app, as module:attribute")
    parser.add_argument("--app-dir", default=".", help="directory to import the app from")
    parser.add_argument(
        "--timeout-graceful-shutdown",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest drain on SIGTERM (default 30)",
    )
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        print(
            "server_starter.uvicorn: uvicorn is not installed (pip install uvicorn)",
            file=sys.stderr,
        )
        return 1
    try:
        sockets = [s for s in listener.listen_all() if s.type == socket.SOCK_STREAM]
    except (listener.NotUnderServerStarter, ValueError) as err:
        print(f"server_starter.uvicorn: {err}", file=sys.stderr)
        return 1
    if not sockets:
        print("server_starter.uvicorn: no stream socket in SERVER_STARTER_PORT", file=sys.stderr)
        return 1

    class NotifyingServer(uvicorn.Server):
        loop: asyncio.AbstractEventLoop | None = None

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            self.loop = asyncio.get_running_loop()
            if self.started:  # False when the app's lifespan start-up failed
                listener.notify_ready(f"uvicorn {uvicorn.__version__} serving")

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            # uvicorn notices should_exit on its next 0.1 s tick; until then
            # a retiring generation would still take new connections from the
            # shared queue, so stop accepting now (shutdown closes them again).
            if self.loop is not None and not self.loop.is_closed():
                self.loop.call_soon_threadsafe(self.stop_accepting)

        def stop_accepting(self) -> None:
            for server in self.servers:
                server.close()

    sys.path.insert(0, args.app_dir)
    config = uvicorn.Config(
        args.app,
        log_level=args.log_level,
        timeout_graceful_shutdown=int(args.timeout_graceful_shutdown),
    )
    server = NotifyingServer(config)
    server.run(sockets=sockets)
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
