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

Requests are read as RFC 9112 frames them, strictly (``RequestReader``,
``parse_head``): behind a proxy, a request the two read differently is a
request smuggled past the proxy.  Whatever cannot be read exactly one way
is answered ``400`` with ``Connection: close`` and the connection ends,
nothing after it read: both Content-Length and Transfer-Encoding; a
Transfer-Encoding whose last coding is not ``chunked`` (``chunked, gzip``,
``identity``), or chunked twice, or in HTTP/1.0; a Content-Length not all
digits, or repeated with other digits; a chunk size not all HEXDIG, or
extensions off RFC 9112 7.1.1's grammar; obs-fold; a field line without
its colon, with whitespace before it, or with a control character (NUL,
CR, a lone LF, any but HTAB) in its name or value; a bad request line or
target; a missing, repeated or bad Host.  Other closing answers: ``501``
for a coding before the last ``chunked`` (``gzip, chunked``: framed, but
not decoded here), ``413`` for a body over ``EXAMPLE_APP_MAX_BODY``,
``431`` for a head over 16 KiB, ``505`` for an HTTP major version other
than 1.  Accepted as RFC 9110 8.6 allows: a Content-Length repeated with
the same digits.  A head whose every line ends in a bare LF is read (RFC
9112 2.2 allows it), never one that mixes bare LFs and CRLFs.

Every response carries ``X-Server-Starter-Generation`` and
``X-Worker-Pid`` so a client can see which generation answered.

Configuration (environment, e.g. through ``--envdir``, so it can change
between reloads):

- ``EXAMPLE_APP_FAIL``: if set and not empty, exit 1 at start with this text
  (a broken deploy).
- ``EXAMPLE_APP_BOOT_SECONDS``: each serving process sleeps this long
  before answering (a slow boot).
- ``EXAMPLE_APP_MESSAGE``: replaces "Hello" in the replies.
- ``EXAMPLE_APP_PROCESSES``: how many processes serve the sockets (default
  1).  Above 1, the process start_server runs serves nothing: it is their
  parent (``Parent``), which replaces one that dies, gives up on a crash
  loop, and takes part in rolling reloads (contract.py).
- ``EXAMPLE_APP_MAX_BODY``: the largest request body read, in bytes
  (default 1048576, 1 MiB); a longer one is answered ``413`` and its
  connection closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import re
import selectors
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable
from typing import NamedTuple, NoReturn

from . import asyncio_servers, contract, listener

# A connection waiting this long for a request (its first, or the next on a
# kept-alive one) is closed, also during a drain: uvicorn's default.  A
# proxy's pool should close its idle connections sooner (README, "Behind
# nginx or HAProxy"), so that it is never the app that closes one under it.
IDLE_TIMEOUT = 5.0
LINGER_SECONDS = 2.0  # a client reads a last reply and closes within this
DRAIN_TIMEOUT = 60.0  # below start_server's --stop-timeout, which would SIGKILL us
SLOW_PAUSE = 0.1
MAX_HEAD = 16 * 1024  # a longer request head (or trailer section) is answered 431
MAX_CHUNK_LINE = 4 * 1024  # a chunk-size line with its extensions, at most
DEFAULT_MAX_BODY = 1024 * 1024
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
PR_SET_PDEATHSIG = 1
SERVER = f"server-starter-example Python/{sys.version.split()[0]}"


class AppState:
    """What every connection shares: the loop, the pages, the reply heads,
    the servers (whose ``draining`` ends keep-alive), the body limit, and
    the connections waiting for a request, whose idle timeout one timer
    sweeps."""

    def __init__(self, loop: asyncio.AbstractEventLoop, greeting: str, max_body: int) -> None:
        self.loop = loop
        self.servers: asyncio_servers.AsyncioServers | None = None
        self.max_body = max_body
        self.heads = ReplyHeads()
        # By path: the status, the body (before and after /slow's pause), its length.
        self.pages = {
            path: ("200 OK", body, rest, len(body) + len(rest))
            for path, body, rest in (
                (b"/", f"{greeting} from a HandleFunc #1!\n".encode(), b""),
                (b"/endpoint", f"{greeting} from a HandleFunc #2!\n".encode(), b""),
                (b"/slow", f"{greeting}, ".encode(), b"Python!\n"),
            )
        }
        # Connections waiting for a request (a first one, or the next on a
        # kept-alive connection), oldest first (dicts keep insertion
        # order): one timer sweeps them all, cheaper than a timer each.
        self.waiting: dict[HTTPConnection, float] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def wait_for_request(self, connection: HTTPConnection) -> None:
        """``connection`` waits from now on, the newest waiter."""
        self.waiting.pop(connection, None)  # to the end
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


class ReplyHeads:
    """Builds every reply but /slow's rest: the headers every reply carries
    are computed once, the Date once a second, and each reply once a second
    (formatting costs more than the rest of a reply)."""

    def __init__(self) -> None:
        self.common = (
            f"X-Server-Starter-Generation: {listener.generation() or 0}\r\n"
            f"X-Worker-Pid: {os.getpid()}\r\n"
            f"Server: {SERVER}\r\n"
        ).encode()
        self._date_second = -1
        self._date = b""
        self._heads: dict[tuple[bytes, str, int, bytes, bytes], bytes] = {}  # of this second

    def build(
        self, version: bytes, status: str, length: int, connection: bytes, body: bytes
    ) -> bytes:
        """The head, then ``body``."""
        now = int(time.time())
        if now != self._date_second:
            # The C locale's day and month names are HTTP's; email.utils
            # would cost every generation 9 ms more to import.
            date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))
            self._date_second, self._date = now, date.encode()
            self._heads.clear()
        key = (version, status, length, connection, body)
        reply = self._heads.get(key)
        if reply is None:
            reply = (
                b"%s %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
                b"Date: %s\r\n%s%s\r\n%s"
                % (version, status.encode(), length, self._date, connection, self.common, body)
            )
            if len(self._heads) < 64:  # the pages' few, not every error's
                self._heads[key] = reply
        return reply


