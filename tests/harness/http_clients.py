"""One HTTP request at a time, on TCP or a unix socket: what a test asks a
serving generation."""

from __future__ import annotations

import http.client
import socket


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def http_get(
    port: int,
    path: str = "/",
    timeout: float = 10.0,
    unix: str | None = None,
    host: str = "127.0.0.1",
) -> tuple[int, dict[str, str], str]:
    conn: http.client.HTTPConnection
    if unix is not None:
        conn = _UnixHTTPConnection(unix, timeout)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read().decode()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def generation_of(port: int) -> int:
    status, headers, _ = http_get(port)
    assert status == 200
    return int(headers["x-server-starter-generation"])
