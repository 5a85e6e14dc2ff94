"""A gunicorn worker class for ASGI apps that drains without a reset:

    start_server --port 8000 --require-notify -- \\
        gunicorn -c python:server_starter.gunicorn \\
            -k server_starter.uvicorn_worker.UvicornWorker myapp:app -w 4

uvicorn's own ``uvicorn.workers.UvicornWorker`` with the drain of
``server_starter.uvicorn_drain``: on SIGTERM (gunicorn's graceful stop, or
the old workers of gunicorn's own HUP) it stops accepting at once, serves
every request on the connections it has accepted, and ends keep-alive
connections only where the client expects it.
Works under the superdaemon and under a plain gunicorn alike.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

from gunicorn.arbiter import Arbiter

from .uvicorn_drain import DrainingH11Protocol, DrainingServer

with warnings.catch_warnings():
    # uvicorn.workers is deprecated in favour of the uvicorn-worker package,
    # which has the same class; this one is what uvicorn still ships.
    warnings.simplefilter("ignore", DeprecationWarning)
    from uvicorn.workers import UvicornWorker as _UvicornWorker

__all__ = ["UvicornWorker"]


class UvicornWorker(_UvicornWorker):
    CONFIG_KWARGS: dict[str, Any] = {"loop": "auto", "http": DrainingH11Protocol}  # noqa: RUF012 - as uvicorn declares it

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        server = DrainingServer(config=self.config)
        self._install_sigquit_handler()
        # uvloop closes the descriptor of a socket it serves but leaves the
        # object holding its number, so gunicorn's own close at the worker's
        # exit failed with EBADF, logged on every reload (and, had the number
        # been reused meanwhile, would close another file): uvicorn serves
        # duplicates of its own.
        await server.serve(sockets=[sock.dup() for sock in self.sockets])
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
