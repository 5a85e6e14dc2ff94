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
  configured have loaded the app (``post_worker_init``).
- It takes part in rolling reloads (``--max-surge``; the worker contract in
  contract.py): it reports its workers (``X_SERVER_STARTER_WORKERS``) and
  starts with ``SERVER_STARTER_START_WORKERS`` of them when told; gunicorn
  itself answers SIGTTIN and SIGTTOU.  An app that cannot be imported
  makes its workers fail to boot, and gunicorn exits non-zero: the reload
  fails and the old generation keeps serving.
- Nothing shared between generations: no pid file, and the control socket
  of recent gunicorn (whose default path is per user) is disabled.
- SIGTERM from the superdaemon is gunicorn's graceful stop: workers finish
  their requests within ``graceful_timeout`` (keep ``--stop-timeout`` above it).

To add settings of your own, write your own config module that starts with
``from server_starter.gunicorn import *`` (and calls ``server_starter_when_ready``,
``server_starter_post_worker_init``, ``server_starter_child_exit`` and
``server_starter_nworkers_changed`` from its own hooks of those names, if it
defines any).

Works with Debian's gunicorn 20.1 and with current gunicorn from PyPI.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import select
import struct
import threading

from . import contract, listener
from .contract import SD_LISTEN_FDS_START, fd_is_open

__all__ = [
    "child_exit",
    "control_socket_disable",
    "nworkers_changed",
    "pidfile",
    "post_worker_init",
    "server_starter_child_exit",
    "server_starter_nworkers_changed",
    "server_starter_post_worker_init",
    "server_starter_when_ready",
    "when_ready",
]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO


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


class _Workers:
    """Counts the workers that booted and have not exited, in the arbiter:
    ``READY=1`` once as many as it runs have booted, and
    ``X_SERVER_STARTER_WORKERS`` whenever a count changes (the worker
    contract's rolling reload; gunicorn answers SIGTTIN and SIGTTOU itself).

    A worker that has booted before its generation is ready waits to serve
    until it is (``wait_for_generation``): a generation that cannot be
    whole (out of memory: the OOM killer takes the largest of a starting
    generation's processes, a booted worker) fails without a request in
    its workers.

    Workers write ``+PID`` when booted, the arbiter ``-PID`` when one exited
    and ``=N`` when its number of workers changed, as 5-byte records to one
    pipe (atomic writes); one thread reads them, so the signal handlers that
    write never wait."""

    RECORD = struct.Struct("=ci")

    def __init__(self) -> None:
        # gunicorn must not tell the superdaemon it is ready before its
        # workers are: take NOTIFY_SOCKET away from it, and use it ourselves.
        self.notify_socket = os.environ.pop("NOTIFY_SOCKET", None)
        self.read_end, self.write_end = os.pipe()
        os.set_blocking(self.write_end, False)
        self.full = 1
        self.target = 1
        # Shared with every worker forked: 1 once the generation is ready.
        self.ready_flag = mmap.mmap(-1, 1)
        # One byte per booted worker waiting, written when the generation is ready.
        self.go_read, self.go_write = os.pipe()

    def record(self, kind: bytes, value: int) -> None:
        with contextlib.suppress(BlockingIOError):  # nobody reads: nothing to add
            os.write(self.write_end, self.RECORD.pack(kind, value))

    def watch(self, full: int, target: int) -> None:
        self.full, self.target = max(1, full), max(1, target)
        threading.Thread(target=self._count, name="server-starter-workers", daemon=True).start()

    def _count(self) -> None:
        booted: set[int] = set()
        ready_sent = False
        reported = ""
        with os.fdopen(self.read_end, "rb", buffering=0) as pipe:
            while True:
                record = _read_exactly(pipe, self.RECORD.size)
                if record is None:
                    return
                kind, value = self.RECORD.unpack(record)
                if kind == b"+":
                    booted.add(value)
                elif kind == b"-":
                    booted.discard(value)
                else:
                    self.target = value
                counts = f"{len(booted)}/{self.target}/{self.full}"
                message = ""
                if not ready_sent and len(booted) >= self.target:
                    ready_sent = True
                    self.ready_flag[0] = 1
                    with contextlib.suppress(OSError):
                        os.write(self.go_write, b"." * len(booted))  # the ones waiting
                    message = f"READY=1\nSTATUS=gunicorn with {len(booted)} workers booted\n"
                if counts != reported:
                    reported = counts
                    self._tell(f"{message}{contract.WORKERS_FIELD}={counts}")

    def wait_for_generation(self, worker: Any) -> None:
        """In a booted worker: return once the generation is ready (at once
        after), or the worker is told to stop; telling the arbiter it is
        alive meanwhile, as its request loop would."""
        while not self.ready_flag[0] and worker.alive:
            readable, _, _ = select.select([self.go_read], [], [], 1.0)
            if readable:
                os.read(self.go_read, 1)
                return
            worker.notify()

    def _tell(self, message: str) -> None:
        if self.notify_socket:
            with contextlib.suppress(OSError):  # the superdaemon is gone
                contract.notify(message, self.notify_socket)


def _read_exactly(pipe: BinaryIO, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = pipe.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


_workers = _Workers()
_hand_over_sockets()

pidfile = None
control_socket_disable = True  # gunicorn >= 24; older versions ignore the name


def server_starter_when_ready(server: Any) -> None:
    full = int(server.num_workers)
    # A rolling reload starts this generation small; the superdaemon grows it.
    server.num_workers = contract.start_workers(full)
    _workers.watch(full, int(server.num_workers))


def server_starter_post_worker_init(worker: Any) -> None:
    _workers.record(b"+", os.getpid())
    _workers.wait_for_generation(worker)


def server_starter_child_exit(server: Any, worker: Any) -> None:
    _workers.record(b"-", int(worker.pid))


def server_starter_nworkers_changed(server: Any, new_value: int, old_value: int | None) -> None:
    _workers.record(b"=", int(new_value))


when_ready = server_starter_when_ready
post_worker_init = server_starter_post_worker_init
child_exit = server_starter_child_exit
nworkers_changed = server_starter_nworkers_changed