NOT_FOUND = ("404 Not Found", b"not found\n", b"", 10)


class BadRequest(Exception):
    """A request this server cannot read: answered with ``status``, then the
    connection is closed (what follows cannot be framed)."""

    def __init__(self, status: str, text: bytes) -> None:
        super().__init__(status)
        self.status, self.text = status, text


BAD = "400 Bad Request"
TOO_LARGE = "413 Content Too Large"
HEAD_TOO_LARGE = "431 Request Header Fields Too Large"
HTTP_10, HTTP_11 = b"HTTP/1.0", b"HTTP/1.1"

# The grammar's pieces: RFC 9110 5.6.2's tchar (a token's characters); a
# field value's characters (field-vchar, SP, HTAB: RFC 9110 5.5), which
# leave out NUL, CR, LF and every other control; RFC 3986's path and query
# (pchar, "/", "?"), where "%" must start a pct-encoded octet; a
# quoted-string (RFC 9110 5.6.4).  Every repetition is followed by what it
# cannot match, so a match is linear in what it looks at.  Possessive
# quantifiers only on single characters: on groups they are broken before
# Python 3.11.5 (gh-106052, gh-100061), and Debian 12 has 3.11.2.
_TCHAR = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]"
_VALUE = rb"[\t\x20-\x7e\x80-\xff]"
_PCT = rb"%[0-9A-Fa-f]{2}"
_PATH_CHARS = rb"[-A-Za-z0-9._~!$&'()*+,;=:@/]"
_QUERY_CHARS = rb"[-A-Za-z0-9._~!$&'()*+,;=:@/?]"
_PATH = _PATH_CHARS + rb"*+(?:" + _PCT + _PATH_CHARS + rb"*+)*"
_QUERY = _QUERY_CHARS + rb"*+(?:" + _PCT + _QUERY_CHARS + rb"*+)*"
_QDTEXT = rb"[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]"
_QUOTED = rb'"' + _QDTEXT + rb"*+(?:\\[\t\x20-\x7e\x80-\xff]" + _QDTEXT + rb'*+)*"'
_TOKEN_OR_QUOTED = rb"(?:" + _TCHAR + rb"++|" + _QUOTED + rb")"
# uri-host (RFC 3986: an IP literal, or a reg-name, which covers IPv4).
_REG_NAME_CHARS = rb"[-A-Za-z0-9._~!$&'()*+,;=]"
_URI_HOST = (
    rb"(\[[-0-9A-Za-z._~!$&'()*+,;=:]++\]|"
    + _REG_NAME_CHARS
    + rb"*+(?:"
    + _PCT
    + _REG_NAME_CHARS
    + rb"*+)*)"
)


def _head(eol: bytes) -> re.Pattern[bytes]:
    """A whole request head, every line ending in ``eol``: the request line
    (the path of an origin-form target without "%" in group 2, any other
    target in group 3, the version in 4), the field lines (5), the empty
    line."""
    return re.compile(
        rb"("
        + _TCHAR
        + rb"++) (?:(/"
        + _PATH_CHARS
        + rb"*+)(?:\?"
        + _QUERY_CHARS
        + rb"*+)?|([\x21-\x7e]++)) (HTTP/[0-9]\.[0-9])"
        + eol
        + rb"((?:"
        + _TCHAR
        + rb"++:"
        + _VALUE
        + rb"*+"
        + eol
        + rb")*)"
        + eol
    )


_HEAD_CRLF = _head(b"\r\n")
# RFC 9112 2.2 lets a recipient take a bare LF for CRLF: a head is read
# when every one of its lines ends so (old clients, people typing), never
# when it mixes the two, which a proxy may read differently.
_HEAD_LF = _head(b"\n")
_HEAD_END = re.compile(rb"\n\r?\n")  # a bare-LF head's end, or where a CRLF one goes wrong
_REQUEST_LINE = re.compile(rb"[^ ]++ [^ ]++ HTTP/[0-9]\.[0-9]\r?\n")
_TRAILER_LINE = re.compile(_TCHAR + rb"++:" + _VALUE + rb"*+\r\n")
# RFC 9112 7.1: chunk-size (HEXDIG only: no sign, "0x", "_" or space),
# chunk extensions (7.1.1), CRLF.
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]++)(?:[ \t]*+;[ \t]*+"
    + _TCHAR
    + rb"++(?:[ \t]*+=[ \t]*+"
    + _TOKEN_OR_QUOTED
    + rb")?)*\r\n"
)
# transfer-coding (RFC 9112 7): its name, then any parameters.
_CODING = re.compile(
    rb"("
    + _TCHAR
    + rb"++)((?:[ \t]*+;[ \t]*+"
    + _TCHAR
    + rb"++[ \t]*+=[ \t]*+"
    + _TOKEN_OR_QUOTED
    + rb")*)"
)
_ORIGIN_FORM = re.compile(rb"(/" + _PATH + rb")(?:\?" + _QUERY + rb")?")
_HOST = re.compile(_URI_HOST + rb"(?::[0-9]*+)?")
_AUTHORITY_FORM = re.compile(_URI_HOST + rb":[0-9]*+")
# absolute-URI without userinfo, which RFC 9110 4.2.4 has http(s) treat as
# an error: "//" authority path-abempty (its path in group 3), or any path.
_ABSOLUTE_FORM = re.compile(
    rb"([A-Za-z][-A-Za-z0-9+.]*+):(?://"
    + _URI_HOST
    + rb"(?::[0-9]*+)?(/"
    + _PATH
    + rb")?|(?!//)"
    + _PATH
    + rb")(?:\?"
    + _QUERY
    + rb")?"
)


