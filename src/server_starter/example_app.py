"""The example app: the seed articles' Go program, ported.

Serves ``/`` and ``/endpoint`` (the two HandleFuncs) and ``/slow`` (the
graceful-shutdown benchmark handler: writes "Hello, ", flushes, sleeps
100 ms, writes the rest) on every inherited stream socket, tells the
superdaemon it is ready, and on SIGTERM stops accepting, finishes every
connection it has accepted and exits 0.

It is the showcase of the asyncio adapter: one event loop (uvloop when it
is installed), an ``asyncio.Protocol`` per connection,
``listener.start_asyncio_protocol_servers`` to serve and ``drain()`` to
stop.  HTTP/1.1 with persistent connections, as Go's net/http (any method;
a request body is read and dropped); from the drain on, every reply says
``Connection: close`` and ends its connection, so that a proxy keeping
connections alive to it never has one closed under a request.

Every response carries ``X-Server-Starter-Generation`` and
``X-Worker-Pid`` so a client can see which generation answered.

Configuration (environment, e.g. through ``--envdir``, so it can change
between reloads):

- ``EXAMPLE_APP_FAIL``: if set and not empty, exit 1 at start with this text
  (a broken deploy).
- ``EXAMPLE_APP_BOOT_SECONDS``: sleep this long before answering (a slow boot).
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
from typing import cast

from . import asyncio_servers, listener

# A connection waiting this long for a request (its first, or the next on a
# kept-alive one) is closed, also during a drain: uvicorn's default.  A
# proxy's pool should close its idle connections sooner (README, "Behind
# nginx or HAProxy"), so that it is never the app that closes one under it.
IDLE_TIMEOUT = 5.0
LINGER_SECONDS = 2.0  # a client reads a last reply and closes within this
DRAIN_TIMEOUT = 60.0  # below start_server's --stop-timeout, which would SIGKILL us
SLOW_PAUSE = 0.1
MAX_HEAD = 16 * 1024  # a longer request head is answered 431
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
PR_SET_PDEATHSIG = 1
SERVER = f"server-starter-example Python/{sys.version.split()[0]}"


class Replies:
    """What every connection shares: the loop, the bodies and headers
    computed once, the servers (whose ``draining`` ends keep-alive), and
    the connections waiting for a request."""

    def __init__(self, loop: asyncio.AbstractEventLoop, greeting: str) -> None:
        self.loop = loop
        self.servers: asyncio_servers.AsyncioServers | None = None
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
        # Connections waiting for a request (a first one, or the next on a
        # kept-alive connection), oldest first (dicts keep insertion
        # order): one timer sweeps them all, cheaper than a timer each.
        self.waiting: dict[HTTPConnection, float] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    @property
    def draining(self) -> bool:
        return self.servers is not None and self.servers.draining

    def head(self, version: bytes, status: str, length: int, connection: bytes) -> bytes:
        now = int(time.time())
        if now != self._date_second:  # formatting costs more than the rest of a reply
            # The C locale's day and month names are HTTP's; email.utils
            # would cost every generation 9 ms more to import.
            date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))
            self._date_second, self._date = now, date.encode()
        return (
            b"%s %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
            b"Date: %s\r\n%s%s\r\n"
            % (
                version,
                status.encode(),
                length,
                self._date,
                connection,
                self.common,
            )
        )

    def wait_for_request(self, connection: HTTPConnection) -> None:
        self.waiting.pop(connection, None)  # to the end: the newest waiter
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


class BadRequest(Exception):
    """A request this server cannot read: answered with ``status``, then the
    connection is closed (what follows cannot be framed)."""

    def __init__(self, status: str, text: bytes) -> None:
        super().__init__(status)
        self.status, self.text = status, text


class Request:
    """A request head, parsed: what the reply needs, and how its body is
    framed (a length, or chunks)."""

    __slots__ = ("body_length", "chunked", "head_end", "keep_alive", "method", "path", "version")

    def __init__(self, head: bytes, head_end: int) -> None:
        lines = head.split(b"\n")
        request_line = lines[0].split()
        if len(request_line) != 3 or request_line[2] not in (b"HTTP/1.0", b"HTTP/1.1"):
            raise BadRequest("400 Bad Request", b"bad request line\n")
        self.method, target, self.version = request_line
        self.path = target.decode("latin-1").split("?", 1)[0]
        self.head_end = head_end
        self.body_length = 0
        self.chunked = False
        connection = b""
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                continue
            name = name.strip().lower()
            if name == b"content-length":
                value = value.strip()
                if not value.isdigit():
                    raise BadRequest("400 Bad Request", b"bad Content-Length\n")
                self.body_length = int(value)
            elif name == b"transfer-encoding":
                if value.strip().lower() != b"chunked":
                    raise BadRequest("501 Not Implemented", b"only chunked is understood\n")
                self.chunked = True
            elif name == b"connection":
                connection = value.strip().lower()
        if self.version == b"HTTP/1.1":
            self.keep_alive = b"close" not in connection
        else:
            self.keep_alive = b"keep-alive" in connection

    def end(self, buffer: bytes) -> int:
        """Where the request ends in ``buffer`` (which starts with its
        head), or -1 while its body is still on its way."""
        if not self.chunked:
            end = self.head_end + self.body_length
            return end if len(buffer) >= end else -1
        position = self.head_end
        while True:
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                return -1
            size_text = buffer[position:line_end].split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BadRequest("400 Bad Request", b"bad chunk size\n") from None
            if size == 0:  # the last chunk: an empty line after any trailers
                if buffer.startswith(b"\r\n", line_end + 2):
                    return line_end + 4
                trailers_end = buffer.find(b"\r\n\r\n", line_end + 2)
                return trailers_end + 4 if trailers_end >= 0 else -1
            position = line_end + 2 + size + 2
            if len(buffer) < position:
                return -1


class HTTPConnection(asyncio.Protocol):
    """HTTP/1.1 with persistent connections, as Go's net/http: requests are
    answered one after the other (pipelined ones too) until the client says
    ``Connection: close`` (HTTP/1.0 clients by default), the connection has
    been idle for ``IDLE_TIMEOUT``, or the generation drains, whereupon the
    next reply says ``Connection: close`` and ends it."""

    __slots__ = (
        "buffer",
        "closing",
        "eof",
        "replies",
        "replying",
        "request",
        "timer",
        "transport",
    )

    def __init__(self, replies: Replies) -> None:
        self.replies = replies
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.request: Request | None = None  # the head read, its body still coming
        self.replying = False  # /slow's pause: what arrives waits for the reply to end
        self.closing = False  # the last reply is written
        self.eof = False  # the client has closed its side
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.replies.wait_for_request(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # lingering after the last reply: dropped unread
        self.buffer = self.buffer + data if self.buffer else data
        if not self.replying:
            self.next_requests()

    def next_requests(self) -> None:
        """Answer every complete request in the buffer, in order."""
        while self.buffer and not self.replying and not self.closing and not self.eof:
            try:
                end = self.read_request()
            except BadRequest as bad:
                self.request = None
                self.reply(
                    b"HTTP/1.1", bad.status, bad.text, b"", len(bad.text), False, linger=True
                )
                return
            if end < 0:
                return
            request, self.request = self.request, None
            assert request is not None
            self.buffer = self.buffer[end:]
            page = self.replies.pages.get(request.path)
            # From the drain on, each reply ends its connection, at a moment
            # the client knows of (see asyncio_servers).
            keep_alive = request.keep_alive and not self.replies.draining
            body, rest = page if page is not None else (b"not found\n", b"")
            length = len(body) + len(rest)
            if request.method == b"HEAD":
                body, rest = b"", b""  # the head says the length of what a GET gets
            self.reply(
                request.version,
                "200 OK" if page is not None else "404 Not Found",
                body,
                rest,
                length,
                keep_alive,
                linger=request.keep_alive and not keep_alive,
            )

    def read_request(self) -> int:
        """Where the first request in the buffer ends, or -1 if it is not
        complete yet."""
        buffer = self.buffer
        if self.request is None:
            end = buffer.find(b"\r\n\r\n")
            head_end = end + 4
            if end < 0:
                end = buffer.find(b"\n\n")
                head_end = end + 2
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    raise BadRequest("431 Request Header Fields Too Large", b"head too large\n")
                return -1
            self.request = Request(buffer[:end], head_end)
        return self.request.end(buffer)

    def reply(
        self,
        version: bytes,
        status: str,
        body: bytes,
        rest: bytes,
        length: int,
        keep_alive: bool,
        linger: bool,
    ) -> None:
        """Write a reply (``rest`` after /slow's pause), then wait for the
        next request or close; ``linger`` when the client did not ask for
        the close, so that what it still sends meets no reset."""
        assert self.transport is not None
        self.replies.waiting.pop(self, None)
        if keep_alive:
            connection = b"Connection: keep-alive\r\n" if version == b"HTTP/1.0" else b""
        else:
            connection = b"Connection: close\r\n"
        self.transport.write(self.replies.head(version, status, length, connection) + body)
        if rest:
            self.replying = True
            self.timer = self.replies.loop.call_later(
                SLOW_PAUSE, self.finish, rest, keep_alive, linger
            )
        else:
            self.done(keep_alive, linger)

    def finish(self, rest: bytes, keep_alive: bool, linger: bool) -> None:
        assert self.transport is not None
        self.timer = None
        self.replying = False
        self.transport.write(rest)
        self.done(keep_alive and not self.eof, linger)
        self.next_requests()  # what was pipelined meanwhile

    def done(self, keep_alive: bool, linger: bool) -> None:
        assert self.transport is not None
        if keep_alive:
            self.replies.wait_for_request(self)  # also for a pipelined request still coming
            return
        self.closing = True
        if linger and not self.eof and self.transport.can_write_eof():
            # FIN first; what still comes is dropped; closed when the client
            # closes too, or after LINGER_SECONDS.
            self.transport.write_eof()
            self.timer = self.replies.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()

    def eof_received(self) -> bool:
        """The client will send no more: a reply being written still goes
        out (the transport stays half open), then the connection ends."""
        self.eof = True
        return self.replying

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
    """One process answering on the sockets.  The first one (``children``
    names the others) tells the superdaemon when it is ready, passes the stop
    signal on and reports the generation's outcome."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # a stop during boot arrives now
    replies = Replies(loop, os.environ.get("EXAMPLE_APP_MESSAGE", "Hello"))
    servers = await listener.start_asyncio_protocol_servers(lambda: HTTPConnection(replies))
    replies.servers = servers
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


def processes() -> int:
    value = os.environ.get("EXAMPLE_APP_PROCESSES", "") or "1"
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"EXAMPLE_APP_PROCESSES must be a whole number from 1, not {value!r}")
    return int(value)


def fork_sibling() -> int:
    """A child that answers like its parent and ends with it."""
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
    os._exit(asyncio_servers.run(serve([])))


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
    children = [fork_sibling() for _ in range(count - 1)]
    return asyncio_servers.run(serve(children))


if __name__ == "__main__":
    sys.exit(main())
