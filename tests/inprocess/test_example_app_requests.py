"""The example app's request reader (``example_app.RequestReader``), as a
parser without sockets: RFC 9112's framing rules case by case (the table
in ``harness/malformed.py``, shared with ``processes/test_smuggling.py``),
the same answer however the bytes are split, linear in what arrives, and
regular expressions that Python 3.11.2 (Debian 12's) matches correctly."""

from __future__ import annotations

import importlib
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.malformed import ACCEPTED, MAX_BODY, REFUSED, SMUGGLED, Case
from server_starter import example_app
from server_starter.example_app import BadRequest, Request, RequestReader

PAGES = {b"/", b"/endpoint", b"/slow", b"/smuggled"}


def read(
    data: bytes, piece: int = 0, max_body: int = MAX_BODY
) -> tuple[list[Request], int | None, RequestReader]:
    """The requests read from ``data`` (fed whole, or ``piece`` bytes at a
    time), and the status of the refusal that stopped the reading, if any."""
    reader = RequestReader(max_body)
    requests: list[Request] = []
    pieces = [data[i : i + piece] for i in range(0, len(data), piece)] if piece else [data]
    try:
        for chunk in pieces:
            reader.feed(chunk)
            while (request := reader.next_request()) is not None:
                requests.append(request)
    except BadRequest as refusal:
        return requests, int(refusal.status.split()[0]), reader
    return requests, None, reader


@pytest.mark.parametrize("case", REFUSED, ids=[case.name for case in REFUSED])
@pytest.mark.parametrize("piece", [0, 1], ids=["whole", "byte-by-byte"])
def test_a_request_that_cannot_be_framed_is_refused_and_nothing_after_it_read(
    case: Case, piece: int
) -> None:
    requests, status, _ = read(case.request + SMUGGLED, piece)
    assert (requests, status) == ([], case.status)


@pytest.mark.parametrize("case", ACCEPTED, ids=[case.name for case in ACCEPTED])
@pytest.mark.parametrize("piece", [0, 1], ids=["whole", "byte-by-byte"])
def test_a_valid_request_is_read_and_the_next_one_after_it(case: Case, piece: int) -> None:
    requests, status, _ = read(case.request + SMUGGLED, piece)
    assert status is None
    assert [request.path for request in requests][1:] == [b"/smuggled"]
    assert (200 if requests[0].path in PAGES else 404) == case.status


def test_what_a_reply_needs() -> None:
    def first(head: bytes) -> Request:
        requests, status, _ = read(head)
        assert status is None
        return requests[0]

    host = b"Host: h\r\n"
    assert first(b"GET /endpoint?a=1 HTTP/1.1\r\n" + host + b"\r\n") == Request(
        b"GET", b"/endpoint", b"HTTP/1.1", True, 0, False, False
    )
    # Keep-alive: HTTP/1.1's default, HTTP/1.0's on request; "close" wins.
    for version, connection, keep_alive in [
        (b"1.1", b"", True),
        (b"1.1", b"Connection: close\r\n", False),
        (b"1.1", b"Connection: Upgrade\r\nConnection: CLOSE\r\n", False),
        (b"1.0", b"", False),
        (b"1.0", b"Connection: Keep-Alive\r\n", True),
        (b"1.0", b"Connection: keep-alive, close\r\n", False),
    ]:
        head = b"GET / HTTP/" + version + b"\r\n" + host + connection + b"\r\n"
        assert first(head).keep_alive is keep_alive, head
    assert first(b"HEAD / HTTP/1.2\r\n" + host + b"\r\n")[:3] == (b"HEAD", b"/", b"HTTP/1.1")
    assert first(b"GET https://h/endpoint HTTP/1.1\r\n" + host + b"\r\n").path == b"/endpoint"


def test_a_body_is_awaited_then_dropped() -> None:
    reader = RequestReader(MAX_BODY)
    reader.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n01234")
    assert reader.next_request() is None
    reader.feed(b"56789GET /endpoint HTTP/1.1\r\nHost: h\r\n\r\n")
    first, second = reader.next_request(), reader.next_request()
    assert first is not None and second is not None
    assert (first.body_length, second.path) == (10, b"/endpoint")
    assert (reader.next_request(), reader.unread) == (None, False)