class Request(NamedTuple):
    """A request head, read: what the reply needs, and how its body is
    framed (a length, or chunks).  A tuple: the cheapest object to make."""

    method: bytes
    path: bytes
    version: bytes
    keep_alive: bool
    body_length: int
    chunked: bool
    expect_continue: bool


_new_request = tuple.__new__  # a NamedTuple's own constructor is a Python function


def parse_head(head: bytes, max_body: int) -> Request:
    """``head`` (from the request line to the empty line after the fields)
    read as RFC 9112 says, or BadRequest."""
    match = _HEAD_CRLF.fullmatch(head) or _HEAD_LF.fullmatch(head)
    if match is None:
        if _REQUEST_LINE.match(head) is None:
            raise BadRequest(BAD, b"bad request line\n")
        raise BadRequest(BAD, b"bad field line\n")
    method, path, target, version, fields = match.groups()
    if version != HTTP_11 and version != HTTP_10:
        if version[5] != 49:  # "1"
            raise BadRequest("505 HTTP Version Not Supported", b"HTTP/1.x only\n")
        version = HTTP_11  # 1.2 and on are read as 1.1
    if path is None:
        path = _other_target(method, target)
    elif method == b"CONNECT":
        raise BadRequest(BAD, b"bad request target\n")
    # The field lines are valid (a CR only ever before an LF, so splitlines
    # splits them as they end), their names lowered here: they are
    # case-insensitive, and so are the values looked at.
    host = None
    hosts = 0
    framing = None
    connection = expect = length_text = b""
    for line in fields.lower().splitlines():
        if line[0] not in _NAMES_LOOKED_AT:
            continue  # cheaper than partitioning every line
        name, _, value = line.partition(b":")
        if name == b"host":
            host = value
            hosts += 1
        elif name == b"connection":
            connection += b"," + value
        elif name == b"content-length" or name == b"transfer-encoding":
            if framing is None:
                framing = [line]
                length_text = value if name == b"content-length" else b""
            else:
                framing.append(line)
        elif name == b"expect":
            expect += b"," + value
    if host is None or hosts > 1:
        if hosts or version == HTTP_11:
            raise BadRequest(BAD, b"an HTTP/1.1 request needs one Host\n")
    elif host not in _valid_hosts:
        if _HOST.fullmatch(host.strip(b" \t")) is None:
            raise BadRequest(BAD, b"bad Host\n")
        if len(_valid_hosts) >= 64:  # the few names a server is reached by, not every one sent
            _valid_hosts.clear()
        _valid_hosts.add(host)
    length = 0
    chunked = False
    if framing is not None:
        digits = length_text.strip(b" \t")
        if len(framing) == 1 and digits.isdigit() and len(digits) <= 18:
            length = int(digits)
            if length > max_body:
                raise BadRequest(TOO_LARGE, b"body too large\n")
        else:
            length, chunked = _framing(framing, version, max_body)
    keep_alive = version == HTTP_11
    if connection:
        options = [option.strip(b" \t") for option in connection.split(b",")]
        keep_alive = b"close" not in options and (keep_alive or b"keep-alive" in options)
    expect_continue = False
    if expect and version == HTTP_11 and (length or chunked):
        # RFC 9110 10.1.1 (an HTTP/1.0 request's expectation is ignored).
        expect_continue = b"100-continue" in [m.strip(b" \t") for m in expect.split(b",")]
    return _new_request(
        Request, (method, path, version, keep_alive, length, chunked, expect_continue)
    )


# Host values found valid, as they came: most requests repeat one.
_valid_hosts: set[bytes] = set()
# The first letters of the fields parse_head looks at, lowered.
_NAMES_LOOKED_AT = frozenset(b"hcte")


def _framing(lines: list[bytes], version: bytes, max_body: int) -> tuple[int, bool]:
    """The body's length and whether it is chunked, from the head's
    Content-Length and Transfer-Encoding field lines (lowered), or
    BadRequest (RFC 9112 6)."""
    lengths: set[bytes] = set()
    codings: list[bytes] = []
    for line in lines:
        name, _, value = line.partition(b":")
        if name == b"content-length":
            lengths.update(element.strip(b" \t") for element in value.split(b","))
        else:
            codings.append(value)
    if codings:
        # RFC 9112 6.1 and 6.3: neither is safe to pick when both are there,
        # nor chunked in HTTP/1.0, nor anything but a last chunked.
        if lengths:
            raise BadRequest(BAD, b"both Content-Length and Transfer-Encoding\n")
        if version == HTTP_10:
            raise BadRequest(BAD, b"Transfer-Encoding in HTTP/1.0\n")
        _check_codings(codings)
        return 0, True
    # RFC 9110 8.6: the same digits repeated (as lines, or as a list: a
    # proxy's combining) are that length; anything else is an error.
    if len(lengths) != 1 or not (digits := lengths.pop()).isdigit():
        raise BadRequest(BAD, b"bad Content-Length\n")
    digits = digits.lstrip(b"0")
    # int() refuses thousands of digits: more than 18 are too large anyway.
    if len(digits) > 18 or int(digits or b"0") > max_body:
        raise BadRequest(TOO_LARGE, b"body too large\n")
    return int(digits or b"0"), False


def _elements(values: list[bytes]) -> list[bytes]:
    """A list field's elements (RFC 9110 5.6.1), empty ones left out."""
    return [e for value in values for e in (e.strip(b" \t") for e in value.split(b",")) if e]


