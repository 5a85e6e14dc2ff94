"""The example app: the seed articles' Go program, ported.

Serves ``/`` and ``/endpoint`` (the two HandleFuncs) and ``/slow`` (the
graceful-shutdown benchmark handler: writes "Hello, ", flushes, sleeps
100 ms, writes the rest) on every inherited stream socket, tells the
superdaemon it is ready, and on SIGTERM stops accepting, finishes every
connection it has accepted and exits 0.

It is the showcase of the asyncio adapter: one event loop (uvloop when it
is installed), an ``asyncio.Protocol`` per connection,
``listener.start_asyncio_protocol_servers`` to serve and ``drain()`` to
stop.  HTTP/1.0, one request per connection, so a drain never waits on an
idle keep-alive connection.

Every response carries ``X-Server-Starter-Generation`` and
``X-Worker-Pid`` so a client can see which generation answered.

Configuration (environment, e.g. through ``--envdir``, so it can change
between reloads):

- ``EXAMPLE_APP_FAIL``: if set and not empty, exit 1 at start with this text
  (a broken deploy).
- ``EXAMPLE_APP_BOOT_SECONDS``: sleep this long before serving (a slow boot).
- ``EXAMPLE_APP_MESSAGE``: replaces "Hello" in the replies.
- ``EXAMPLE_APP_PROCESSES``: how many processes serve the sockets (default
  1).  The first forks the others, passes the stop signal on to them, and
  stops them all if one dies, so that the superdaemon starts a whole new
  generation.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Coroutine
from typing import Any, cast

from . import listener

IDLE_TIMEOUT = 10.0  # a client that connects and says nothing cannot hold up a drain
DRAIN_TIMEOUT = 60.0  # below start_server's --stop-timeout, which would SIGKILL us
SLOW_PAUSE = 0.1
MAX_HEAD = 16 * 1024
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
PR_SET_PDEATHSIG = 1
SERVER = f"server-starter-example Python/{sys.version.split()[0]}"


class Replies:
    """What every connection shares: the loop, the bodies and headers
    computed once, and the connections still waiting for their request."""

    def __init__(self, loop: asyncio.AbstractEventLoop, greeting: str) -> None:
        self.loop = loop
        self.pages = {
            "/": (f"{greeting} from a HandleFunc #1!\n".encode(), b""),
            "/endpoint": (f"{greeting} from a HandleFunc #2!\n".encode(), b""),
            "/slow": (f"{greeting}, ".encode(), b"Python!\n"),
        }
        self.common = (
            f"X-Server-Starter-Generation: {listener.generation() or 0}\r\n"
            f"X-Worker-Pid: {os.getpid()}\r\n"
            f"Server: {SERVER}\r\n"
        ).encode()
        self._date_second = -1
        self._date = b""
        # Connections without a request yet, oldest first (dicts keep
        # insertion order): one timer sweeps them all, cheaper per connection
        # than a timer each.
        self.waiting: dict[HTTPConnection, float] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def head(self, status: str, length: int) -> bytes:
        now = int(time.time())
        if now != self._date_second:  # formatting costs more than the rest of a reply
            # The C locale's day and month names are HTTP's; email.utils
            # would cost every generation 9 ms more to import.
            date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))
            self._date_second, self._date = now, date.encode()
        return (
            b"HTTP/1.0 %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
            b"Date: %s\r\n%s\r\n" % (status.encode(), length, self._date, self.common)
        )

    def wait_for_request(self, connection: HTTPConnection) -> None:
        self.waiting[connection] = self.loop.time()
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(IDLE_TIMEOUT, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        too_old = self.loop.time() - IDLE_TIMEOUT
        for connection, since in list(self.waiting.items()):
            if since > too_old:
                self._sweeper = self.loop.call_at(since + IDLE_TIMEOUT, self._sweep)
                break
            del self.waiting[connection]
            connection.close()


class HTTPConnection(asyncio.Protocol):
    """One request, one reply, then close."""

    __slots__ = ("buffer", "replies", "timer", "transport")

    def __init__(self, replies: Replies) -> None:
        self.replies = replies
        self.transport: asyncio.Transport | None = None
        self.buffer: bytes | None = b""
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.replies.wait_for_request(self)

    def data_received(self, data: bytes) -> None:
        if self.buffer is None:
            return  # a request was read already; HTTP/1.0 has no second one
        self.buffer = buffer = self.buffer + data if self.buffer else data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            end = buffer.find(b"\n\n")
        if end < 0:
            if len(buffer) > MAX_HEAD:
                self.reply("431 Request Header Fields Too Large", b"request head too large\n")
            return
        request_line = buffer.split(b"\n", 1)[0].split()
        if len(request_line) != 3 or not request_line[2].startswith(b"HTTP/"):
            self.reply("400 Bad Request", b"bad request line\n")
        elif request_line[0] != b"GET":
            self.reply("501 Not Implemented", b"only GET is served\n")
        else:
            page = self.replies.pages.get(request_line[1].decode("latin-1").split("?", 1)[0])
            if page is None:
                self.reply("404 Not Found", b"not found\n")
            else:
                self.reply("200 OK", *page)

    def reply(self, status: str, body: bytes, rest: bytes = b"") -> None:
        assert self.transport is not None
        self.buffer = None
        self.replies.waiting.pop(self, None)
        self.transport.write(self.replies.head(status, len(body) + len(rest)) + body)
        if rest:
            self.timer = self.replies.loop.call_later(SLOW_PAUSE, self.finish, rest)
        else:
            self.transport.close()

    def finish(self, rest: bytes) -> None:
        assert self.transport is not None
        self.timer = None
        self.transport.write(rest)
        self.transport.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        # A client hanging up mid-reply is not an error worth a traceback.
        self.replies.waiting.pop(self, None)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


async def serve(children: list[int]) -> int:
    """One serving process.  The first one (``children`` names the others)
    tells the superdaemon when it is ready, passes the stop signal on and
    reports the generation's outcome."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # a stop during boot arrives now
    replies = Replies(loop, os.environ.get("EXAMPLE_APP_MESSAGE", "Hello"))
    servers = await listener.start_asyncio_protocol_servers(lambda: HTTPConnection(replies))
    if not servers:
        print("example app: no stream socket in SERVER_STARTER_PORT", file=sys.stderr)
        return 1
    siblings = Siblings(loop, children, stop)
    listener.notify_ready(f"generation {listener.generation()} serving")
    await stop.wait()
    listener.notify_stopping()
    siblings.stop()
    cut = await servers.drain(DRAIN_TIMEOUT)
    if cut:
        print(f"example app: {cut} connections cut after {DRAIN_TIMEOUT:g} s", file=sys.stderr)
    return await siblings.wait(DRAIN_TIMEOUT)