def test_expect_100_continue_asks_for_a_body_still_to_come() -> None:
    head = b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\n"
    reader = RequestReader(MAX_BODY)
    reader.feed(head)
    assert (reader.next_request(), reader.continue_pending) == (None, True)
    reader.feed(b"ok")
    assert reader.next_request() is not None
    assert not reader.continue_pending
    # The body already there, or HTTP/1.0 (whose expectations are ignored): no 100.
    for data in (head + b"ok", head.replace(b"HTTP/1.1", b"HTTP/1.0")):
        reader = RequestReader(MAX_BODY)
        reader.feed(data)
        reader.next_request()
        assert not reader.continue_pending


def chunked_request(chunks: int) -> bytes:
    head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + b"1;e=v\r\nx\r\n" * chunks + b"0\r\nX-T: t\r\n\r\n" + SMUGGLED


@pytest.mark.parametrize("piece", [0, 1, 7, 4096], ids=lambda piece: f"piece={piece}")
def test_chunked_decoding_is_linear(piece: int) -> None:
    """Bytes looked at, counted by the reader: each a bounded number of
    times whatever the number of chunks and however they arrive (the old
    decoder searched its whole buffer again for every chunk)."""
    scanned = {}
    for chunks in (2_000, 4_000, 8_000):
        data = chunked_request(chunks)
        requests, status, reader = read(data, piece, max_body=len(data))
        assert (len(requests), status) == (2, None)
        assert reader.scanned <= 3 * len(data), (chunks, reader.scanned, len(data))
        scanned[chunks] = reader.scanned
    assert scanned[8_000] <= 2.1 * scanned[4_000] <= 4.41 * scanned[2_000]


def test_a_body_is_skipped_not_searched() -> None:
    data = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n" + b"\n" * 1000
    requests, status, reader = read(data, 10)
    assert (len(requests), status) == (1, None)
    assert reader.scanned < 200


# (head, body) pairs to split every way hypothesis thinks of: valid ones,
# refused ones, and a pipeline of both.
STREAMS = [case.request + SMUGGLED for case in ACCEPTED + REFUSED] + [
    b"".join(case.request for case in ACCEPTED),
    chunked_request(50),
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(STREAMS), st.lists(st.integers(min_value=1, max_value=64), max_size=50))
def test_the_same_reading_however_the_bytes_arrive(data: bytes, cuts: list[int]) -> None:
    whole = read(data)
    reader = RequestReader(MAX_BODY)
    requests: list[Request] = []
    status = None
    offset = 0
    pieces = []
    for cut in cuts:
        pieces.append(data[offset : offset + cut])
        offset += cut
    pieces.append(data[offset:])
    try:
        for chunk in pieces:
            if chunk:
                reader.feed(chunk)
            while (request := reader.next_request()) is not None:
                requests.append(request)
    except BadRequest as refusal:
        status = int(refusal.status.split()[0])
    assert (requests, status) == whole[:2]


def _walk(tree: Any) -> list[tuple[str, Any]]:
    """Every (operator name, argument) of a parsed pattern, nested ones too."""
    found = []
    for op, argument in tree:
        found.append((str(op), argument))
        stack = [argument]
        while stack:
            item = stack.pop()
            if type(item).__name__ == "SubPattern":
                found.extend(_walk(item))
            elif isinstance(item, list | tuple):
                stack.extend(item)
    return found


def test_possessive_quantifiers_only_on_single_characters() -> None:
    """Python before 3.11.5 matches a possessive group wrongly (gh-106052:
    ``(?:ab?c)*+`` matches "a"; gh-100061): on a parser's pattern, that is
    a request read that should have been refused."""
    parser: Any = importlib.import_module("re._parser")
    patterns = [value for value in vars(example_app).values() if isinstance(value, re.Pattern)]
    assert len(patterns) >= 10
    for pattern in patterns:
        for op, argument in _walk(parser.parse(pattern.pattern)):
            assert op != "ATOMIC_GROUP", pattern
            if op == "POSSESSIVE_REPEAT":
                (item,) = argument[2]
                assert str(item[0]) in ("IN", "LITERAL", "NOT_LITERAL", "ANY"), pattern