def _other_target(method: bytes, target: bytes) -> bytes:
    """The path to route a target by when it is not a plain origin-form
    (RFC 9112 3.2), or BadRequest: a path with pct-encoded octets, CONNECT's
    host:port, OPTIONS's ``*``, or an absolute URI (a server must accept it,
    and routes an http(s) one by its path)."""
    if method == b"CONNECT":
        if _AUTHORITY_FORM.fullmatch(target) is not None:
            return target
    elif target.startswith(b"/"):
        match = _ORIGIN_FORM.fullmatch(target)
        if match is not None:
            return match[1]
    elif target == b"*":
        if method == b"OPTIONS":
            return target
    else:
        match = _ABSOLUTE_FORM.fullmatch(target)
        if match is not None:
            scheme, host, path = match.groups()
            if scheme.lower() not in (b"http", b"https"):
                return target
            if host:  # RFC 9110 4.2.1: an http(s) URI's host is never empty
                return path or b"/"
    raise BadRequest(BAD, b"bad request target\n")


def _check_codings(values: list[bytes]) -> None:
    """Transfer-Encoding's codings (RFC 9112 6.1, 7), or BadRequest unless
    ``chunked`` is the last and only there.  Only ``chunked`` is decoded:
    another before it is 501 (Not Implemented)."""
    codings = []
    for element in _elements(values):
        match = _CODING.fullmatch(element)
        if match is None:
            raise BadRequest(BAD, b"bad Transfer-Encoding\n")
        name, parameters = match.groups()
        codings.append(b"" if parameters else name)  # chunked takes no parameter
    if not codings or codings[-1] != b"chunked" or b"chunked" in codings[:-1]:
        raise BadRequest(BAD, b"chunked must be the last transfer coding, once\n")
    if len(codings) > 1:
        raise BadRequest("501 Not Implemented", b"only chunked is understood\n")


# What RequestReader waits for.
_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS = range(6)


class RequestReader:
    """One connection's requests, read from its bytes as they arrive
    (``feed``); ``next_request`` hands each out once its body has been read
    (and dropped).  Linear in what arrives: a body is skipped as it comes,
    never kept; a search for a line's end resumes where the last one
    stopped; and what waits for more is never more than a head, a
    chunk-size line or a trailer section (each bounded), the most a feed
    copies.  So many small chunks cost what one big one does.  ``scanned``
    counts the bytes searched and matched (a body's are skipped, not looked
    at), for the tests to hold that to."""

    __slots__ = (
        "_body",
        "_buffer",
        "_pos",
        "_remaining",
        "_request",
        "_scan",
        "_state",
        "_trailers",
        "continue_pending",
        "max_body",
        "scanned",
        "unread",
    )

    # Set when a body comes: most requests have none.
    _request: Request | None  # whose body is being read
    _remaining: int  # of the body, or of the chunk
    _body: int  # the chunks' sizes so far
    _trailers: int  # the trailer section's length so far

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self._buffer = b""  # what arrived, unread from _pos on
        self._pos = 0
        self._scan = 0  # where the search for a line's end resumes
        self._state = _HEAD
        self.continue_pending = False  # a head said Expect: 100-continue, its body is awaited
        self.unread = False  # bytes are there that next_request has not read
        self.scanned = 0

    def feed(self, data: bytes) -> None:
        self.unread = True
        if self._pos == len(self._buffer):  # most often: all read, nothing to copy
            self._buffer, self._pos, self._scan = data, 0, 0
        else:
            self._buffer = self._buffer[self._pos :] + data
            self._scan -= self._pos
            self._pos = 0

    def next_request(self) -> Request | None:
        """The next request, its body read; None until more arrives; or
        BadRequest, after which nothing more can be read."""
        buffer, pos = self._buffer, self._pos
        size = len(buffer)
        if pos == size:
            self.unread = False
            return None  # the next feed replaces the buffer
        state = self._state
        while pos < size:
            if state == _HEAD:
                if buffer[pos] == 13:  # RFC 9112 2.2: empty lines before a request line are ignored
                    while buffer.startswith(b"\r\n", pos):
                        pos += 2
                start = self._scan if self._scan > pos else pos
                end = buffer.find(b"\r\n\r\n", start) + 4
                if end < 4:
                    early = _HEAD_END.search(buffer, start)
                    if early is None:
                        self.scanned += 2 * (size - start)
                        if size - pos > MAX_HEAD:
                            raise BadRequest(HEAD_TOO_LARGE, b"head too large\n")
                        self._scan = size - 3  # the end may straddle what comes next
                        break
                    end = early.end()
                self.scanned += end - start + end - pos
                if end - pos > MAX_HEAD:
                    raise BadRequest(HEAD_TOO_LARGE, b"head too large\n")
                try:
                    request = parse_head(buffer[pos:end], self.max_body)
                except BadRequest:
                    # Unless a bare-LF head ends earlier, which is read alone.
                    early = _HEAD_END.search(buffer, pos, end - 1)
                    if early is None:
                        raise
                    end = early.end()
                    request = parse_head(buffer[pos:end], self.max_body)
                pos = end
                if request.body_length:
                    end += request.body_length
                    if end <= size:  # the body came with its head: read at once
                        self._pos = end
                        self.unread = end < size
                        return request
                    state, self._remaining = _BODY, request.body_length
                elif request.chunked:
                    state, self._body = _CHUNK_SIZE, 0
                else:
                    self._pos = pos
                    self.unread = pos < size
                    return request
                self._request = request
                self.continue_pending = request.expect_continue
            elif state in (_BODY, _CHUNK_DATA):
                if size - pos < self._remaining:
                    self._remaining -= size - pos
                    pos = size
                    break
                pos += self._remaining
                if state == _BODY:
                    return self._read(pos, size)
                state = _CHUNK_END
            elif state == _CHUNK_END:
                if not buffer.startswith(b"\r\n"[: size - pos], pos):
                    raise BadRequest(BAD, b"chunk data not followed by CRLF\n")
                if size - pos < 2:
                    break
                pos += 2
                state = _CHUNK_SIZE
            else:  # a chunk-size line, or a trailer field line
                start = max(self._scan, pos)
                end = buffer.find(b"\n", start) + 1
                if not end:
                    self.scanned += size - start
                    if state == _CHUNK_SIZE and size - pos > MAX_CHUNK_LINE:
                        raise BadRequest(BAD, b"chunk-size line too long\n")
                    if state == _TRAILERS and self._trailers + size - pos > MAX_HEAD:
                        raise BadRequest(HEAD_TOO_LARGE, b"trailers too large\n")
                    self._scan = size
                    break
                self.scanned += end - start + end - pos
                if state == _CHUNK_SIZE:
                    match = _CHUNK_LINE.fullmatch(buffer, pos, end)
                    if match is None or end - pos > MAX_CHUNK_LINE:
                        raise BadRequest(BAD, b"bad chunk-size line\n")
                    digits = match[1].lstrip(b"0")
                    pos = end
                    if not digits:  # the last chunk; then the trailer section
                        state, self._trailers = _TRAILERS, 0
                        continue
                    if len(digits) > 15 or self._body + int(digits, 16) > self.max_body:
                        raise BadRequest(TOO_LARGE, b"body too large\n")
                    self._remaining = int(digits, 16)
                    self._body += self._remaining
                    state = _CHUNK_DATA
                elif end - pos == 2 and buffer[pos] == 13:  # CRLF: the end of the request
                    return self._read(end, size)
                else:
                    # Trailer fields are dropped, but read as strictly as
                    # the head's (RFC 9112 7.1.2).
                    self._trailers += end - pos
                    if self._trailers > MAX_HEAD:
                        raise BadRequest(HEAD_TOO_LARGE, b"trailers too large\n")
                    if _TRAILER_LINE.fullmatch(buffer, pos, end) is None:
                        raise BadRequest(BAD, b"bad trailer field line\n")
                    pos = end
        # Waiting for more (the next feed drops what has been read).
        self._state = state
        self._pos = pos
        self.unread = pos < size
        return None

    def _read(self, end: int, size: int) -> Request | None:
        request, self._request = self._request, None
        self._pos, self._state = end, _HEAD
        self.continue_pending = False
        self.unread = end < size
        return request