class Siblings:
    """The first process's view of the others: a stop is passed on to them;
    one dying on its own stops the whole generation, so that the superdaemon
    starts a complete new one."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, pids: list[int], stop: asyncio.Event
    ) -> None:
        self.loop = loop
        self.stop_requested = stop
        self.stopping = False
        self.failed = False
        self.running: dict[int, int] = {}  # pid: pidfd
        self.all_exited = asyncio.Event()
        for pid in pids:
            pidfd = os.pidfd_open(pid)
            self.running[pid] = pidfd
            loop.add_reader(pidfd, self._exited, pid)
        if not self.running:
            self.all_exited.set()

    def _exited(self, pid: int) -> None:
        pidfd = self.running.pop(pid)
        self.loop.remove_reader(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        if not self.stopping or os.waitstatus_to_exitcode(status) != 0:
            print(
                f"example app: process {pid} ended with status {status}, stopping this generation",
                file=sys.stderr,
            )
            self.failed = True
            self.stop_requested.set()
        if not self.running:
            self.all_exited.set()

    def stop(self) -> None:
        self.stopping = True
        for pid in self.running:
            os.kill(pid, signal.SIGTERM)

    async def wait(self, timeout: float) -> int:
        try:
            await asyncio.wait_for(self.all_exited.wait(), timeout)
        except TimeoutError:
            for pid in self.running:
                os.kill(pid, signal.SIGKILL)
            await self.all_exited.wait()
        return 1 if self.failed else 0


def run(main: Coroutine[Any, Any, int]) -> int:
    """On uvloop when it is installed: it spends a third of the CPU time per
    request that CPython's own loop does; the adapter serves both alike."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    if sys.version_info >= (3, 12):
        return asyncio.run(main, loop_factory=uvloop.new_event_loop)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return asyncio.run(main)


def processes() -> int:
    value = os.environ.get("EXAMPLE_APP_PROCESSES", "") or "1"
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"EXAMPLE_APP_PROCESSES must be a whole number from 1, not {value!r}")
    return int(value)


def fork_serving_process() -> int:
    """A child that serves like its parent and ends with it."""
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)
    os.environ.pop("NOTIFY_SOCKET", None)  # readiness is the first process's to tell
    os._exit(run(serve([])))


def main() -> int:
    failure = os.environ.get("EXAMPLE_APP_FAIL")
    if failure:
        print(f"example app: refusing to start: {failure}", file=sys.stderr)
        return 1
    try:
        listener.ports()
        count = processes()
        boot = float(os.environ.get("EXAMPLE_APP_BOOT_SECONDS", "0") or 0)
    except (listener.NotUnderServerStarter, ValueError) as err:
        print(f"example app: {err}", file=sys.stderr)
        return 1
    # Held until each process's event loop has its handlers; a stop signal
    # during the boot ends it at once.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    if boot > 0 and signal.sigtimedwait(STOP_SIGNALS, boot) is not None:
        return 0
    children = [fork_serving_process() for _ in range(count - 1)]
    return run(serve(children))


if __name__ == "__main__":
    sys.exit(main())
