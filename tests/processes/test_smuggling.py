"""Request smuggling against a live example app under start_server: every
request of ``harness/malformed.py`` that cannot be framed one way only
(both Content-Length and Transfer-Encoding, a bad chunk size, obs-fold, a
control character in a field, ...) is sent over a raw socket with a second,
valid request behind it in the same write.  It gets exactly one reply, its
status (400, or 413, 501, 505), ``Connection: close``, and then the end of
the connection: the request behind it is never answered.  The valid ones
are the controls: both requests answered, in order."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import NamedTuple

import pytest

from harness.apps import EXAMPLE_APP
from harness.malformed import ACCEPTED, HOST, MAX_BODY, REFUSED, SMUGGLED, Case
from harness.processes import serving, worker_env

# Behind a control: valid too, and the last, so that the app closes after it.
LAST = b"GET /smuggled HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n"
WAIT = 5.0  # for the app to answer and close; it does both at once


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


def exchange(port: int, data: bytes) -> tuple[list[Reply], bool]:
    """``data`` sent in one write, then the replies read until the app
    closes the connection or ``WAIT`` is over; and whether it closed."""
    received = b""
    closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
        client.sendall(data)
        deadline = time.monotonic() + WAIT
        while (left := deadline - time.monotonic()) > 0:
            client.settimeout(left)
            try:
                chunk = client.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            received += chunk
    return replies(received), closed


def replies(data: bytes) -> list[Reply]:
    """The replies in ``data``, in order (each framed by its Content-Length)."""
    found = []
    while data:
        head, separator, data = data.partition(b"\r\n\r\n")
        assert separator, f"a reply cut short: {head!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        found.append(Reply(int(status_line.split()[1]), headers, data[:length]))
        data = data[length:]
    return found


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    env = worker_env(EXAMPLE_APP_MAX_BODY=str(MAX_BODY))
    with serving(EXAMPLE_APP, "--require-notify", env=env) as daemon:
        yield daemon.port


@pytest.mark.parametrize("case", REFUSED, ids=[case.name for case in REFUSED])
def test_a_request_that_cannot_be_framed_is_the_last(port: int, case: Case) -> None:
    answered, closed = exchange(port, case.request + SMUGGLED)
    assert [reply.status for reply in answered] == [case.status]
    (reply,) = answered
    assert reply.headers["connection"] == "close"
    assert reply.headers["x-server-starter-generation"] == "1"
    assert reply.body.endswith(b"\n") and b"Hello" not in reply.body
    assert closed, "the connection stayed open after the refusal"


@pytest.mark.parametrize("case", ACCEPTED, ids=[case.name for case in ACCEPTED])
def test_a_valid_request_and_the_next_are_both_answered(port: int, case: Case) -> None:
    answered, closed = exchange(port, case.request + LAST)
    assert [reply.status for reply in answered] == [case.status, 404]  # /smuggled is no page
    first, last = answered
    if case.status == 200:
        assert first.body.startswith(b"Hello from a HandleFunc")
    assert first.headers.get("connection") != "close"
    assert (last.headers["connection"], closed) == ("close", True)


def test_a_pipeline_of_valid_requests_is_answered_in_order(port: int) -> None:
    answered, closed = exchange(port, b"".join(case.request for case in ACCEPTED) + LAST)
    assert [reply.status for reply in answered] == [case.status for case in ACCEPTED] + [404]
    assert closed


def test_expect_100_continue_is_answered_before_the_body(port: int) -> None:
    head = b"POST /endpoint HTTP/1.1\r\n" + HOST + b"Expect: 100-continue\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
        client.sendall(head + b"Content-Length: 5\r\nConnection: close\r\n\r\n")
        assert client.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.sendall(b"hello")
        reader = client.makefile("rb")
        reply = replies(reader.read())
    assert [(r.status, r.body) for r in reply] == [(200, b"Hello from a HandleFunc #2!\n")]
    # Over the limit: the final answer at once, no 100.
    answered, closed = exchange(port, head + b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1))
    assert ([reply.status for reply in answered], closed) == ([413], True)