class HTTPConnection(asyncio.Protocol):
    """HTTP/1.1 with persistent connections, as Go's net/http: requests are
    answered one after the other (pipelined ones too) until the client says
    ``Connection: close`` (HTTP/1.0 clients by default), the connection has
    been idle for ``IDLE_TIMEOUT``, or the generation drains, whereupon the
    next reply says ``Connection: close`` and ends it."""

    __slots__ = (
        "app",
        "closing",
        "eof",
        "reader",
        "replying",
        "timer",
        "transport",
    )

    def __init__(self, app: AppState) -> None:
        self.app = app
        self.transport: asyncio.Transport | None = None
        self.reader = RequestReader(app.max_body)
        self.replying = False  # /slow's pause: what arrives waits for the reply to end
        self.closing = False  # the last reply is written
        self.eof = False  # the client has closed its side
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's are not subclasses; no cast(), a call per connection.
        self.transport = transport  # type: ignore[assignment]
        self.app.wait_for_request(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # lingering after the last reply: dropped unread
        self.reader.feed(data)
        if not self.replying:
            self.next_requests()

    def next_requests(self) -> None:
        """Answer every complete request that has arrived, in order."""
        reader = self.reader
        while reader.unread and not self.replying and not self.closing and not self.eof:
            try:
                request = reader.next_request()
            except BadRequest as bad:
                # Nothing after it can be framed: the connection ends here.
                self.reply(HTTP_11, bad.status, bad.text, b"", len(bad.text), False, linger=True)
                return
            if request is None:
                if reader.continue_pending:  # RFC 9110 10.1.1: ask for the body
                    reader.continue_pending = False
                    assert self.transport is not None
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return
            status, body, rest, length = self.app.pages.get(request.path, NOT_FOUND)
            # From the drain on, each reply ends its connection, at a moment
            # the client knows of (see asyncio_servers).
            servers = self.app.servers
            keep_alive = request.keep_alive and not (servers is not None and servers.draining)
            if request.method == b"HEAD":
                body, rest = b"", b""  # the head says the length of what a GET gets
            self.reply(
                request.version,
                status,
                body,
                rest,
                length,
                keep_alive,
                request.keep_alive and not keep_alive,
            )

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
        if keep_alive:
            connection = b"Connection: keep-alive\r\n" if version == b"HTTP/1.0" else b""
        else:
            connection = b"Connection: close\r\n"
        self.transport.write(self.app.heads.build(version, status, length, connection, body))
        if rest:
            self.app.waiting.pop(self, None)  # not idle meanwhile
            self.replying = True
            self.timer = self.app.loop.call_later(SLOW_PAUSE, self.finish, rest, keep_alive, linger)
        elif keep_alive:  # done()'s most common case, without a call
            self.app.wait_for_request(self)
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
            self.app.wait_for_request(self)  # also for a pipelined request still coming
            return
        self.closing = True
        if linger and not self.eof and self.transport.can_write_eof():
            # FIN first; what still comes is dropped; closed when the client
            # closes too, or after LINGER_SECONDS (not by the idle sweep).
            self.app.waiting.pop(self, None)
            self.transport.write_eof()
            self.timer = self.app.loop.call_later(LINGER_SECONDS, self.transport.close)
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
        self.app.waiting.pop(self, None)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


async def serve(body_limit: int, ready: Callable[[], object]) -> int:
    """One process answering on the sockets, reading bodies up to
    ``body_limit`` bytes: ``ready()`` once it accepts; on SIGTERM (or
    SIGINT) it drains and returns 0."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # a stop during boot arrives now
    app = AppState(loop, os.environ.get("EXAMPLE_APP_MESSAGE", "Hello"), body_limit)
    servers = await listener.start_asyncio_protocol_servers(lambda: HTTPConnection(app))
    app.servers = servers
    if not servers:
        print("example app: no stream socket in SERVER_STARTER_PORT", file=sys.stderr)
        return 1
    ready()
    await stop.wait()
    listener.notify_stopping()
    cut = await servers.drain(DRAIN_TIMEOUT)
    if cut:
        print(f"example app: {cut} connections cut after {DRAIN_TIMEOUT:g} s", file=sys.stderr)
    return 0


def serve_process(body_limit: int, boot: float, ready: Callable[[], object]) -> int:
    """A serving process, the stop signals blocked: its boot (a stop
    signal during it ends it at once, exit 0), then ``serve()``."""
    if boot > 0 and signal.sigtimedwait(STOP_SIGNALS, boot) is not None:
        return 0
    return asyncio_servers.run(serve(body_limit, ready))


# -- EXAMPLE_APP_PROCESSES=N: a parent and its N serving processes ----------------

FAST_FAILURE_SECONDS = 1.0  # a process dying before it has served this long failed fast
GIVE_UP_AFTER = 5  # fast failures in a row, with no process serving that long between
FIRST_BACKOFF = 0.1  # seconds before replacing a fast failure, doubled for each in a row
KILL_AFTER = DRAIN_TIMEOUT + 5.0  # a process stopped and still running then is killed
PARENT_SIGNALS = {*STOP_SIGNALS, signal.SIGTTIN, signal.SIGTTOU}
READY_RECORD = struct.Struct("=i")  # a process's pid, once it serves: an atomic pipe write


class Child:
    """A serving process, as its parent sees it."""

    __slots__ = ("kill_at", "pid", "pidfd", "ready_at", "started_at")

    def __init__(self, pid: int, pidfd: int, started_at: float) -> None:
        self.pid, self.pidfd, self.started_at = pid, pidfd, started_at
        self.ready_at: float | None = None  # when it told the parent it serves
        self.kill_at: float | None = None  # asked to drain: SIGKILL if still running then

    @property
    def stopping(self) -> bool:
        return self.kill_at is not None


class Parent:
    """``EXAMPLE_APP_PROCESSES=N`` with N above 1: this process serves
    nothing; it runs N processes that do, as gunicorn's arbiter runs its
    workers, and takes part in rolling reloads (contract.py).

    - Each process writes its pid to a pipe shared by all of them once it
      accepts (an atomic 4-byte write): the parent counts it ready.
    - ``READY=1`` once as many as it runs (``SERVER_STARTER_START_WORKERS``
      during a rolling reload, else N) are ready; from then on
      ``X_SERVER_STARTER_WORKERS=READY/TARGET/N`` whenever a count changes
      (a process asked to stop counts as ready until it exits).
    - SIGTTIN: one more process.  SIGTTOU: one fewer, never fewer than
      one: the oldest is sent SIGTERM, its own graceful stop (it finishes
      every connection it accepted, then exits).
    - A process that dies unasked is replaced, alone.  One that dies before
      it has served ``FAST_FAILURE_SECONDS`` (or a fork that fails) is a
      fast failure: the next start waits for a pause that doubles from
      ``FIRST_BACKOFF``; at ``GIVE_UP_AFTER`` of those in a row (none
      started since the last one having served that long) the parent
      gives up: it stops the others as on SIGTERM, and exits 1.
    - SIGTERM or SIGINT: every process drains, then the parent exits 0
      (1 if one ended badly).

    Event-driven: one selector waits on the readiness pipe, each process's
    pidfd and the signals (``signal.set_wakeup_fd``), with a timeout only
    for what is due at a time (a paused replacement, a kill)."""

    def __init__(self, full: int, body_limit: int, boot: float) -> None:
        self.full = full
        self.target = contract.start_workers(full)
        self.body_limit, self.boot = body_limit, boot
        self.children: dict[int, Child] = {}  # oldest first
        self.stopping = False
        self.failed = False
        self.ready_sent = False
        self.reported = ""
        self.generation = listener.generation() or 0
        self.name = (
            f"example app (generation {self.generation})" if self.generation else "example app"
        )
        # Fast failures in a row: how many, the last one's time, and when
        # the next process may start (a pause after one).
        self.streak = 0
        self.last_failure = -math.inf
        self.hold_until = -math.inf
        self.replacing: list[int] = []  # the pids whose replacements are still to start
        # Only the parent speaks to the superdaemon.
        self.notify_socket = os.environ.pop("NOTIFY_SOCKET", None)
        self.selector = selectors.EpollSelector()
        self.ready_read, self.ready_write = os.pipe()
        os.set_blocking(self.ready_read, False)
        self.ready_buffer = b""
        self.selector.register(self.ready_read, selectors.EVENT_READ, self._read_ready)
        self.wakeup_read, self.wakeup_write = socket.socketpair()
        self.wakeup_read.setblocking(False)
        self.wakeup_write.setblocking(False)
        self.selector.register(self.wakeup_read, selectors.EVENT_READ, self._signalled)
        import ctypes  # here: a single process does without it

        self.libc = ctypes.CDLL(None, use_errno=True)

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, PARENT_SIGNALS)
        for signum in PARENT_SIGNALS:
            signal.signal(signum, _wake_only)
        signal.set_wakeup_fd(self.wakeup_write.fileno(), warn_on_full_buffer=False)
        self._steer()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, PARENT_SIGNALS)  # any held during the boot too
        while self.children or not self.stopping:
            events = self.selector.select(self._timeout())
            self._read_ready()  # first: what a process wrote before it died
            for key, _ in events:
                if key.data is not self._read_ready:
                    key.data()
            self._due()
            self._steer()
        return 1 if self.failed else 0

    # -- events -------------------------------------------------------------------

    def _read_ready(self) -> None:
        while True:
            try:
                data = os.read(self.ready_read, 4096)
            except BlockingIOError:
                return
            if not data:  # cannot be: the parent holds the write end
                return
            self.ready_buffer += data
            size = READY_RECORD.size
            while len(self.ready_buffer) >= size:
                (pid,) = READY_RECORD.unpack(self.ready_buffer[:size])
                self.ready_buffer = self.ready_buffer[size:]
                child = self.children.get(pid)
                if child is not None and child.ready_at is None:
                    child.ready_at = time.monotonic()
                    self.log(f"process {pid} ready ({self._counts()})")

    def _signalled(self) -> None:
        while True:
            try:
                data = self.wakeup_read.recv(4096)
            except BlockingIOError:
                return
            for signum in data:
                if signum in STOP_SIGNALS:
                    self._stop(f"{signal.Signals(signum).name}: draining")
                elif self.stopping:
                    continue
                elif signum == signal.SIGTTIN:
                    self.target += 1
                    self.log(f"SIGTTIN: one more process ({self.target} of {self.full})")
                elif signum == signal.SIGTTOU and self.target > 1:
                    self.target -= 1
                    self.log(f"SIGTTOU: one process fewer ({self.target} of {self.full})")
                elif signum == signal.SIGTTOU:
                    self.log("SIGTTOU: one process left, which stays")

    def _exited(self, pid: int) -> None:
        child = self.children.pop(pid)
        self.selector.unregister(child.pidfd)
        os.close(child.pidfd)
        _, status = os.waitpid(pid, 0)
        how = describe_status(status)
        if child.stopping or self.stopping:
            if self.stopping and status != 0:
                self.failed = True
            self.log(f"process {pid} stopped ({how})")
            return
        now = time.monotonic()
        served = None if child.ready_at is None else now - child.ready_at
        if served is not None and served >= FAST_FAILURE_SECONDS:
            self.log(f"process {pid} died ({how}) after serving {served:.1f} s; replacing it")
            self.replacing.append(pid)
            return
        when = "before serving" if served is None else f"after serving {served:.2f} s"
        if self._failed_fast(f"process {pid} died ({how}) {when}", "replacing it"):
            self.replacing.append(pid)

    def _failed_fast(self, what: str, retry: str) -> bool:
        """One more fast failure in a row: a pause before the next start,
        or at ``GIVE_UP_AFTER`` the end (then False)."""
        now = time.monotonic()
        self.streak += 1
        self.last_failure = now
        failures = plural(self.streak, "fast failure", "fast failures")
        if self.streak >= GIVE_UP_AFTER:
            self.log(f"{what}; {failures} in a row: giving up, stopping the others")
            self.failed = True
            self._stop()
            return False
        pause = FIRST_BACKOFF * 2 ** (self.streak - 1)
        self.hold_until = max(self.hold_until, now + pause)
        self.log(
            f"{what}; {retry} in {pause:g} s ({failures} in a row; at {GIVE_UP_AFTER} it gives up)"
        )
        return True

    # -- what is due at a time ----------------------------------------------------

    def _deadlines(self) -> list[float]:
        deadlines = [
            c.kill_at
            for c in self.children.values()
            if c.kill_at is not None and c.kill_at < math.inf  # not once killed
        ]
        if not self.stopping and self._active() < self.target:
            deadlines.append(self.hold_until)
        forgive = self._forgive_at()
        if forgive is not None:
            deadlines.append(forgive)
        return deadlines

    def _timeout(self) -> float | None:
        deadlines = self._deadlines()
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _forgive_at(self) -> float | None:
        """When the fast failures in a row are forgotten: once a process
        started after the last one has served ``FAST_FAILURE_SECONDS``."""
        proof = self._proof()
        return (
            None
            if proof is None or proof.ready_at is None
            else proof.ready_at + FAST_FAILURE_SECONDS
        )

    def _proof(self) -> Child | None:
        """The first process ready of those started since the last fast
        failure, while there is a streak to forget."""
        if not self.streak:
            return None
        started_since = (
            c
            for c in self.children.values()
            if c.ready_at is not None and c.started_at > self.last_failure and not c.stopping
        )
        return min(started_since, key=lambda c: c.ready_at or 0.0, default=None)

    def _due(self) -> None:
        now = time.monotonic()
        forgive = self._forgive_at()
        if forgive is not None and forgive <= now:
            proof = self._proof()
            assert proof is not None
            failures = plural(self.streak, "fast failure", "fast failures")
            self.log(
                f"process {proof.pid} has served {FAST_FAILURE_SECONDS:g} s: "
                f"{failures} in a row forgotten"
            )
            self.streak = 0
        for child in self.children.values():
            if child.kill_at is not None and child.kill_at <= now:
                self.log(
                    f"process {child.pid} still running {KILL_AFTER:g} s after its stop: killed"
                )
                child.kill_at = math.inf
                os.kill(child.pid, signal.SIGKILL)

    # -- steering -----------------------------------------------------------------

    def _active(self) -> int:
        return sum(not c.stopping for c in self.children.values())

    def _steer(self) -> None:
        """Start or stop processes until the target runs, then tell the
        superdaemon what changed."""
        if not self.stopping:
            active = [c for c in self.children.values() if not c.stopping]
            for oldest in active[: max(0, len(active) - self.target)]:
                self.log(f"stopping process {oldest.pid}, the oldest")
                self._stop_child(oldest)
            missing = self.target - len(active)
            if missing <= 0:
                self.replacing.clear()
            elif time.monotonic() >= self.hold_until:
                for _ in range(missing):
                    if not self._start():
                        break
        self._report()

    def _counts(self) -> str:
        ready = sum(c.ready_at is not None for c in self.children.values())
        return f"{ready}/{self.target}/{self.full}"

    def _report(self) -> None:
        counts = self._counts()
        message = ""
        if not self.ready_sent:
            if self.stopping:
                return
            ready = sum(c.ready_at is not None and not c.stopping for c in self.children.values())
            if ready < self.target:
                return
            self.ready_sent = True
            serving = plural(ready, "process", "processes")
            message = f"READY=1\nSTATUS=generation {self.generation} serving with {serving}\n"
        if counts != self.reported:
            self.reported = counts
            self._tell(f"{message}{contract.WORKERS_FIELD}={counts}")

    def log(self, message: str) -> None:
        print(f"{self.name}: {message}", file=sys.stderr)

    def _tell(self, message: str) -> None:
        if self.notify_socket:
            with contextlib.suppress(OSError):  # the superdaemon is gone, or stalled
                contract.notify(message, self.notify_socket, timeout=1.0)

    def _stop(self, why: str = "") -> None:
        if self.stopping:
            return
        self.stopping = True
        if why:
            self.log(f"{why} its {plural(len(self.children), 'process', 'processes')}")
        if self.ready_sent:
            self._tell("STOPPING=1")
        for child in self.children.values():
            if not child.stopping:
                self._stop_child(child)

    def _stop_child(self, child: Child) -> None:
        child.kill_at = time.monotonic() + KILL_AFTER
        os.kill(child.pid, signal.SIGTERM)  # exited and not yet reaped: a zombie takes it

    # -- a new process ------------------------------------------------------------

    def _start(self) -> bool:
        sys.stdout.flush()
        sys.stderr.flush()
        # Held in the child until its loop has handlers; never run there by
        # the parent's handlers, which would wake the parent.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, PARENT_SIGNALS)
        parent = os.getpid()
        try:
            pid = os.fork()
            if pid == 0:
                self._child(parent)
        except OSError as err:  # EAGAIN: out of tasks (pids.max, RLIMIT_NPROC)
            self._failed_fast(f"cannot start a process: {err.strerror or err}", "trying again")
            return False
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        child = Child(pid, os.pidfd_open(pid), time.monotonic())
        self.children[pid] = child
        self.selector.register(
            child.pidfd, selectors.EVENT_READ, functools.partial(self._exited, pid)
        )
        why = f", replacing {self.replacing.pop(0)}" if self.replacing else ""
        self.log(f"process {pid} started ({self._active()} of {self.target}{why})")
        return True

    def _child(self, parent: int) -> NoReturn:
        """In the new process: the parent's descriptors and signal handlers
        dropped, it serves, and ends with the parent."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for signum in PARENT_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            self.libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(0)
            os.close(self.selector.fileno())  # not its methods: the epoll set is shared
            for child in self.children.values():
                os.close(child.pidfd)
            os.close(self.ready_read)
            self.wakeup_read.close()
            self.wakeup_write.close()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, PARENT_SIGNALS - STOP_SIGNALS)
            code = serve_process(self.body_limit, self.boot, self._tell_parent)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _tell_parent(self) -> None:
        with contextlib.suppress(OSError):  # the parent is gone: PDEATHSIG stops us
            os.write(self.ready_write, READY_RECORD.pack(os.getpid()))


