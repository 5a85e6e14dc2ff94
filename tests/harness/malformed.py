"""Requests a strict HTTP/1.1 server must refuse (RFC 9112, RFC 9110), each
with the status the example app answers, and valid ones as controls: the
one table the parser's tests (``inprocess/test_example_app_requests.py``)
and the smuggling tests on a live app (``processes/test_smuggling.py``)
both go through.  Every case is a whole request; the tests send a second,
valid one behind it, which must never be answered."""

from __future__ import annotations

from typing import NamedTuple

HOST = b"Host: example.test\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\n" + HOST + b"\r\n"
MAX_BODY = 1000  # the EXAMPLE_APP_MAX_BODY the tests set


class Case(NamedTuple):
    name: str
    request: bytes
    status: int


def _post(fields: bytes, body: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    return b"POST / " + version + b"\r\n" + HOST + fields + b"\r\n" + body


def _chunked(body: bytes) -> bytes:
    return _post(b"Transfer-Encoding: chunked\r\n", body)


def _get(fields: bytes, line: bytes = b"GET / HTTP/1.1") -> bytes:
    return line + b"\r\n" + fields + b"\r\n"


REFUSED = [
    # Both framings: whichever a proxy picked, the other reading differs.
    Case(
        "cl-then-te",
        _post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        400,
    ),
    Case(
        "te-then-cl",
        _post(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n"),
        400,
    ),
    Case(
        "cl-and-te-gzip-chunked",
        _post(b"Content-Length: 5\r\nTransfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"),
        400,
    ),
    # Transfer-Encoding: chunked last and once, or nothing can be framed.
    Case("te-gzip-chunked", _post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"), 501),
    Case(
        "te-gzip-line-then-chunked-line",
        _post(b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        501,
    ),
    Case("te-chunked-gzip", _post(b"Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n"), 400),
    Case("te-gzip", _post(b"Transfer-Encoding: gzip\r\n", b"0\r\n\r\n"), 400),
    Case("te-identity", _post(b"Transfer-Encoding: identity\r\n", b"0\r\n\r\n"), 400),
    Case("te-chunked-twice", _post(b"Transfer-Encoding: chunked, chunked\r\n", b"0\r\n\r\n"), 400),
    Case("te-xchunked", _post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"), 400),
    Case(
        "te-chunked-with-parameter", _post(b"Transfer-Encoding: chunked;q=1\r\n", b"0\r\n\r\n"), 400
    ),
    Case("te-empty", _post(b"Transfer-Encoding: \r\n", b"0\r\n\r\n"), 400),
    Case("te-quoted", _post(b'Transfer-Encoding: "chunked"\r\n', b"0\r\n\r\n"), 400),
    Case("te-in-http10", _post(b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n", b"HTTP/1.0"), 400),
    Case("te-space-before-colon", _post(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"), 400),
    Case("te-obs-fold", _post(b"Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n"), 400),
    Case("te-vertical-tab", _post(b"Transfer-Encoding:\x0bchunked\r\n", b"0\r\n\r\n"), 400),
    # Content-Length: digits, and one length however often it is said.
    Case("cl-space-before-colon", _post(b"Content-Length : 5\r\n", b"hello"), 400),
    Case("cl-differ", _post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"), 400),
    Case("cl-list-differ", _post(b"Content-Length: 5, 6\r\n", b"hello!"), 400),
    Case(
        "cl-same-digits-differ",
        _post(b"Content-Length: 5\r\nContent-Length: 05\r\n", b"hello"),
        400,
    ),
    Case("cl-plus", _post(b"Content-Length: +5\r\n", b"hello"), 400),
    Case("cl-minus", _post(b"Content-Length: -5\r\n", b"hello"), 400),
    Case("cl-hex", _post(b"Content-Length: 0x5\r\n", b"hello"), 400),
    Case("cl-underscore", _post(b"Content-Length: 0_5\r\n", b"hello"), 400),
    Case("cl-inner-space", _post(b"Content-Length: 0 5\r\n", b"hello"), 400),
    Case("cl-empty", _post(b"Content-Length:\r\n", b""), 400),
    Case("cl-empty-list-element", _post(b"Content-Length: 5,\r\n", b"hello"), 400),
    Case("cl-fullwidth-digit", _post(b"Content-Length: \xef\xbc\x95\r\n", b"hello"), 400),
    # Chunk sizes: HEXDIG only, then extensions, then CRLF (RFC 9112 7.1).
    Case("chunk-size-0x", _chunked(b"0x0\r\n\r\n"), 400),
    Case("chunk-size-minus", _chunked(b"-0\r\n\r\n"), 400),
    Case("chunk-size-plus", _chunked(b"+1\r\nx\r\n0\r\n\r\n"), 400),
    Case("chunk-size-underscore", _chunked(b"1_0\r\n0123456789abcdef\r\n0\r\n\r\n"), 400),
    Case("chunk-size-leading-space", _chunked(b" 1\r\nx\r\n0\r\n\r\n"), 400),
    Case("chunk-size-trailing-space", _chunked(b"1 \r\nx\r\n0\r\n\r\n"), 400),
    Case("chunk-size-empty", _chunked(b"\r\nx\r\n0\r\n\r\n"), 400),
    Case("chunk-size-not-hex", _chunked(b"g\r\nx\r\n0\r\n\r\n"), 400),
    Case("chunk-extension-without-name", _chunked(b"1;\r\nx\r\n0\r\n\r\n"), 400),
    Case("chunk-extension-bad-value", _chunked(b"1;a=b c\r\nx\r\n0\r\n\r\n"), 400),
    Case("chunk-size-bare-lf", _chunked(b"1\nx\r\n0\r\n\r\n"), 400),
    Case("chunk-data-longer-than-size", _chunked(b"1\r\nxx\r\n0\r\n\r\n"), 400),
    Case("chunk-data-bare-lf", _chunked(b"1\r\nx\n0\r\n\r\n"), 400),
    Case("last-chunk-bare-lf", _chunked(b"0\n\n"), 400),
    Case("trailer-obs-fold", _chunked(b"0\r\nX-T: a\r\n b\r\n\r\n"), 400),
    Case("trailer-without-colon", _chunked(b"0\r\nX-T a\r\n\r\n"), 400),
    # Field lines: name, colon, value; no folding, no controls.
    Case("obs-fold", _get(HOST + b"X-A: a\r\n b\r\n"), 400),
    Case("obs-fold-tab", _get(HOST + b"X-A: a\r\n\tb\r\n"), 400),
    Case("whitespace-before-first-field", _get(b" X-A: a\r\n" + HOST), 400),
    Case("field-without-colon", _get(HOST + b"X-A a\r\n"), 400),
    Case("space-before-colon", _get(HOST + b"X-A : a\r\n"), 400),
    Case("tab-before-colon", _get(HOST + b"X-A\t: a\r\n"), 400),
    Case("empty-field-name", _get(HOST + b": a\r\n"), 400),
    Case("nul-in-value", _get(HOST + b"X-A: a\x00b\r\n"), 400),
    Case("cr-in-value", _get(HOST + b"X-A: a\rb\r\n"), 400),
    Case("bare-lf-in-crlf-head", _get(HOST + b"X-A: a\nX-B: b\r\n"), 400),
    Case("bare-lf-ends-crlf-head", b"GET / HTTP/1.1\r\n" + HOST + b"X-A: a\n\r\n", 400),
    Case("ctl-in-value", _get(HOST + b"X-A: a\x01b\r\n"), 400),
    Case("del-in-value", _get(HOST + b"X-A: a\x7fb\r\n"), 400),
    Case("escape-in-value", _get(HOST + b"X-A: a\x1bb\r\n"), 400),
    Case("nul-in-name", _get(HOST + b"X-\x00A: a\r\n"), 400),
    Case("ctl-in-name", _get(HOST + b"X-\x01A: a\r\n"), 400),
    Case("non-token-in-name", _get(HOST + b"X(A): a\r\n"), 400),
    Case("cr-in-name", _get(HOST + b"X-\rA: a\r\n"), 400),
    # Host: one, and valid, in HTTP/1.1 (RFC 9112 3.2).
    Case("no-host", b"GET / HTTP/1.1\r\n\r\n", 400),
    Case("two-hosts", _get(HOST + HOST), 400),
    Case("two-hosts-in-http10", _get(HOST + HOST, b"GET / HTTP/1.0"), 400),
    Case("bad-host", _get(b"Host: a b\r\n"), 400),
    Case("host-with-path", _get(b"Host: a/b\r\n"), 400),
    Case("host-with-userinfo", _get(b"Host: u@a\r\n"), 400),
    # The request line: method SP request-target SP HTTP-version.
    Case("two-spaces", _get(HOST, b"GET  / HTTP/1.1"), 400),
    Case("trailing-space", _get(HOST, b"GET / HTTP/1.1 "), 400),
    Case("tab-separator", _get(HOST, b"GET\t/ HTTP/1.1"), 400),
    Case("lowercase-http", _get(HOST, b"GET / http/1.1"), 400),
    Case("version-two-digits", _get(HOST, b"GET / HTTP/1.10"), 400),
    Case("version-no-dot", _get(HOST, b"GET / HTTP/11"), 400),
    Case("no-version", _get(HOST, b"GET /"), 400),
    Case("no-method", _get(HOST, b" / HTTP/1.1"), 400),
    Case("nul-in-method", _get(HOST, b"G\x00T / HTTP/1.1"), 400),
    Case("space-in-target", _get(HOST, b"GET /a b HTTP/1.1"), 400),
    Case("ctl-in-target", _get(HOST, b"GET /a\x01b HTTP/1.1"), 400),
    Case("non-ascii-in-target", _get(HOST, b"GET /\xc3\xa9 HTTP/1.1"), 400),
    Case("bad-character-in-target", _get(HOST, b"GET /a|b HTTP/1.1"), 400),
    Case("bad-pct-encoding", _get(HOST, b"GET /%zz HTTP/1.1"), 400),
    Case("fragment-in-target", _get(HOST, b"GET /#a HTTP/1.1"), 400),
    Case("connect-origin-form", _get(HOST, b"CONNECT / HTTP/1.1"), 400),
    Case("asterisk-not-options", _get(HOST, b"GET * HTTP/1.1"), 400),
    Case("absolute-form-empty-host", _get(HOST, b"GET http:///x HTTP/1.1"), 400),
    Case("absolute-form-userinfo", _get(HOST, b"GET http://u@example.test/ HTTP/1.1"), 400),
    Case("bare-cr-line-end", b"GET / HTTP/1.1\r" + HOST + b"\r\n", 400),
    Case("http-2", _get(HOST, b"GET / HTTP/2.0"), 505),
    Case("http-0.9", _get(HOST, b"GET / HTTP/0.9"), 505),
    # Over EXAMPLE_APP_MAX_BODY.
    Case(
        "cl-over-limit",
        _post(b"Content-Length: %d\r\n" % (MAX_BODY + 1), b"x" * (MAX_BODY + 1)),
        413,
    ),
    Case("cl-huge", _post(b"Content-Length: 99999999999999999999999999\r\n"), 413),
    Case(
        "chunks-over-limit",
        _chunked(b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (MAX_BODY, b"x" * MAX_BODY, 1, b"x")),
        413,
    ),
    Case("chunk-size-huge", _chunked(b"ffffffffffffffffffffffff\r\nx\r\n0\r\n\r\n"), 413),
]

# Read and answered (HTTP/1.0 ones keep the connection, for the next).
ACCEPTED = [
    Case("get", _get(HOST), 200),
    Case("get-http10-no-host", b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 200),
    Case("content-length", _post(b"Content-Length: 5\r\n", b"hello"), 200),
    Case(
        "content-length-same-twice",
        _post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"),
        200,
    ),
    Case("content-length-same-list", _post(b"Content-Length: 5, 5\r\n", b"hello"), 200),
    Case("content-length-leading-zeros", _post(b"Content-Length: 005\r\n", b"hello"), 200),
    Case(
        "content-length-at-limit", _post(b"Content-Length: %d\r\n" % MAX_BODY, b"x" * MAX_BODY), 200
    ),
    Case("chunked", _chunked(b"5\r\nhello\r\n0\r\n\r\n"), 200),
    Case("chunked-uppercase-hex", _chunked(b"A\r\n0123456789\r\n0\r\n\r\n"), 200),
    Case("chunked-leading-zeros", _chunked(b"0005\r\nhello\r\n000\r\n\r\n"), 200),
    Case(
        "chunked-extensions",
        _chunked(b'5 ; a=b ;c; d = "x\\"y;z"\r\nhello\r\n0;last\r\n\r\n'),
        200,
    ),
    Case("chunked-trailers", _chunked(b"5\r\nhello\r\n0\r\nX-Sum: 1\r\nX-Other:\r\n\r\n"), 200),
    Case("chunked-case-insensitive", _post(b"transfer-encoding: Chunked\r\n", b"0\r\n\r\n"), 200),
    Case("chunked-at-limit", _chunked(b"%x\r\n%s\r\n0\r\n\r\n" % (MAX_BODY, b"x" * MAX_BODY)), 200),
    Case("te-empty-list-elements", _post(b"Transfer-Encoding: , chunked ,\r\n", b"0\r\n\r\n"), 200),
    Case("field-value-tab-and-obs-text", _get(HOST + b"X-A:\ta\tb \xe9\r\n"), 200),
    Case("field-value-empty", _get(HOST + b"X-A:\r\n"), 200),
    Case("leading-empty-lines", b"\r\n\r\n" + _get(HOST), 200),
    Case("bare-lf-head", b"GET / HTTP/1.0\nHost: example.test\nConnection: keep-alive\n\n", 200),
    Case("http-1.2-read-as-1.1", _get(HOST, b"GET / HTTP/1.2"), 200),
    Case("absolute-form", _get(HOST, b"GET http://example.test:8080/?q=1 HTTP/1.1"), 200),
    Case("absolute-form-no-path", _get(HOST, b"GET http://example.test HTTP/1.1"), 200),
    Case("query", _get(HOST, b"GET /?a=b&c=%20/?:@ HTTP/1.1"), 200),
    Case("ipv6-host", _get(b"Host: [::1]:8080\r\n"), 200),
    Case("empty-host", _get(b"Host:\r\n"), 200),
    Case("pct-encoded-path", _get(HOST, b"GET /%65ndpoint HTTP/1.1"), 404),
    Case("unknown-method", _get(HOST, b"PURGE /endpoint HTTP/1.1"), 200),
    Case("options-asterisk", _get(HOST, b"OPTIONS * HTTP/1.1"), 404),
    Case("connect-authority-form", _get(HOST, b"CONNECT example.test:443 HTTP/1.1"), 404),
    # Not authority-form (CONNECT's only): an absolute URI of scheme "example.test".
    Case("absolute-form-other-scheme", _get(HOST, b"GET example.test:80 HTTP/1.1"), 404),
]
