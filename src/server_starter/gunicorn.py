"""A gunicorn configuration that makes each gunicorn a proper generation:

    start_server --port 8000 --require-notify -- \\
        gunicorn -c python:server_starter.gunicorn myapp:app -w 4

- gunicorn serves exactly the sockets in ``SERVER_STARTER_PORT`` and binds
  nothing itself: they are handed over in systemd's form (``LISTEN_FDS``,
  descriptors from 3, ``LISTEN_PID`` set to gunicorn's own pid), so gunicorn
  runs in its systemd mode, which never unlinks a unix socket's path on exit
  (with ``--bind fd://N`` it would).
- Readiness means the workers answer: gunicorn's own ``READY=1`` comes
  before any worker has booted, so it is withheld; this module sends
  ``READY=1`` to the generation's ``NOTIFY_SOCKET`` once as many workers as
  configured have loaded the app (``post_worker_init``).  An app that cannot be imported
  makes its workers fail to boot, and gunicorn exits non-zero: the reload
  fails and the old generation keeps serving.
- Nothing shared between generations: no pid file, and the control socket
  of recent gunicorn (whose default path is per user) is disabled.
- SIGTERM from the superdaemon is gunicorn's graceful stop: workers finish
  their requests within ``graceful_timeout`` (keep ``--stop-timeout`` above it).

To add settings of your own, write your own config module that starts with
``from server_starter.gunicorn import *`` (and calls ``server_starter_post_worker_init(worker)``
and ``server_starter_when_ready(server)`` if it defines those hooks too).

Works with Debian's gunicorn 20.1 and with current gunicorn from PyPI.
"""

from __future__ import annotations

import contextlib
import os
import threading

from . import contract, listener
from .contract import SD_LISTEN_FDS_START, fd_is_open

__all__ = [
    "control_socket_disable",
    "pidfile",
    "post_worker_init",
    "server_starter_post_worker_init",
    "server_starter_when_ready",
    "when_ready",
]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _fail(message: str) -> SystemExit:
    return SystemExit(f"server_starter.gunicorn: {message}")


def _hand_over_sockets() -> int:
    """Put the inherited sockets at 3, 4, ... and describe them the systemd way."""
    try:
        fds = list(listener.ports().values())
    except (listener.NotUnderServerStarter, ValueError) as err:
        raise _fail(str(err)) from None
    if not fds:
        raise _fail("SERVER_STARTER_PORT lists no socket for gunicorn to serve")
    wanted = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + len(fds)))
    if fds != wanted:
        # Perl's start_server numbers from 4, and --port=...=FD pins any
        # number: move them, through temporary copies so no move clobbers
        # another, but never over a descriptor that is not one of ours.
        for target in wanted:
            if target not in fds and fd_is_open(target):
                raise _fail(f"descriptor {target} is in use; cannot place the sockets at 3..")
        copies = [os.dup(fd) for fd in fds]
        for fd in fds:
            os.close(fd)
        for copy, target in zip(copies, wanted, strict=True):
            os.dup2(copy, target)
            os.close(copy)
    os.environ["LISTEN_FDS"] = str(len(fds))
    os.environ["LISTEN_PID"] = str(os.getpid())
    return len(fds)


class _Readiness:
    """Counts booted workers; READY=1 once the configured number have booted."""

    def __init__(self) -> None:
        # gunicorn must not tell the superdaemon it is ready before its
        # workers are: take NOTIFY_SOCKET away from it, and use it ourselves.
        self.notify_socket = os.environ.pop("NOTIFY_SOCKET", None)
        self.read_end, self.write_end = os.pipe()
        os.set_blocking(self.write_end, False)
        self.wanted = 1

    def worker_booted(self) -> None:
        # Once nobody counts any more, a respawned worker has nothing to add.
        with contextlib.suppress(BlockingIOError):
            os.write(self.write_end, b"1")

    def watch(self, wanted: int) -> None:
        self.wanted = max(1, wanted)
        threading.Thread(target=self._count, name="server-starter-readiness", daemon=True).start()

    def _count(self) -> None:
        booted = 0
        while booted < self.wanted:
            chunk = os.read(self.read_end, self.wanted - booted)
            if not chunk:
                return
            booted += len(chunk)
        if self.notify_socket:
            with contextlib.suppress(OSError):  # the superdaemon is gone
                contract.notify(
                    f"READY=1\nSTATUS=gunicorn with {booted} workers booted", self.notify_socket
                )
        os.close(self.read_end)


_readiness = _Readiness()
_hand_over_sockets()

pidfile = None
control_socket_disable = True  # gunicorn >= 24; older versions ignore the name


def server_starter_when_ready(server: Any) -> None:
    _readiness.watch(int(server.num_workers))


def server_starter_post_worker_init(worker: Any) -> None:
    _readiness.worker_booted()


when_ready = server_starter_when_ready
post_worker_init = server_starter_post_worker_init
