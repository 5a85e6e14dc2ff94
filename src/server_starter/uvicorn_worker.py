"""A gunicorn worker class for ASGI apps that drains without a reset:

    start_server --port 8000 --require-notify -- \\
        gunicorn -c python:server_starter.gunicorn \\
            -k server_starter.uvicorn_worker.UvicornWorker myapp:app -w 4

uvicorn's gunicorn worker with the drain of ``server_starter.uvicorn_drain``:
on SIGTERM (gunicorn's graceful stop, or the old workers of gunicorn's own
HUP) it stops accepting at once, serves every request on the connections it
has accepted, and ends keep-alive connections only where the client expects
it.  Works under the superdaemon and under a plain gunicorn alike.

It builds on ``uvicorn_worker.UvicornWorker`` where the ``uvicorn-worker``
package is installed (``pip install uvicorn-worker``; its 0.4 needs uvicorn
0.36 and gunicorn 21), and otherwise on ``uvicorn.workers.UvicornWorker``,
the same class, which uvicorn deprecated in 0.30 in favour of that package:
from uvicorn 0.30 on (Debian 13's is 0.32) importing it warns
(DeprecationWarning, shown under ``python3 -W default``), and that warning is
left for the user to see.  Neither Debian 12 nor 13 packages uvicorn-worker.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from gunicorn.arbiter import Arbiter

from .uvicorn_drain import DrainingH11Protocol, DrainingServer

if TYPE_CHECKING:
    # uvicorn-worker ships no type information; uvicorn's copy of its class does.
    from uvicorn.workers import UvicornWorker as _UvicornWorker
else:
    # Both are one code: what the subclass overrides or uses (CONFIG_KWARGS,
    # _serve, _install_sigquit_handler, and gunicorn's sockets and wsgi) is
    # the same in uvicorn-worker 0.2 to 0.4 and in uvicorn 0.22 on.
    try:
        from uvicorn_worker import UvicornWorker as _UvicornWorker
    except ModuleNotFoundError as missing:
        # Only its absence falls back: a uvicorn-worker that is there but
        # fails to import (one too new for this uvicorn) is an error to see.
        if missing.name != "uvicorn_worker":
            raise
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