def _wake_only(signum: int, frame: object) -> None:
    """The parent's signal handler: the wakeup descriptor says which."""


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(signum).name}"
        except ValueError:
            return f"killed by signal {signum}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def plural(count: int, one: str, more: str) -> str:
    return f"{count} {one if count == 1 else more}"


def processes() -> int:
    value = os.environ.get("EXAMPLE_APP_PROCESSES", "") or "1"
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"EXAMPLE_APP_PROCESSES must be a whole number from 1, not {value!r}")
    return int(value)


def max_body() -> int:
    value = os.environ.get("EXAMPLE_APP_MAX_BODY", "") or str(DEFAULT_MAX_BODY)
    if not value.isdigit():
        raise ValueError(f"EXAMPLE_APP_MAX_BODY must be a whole number of bytes, not {value!r}")
    return int(value)


def main() -> int:
    failure = os.environ.get("EXAMPLE_APP_FAIL")
    if failure:
        print(f"example app: refusing to start: {failure}", file=sys.stderr)
        return 1
    try:
        listener.ports()
        count = processes()
        body_limit = max_body()
        boot = float(os.environ.get("EXAMPLE_APP_BOOT_SECONDS", "0") or 0)
    except (listener.NotUnderServerStarter, ValueError) as err:
        print(f"example app: {err}", file=sys.stderr)
        return 1
    # Held until the event loop (or the parent's selector) has its
    # handlers; a stop signal during the boot ends it at once.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    if count == 1:
        generation = listener.generation()
        return serve_process(
            body_limit, boot, lambda: listener.notify_ready(f"generation {generation} serving")
        )
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401  (imported once, before the processes are forked)
    return Parent(count, body_limit, boot).run()


if __name__ == "__main__":
    sys.exit(main())
