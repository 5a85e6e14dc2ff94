"""The reverse proxies users put in front of the app, run by the tests with
their own configuration on loopback ports: Debian's nginx and HAProxy, each
keeping a pool of keep-alive connections to the app, and each logging what
went wrong on its side, so that a retry that hid an error still counts.
Also wrk, the HTTP/1.1 keep-alive load through them."""

from __future__ import annotations

import abc
import contextlib
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.load import ab_figures
from harness.processes import free_port

NGINX = "/usr/sbin/nginx"
HAPROXY = "/usr/sbin/haproxy"
WRK = "/usr/bin/wrk"
BODY_BYTES = 512  # the size of the POSTs the measurements in the README used


def available() -> list[str]:
    """The tools missing on this machine (scripts/install-deps.sh installs them)."""
    return [path for path in (NGINX, HAPROXY, WRK) if shutil.which(path) is None]


@dataclass
class Proxy(abc.ABC):
    """A proxy process listening on ``port``, forwarding to the app's port."""

    name: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes]

    @abc.abstractmethod
    def errors(self) -> list[str]:
        """What the proxy logged as a failure on its side."""


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 2;
worker_rlimit_nofile 16384;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    # The pool of the README's "Behind nginx": HTTP/1.1 to the app, the
    # client's Connection header not passed on, idle connections kept.
    upstream app {{
        server 127.0.0.1:{app_port} max_fails=0;
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""

HAPROXY_CONF = """\
global
    maxconn 8000
    log stdout format raw local0
defaults
    mode http
    log global
    # One line per request: its status, termination state (two dashes when
    # nothing went wrong on either side) and the retries it took.
    log-format "status=%ST term=%ts retries=%rc %HM %HU"
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse {reuse}
frontend web
    bind 127.0.0.1:{port}
    default_backend app
backend app
{servers}"""
ONE_SERVER = "    server app 127.0.0.1:{app_port} maxconn 10000\n"


class Nginx(Proxy):
    def errors(self) -> list[str]:
        text = self.log.read_text() if self.log.exists() else ""
        return [line for line in text.splitlines() if "[error]" in line or "[crit]" in line]


class HAProxy(Proxy):
    LINE = re.compile(r"status=(-?\d+) term=(\S+) retries=(\+?\d+)")

    def errors(self) -> list[str]:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        bad = []
        for line in text.splitlines():
            if re.search(r"Server \S+ is DOWN", line):
                bad.append(line)  # a failed health check: its traffic went elsewhere
                continue
            match = self.LINE.search(line)
            if match is None:
                continue
            status, term, retries = match.groups()
            if term.startswith("C") and not status.startswith("5"):
                continue  # the client went away: wrk does at its end; wrk counts its own errors
            if not status.startswith("2") or term != "--" or retries.lstrip("+") != "0":
                bad.append(line)
        return bad


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the proxy did not start: {log.read_text()[-2000:]}")
        time.sleep(0.02)  # a proxy says nothing when it listens: a bounded poll


@contextlib.contextmanager
def nginx(app_port: int, workdir: Path) -> Iterator[Nginx]:
    directory = workdir / f"nginx-{app_port}"
    directory.mkdir(mode=0o755)
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=directory, app_port=app_port, port=port))
    log = directory / "error.log"
    proc = subprocess.Popen(
        [NGINX, "-c", str(conf), "-p", str(directory), "-e", str(log)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port, proc, log)
        yield Nginx("nginx", port, log, proc)
    finally:
        _stop(proc)


@contextlib.contextmanager
def haproxy(app_port: int, workdir: Path, reuse: str = "safe") -> Iterator[HAProxy]:
    servers = ONE_SERVER.format(app_port=app_port)
    with _haproxy(servers, workdir / f"haproxy-{app_port}-{reuse}", reuse) as proxy:
        yield proxy


@contextlib.contextmanager
def haproxy_balancing(backends: dict[str, str], balancing: str, workdir: Path) -> Iterator[HAProxy]:
    """HAProxy over several hosts (name: ADDRESS:PORT), keeping connections
    to each alive (http-reuse safe), with the ``balancing`` lines of a
    backend (its health checks: any host failing one is an error)."""
    servers = balancing + "".join(
        f"    server {name} {address} maxconn 10000\n" for name, address in backends.items()
    )
    with _haproxy(servers, workdir / "haproxy-balancing", "safe") as proxy:
        yield proxy


@contextlib.contextmanager
def _haproxy(servers: str, directory: Path, reuse: str) -> Iterator[HAProxy]:
    directory.mkdir()
    port = free_port()
    conf = directory / "haproxy.cfg"
    conf.write_text(HAPROXY_CONF.format(servers=servers, port=port, reuse=reuse))
    log = directory / "haproxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(conf)], stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    try:
        _wait_listening(port, proc, log)
        yield HAProxy(f"HAProxy (http-reuse {reuse})", port, log, proc)
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


WRK_SCRIPT = """\
-- Alternate 512-byte POSTs and GETs on every connection, and count them.
local post, get
local n = 0
init = function(args)
    -- Built here: wrk knows the URL's host and path only from now on.
    local body = string.rep("x", {body})
    post = wrk.format("POST", nil, {{["Content-Type"] = "text/plain"}}, body)
    get = wrk.format("GET", nil, {{}}, nil)
end
request = function()
    n = n + 1
    if n % 2 == 1 then return post end
    return get
end
"""


def _wrk_command(
    url: str, connections: int, seconds: int, workdir: Path, threads: int = 2
) -> list[str]:
    script = workdir / "mixed.lua"
    script.write_text(WRK_SCRIPT.format(body=BODY_BYTES))
    return [
        WRK,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
        url,
    ]


def run_wrk(url: str, connections: int, seconds: int, workdir: Path) -> dict[str, int | float]:
    """wrk (HTTP/1.1, each connection reused for request after request, as
    a browser or a pooling client does), alternating POSTs and GETs:
    requests done, socket errors by kind, and non-2xx/3xx replies."""
    result = subprocess.run(
        _wrk_command(url, connections, seconds, workdir),
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=False,
    )
    return wrk_figures(result.stdout + result.stderr)


@contextlib.contextmanager
def wrk_running(
    url: str, connections: int, workdir: Path, threads: int = 2
) -> Iterator[dict[str, int | float]]:
    """wrk as in ``run_wrk``, from entering the block to leaving it (wrk
    prints its figures when interrupted): the dict yielded holds them then."""
    figures: dict[str, int | float] = {}
    proc = subprocess.Popen(
        _wrk_command(url, connections, 3600, workdir, threads),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield figures
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    figures.update(wrk_figures(out))


def wrk_figures(out: str) -> dict[str, int | float]:
    done = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if done is None:
        raise AssertionError(f"wrk printed no result:\n{out}")
    connect, read, write, timeout = map(int, errors.groups()) if errors else (0, 0, 0, 0)
    return {
        "requests": int(done.group(1)),
        "connect": connect,
        "read": read,
        "write": write,
        "timeout": timeout,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "requests_per_second": float(rate.group(1)) if rate else 0.0,
    }


def run_ab_post(url: str, concurrency: int, seconds: int, workdir: Path) -> dict[str, int | float]:
    """ab (HTTP/1.0, a connection per request) sending 512-byte POSTs for
    ``seconds``: requests done, failed (ab's count, once per kind) and
    non-2xx replies (a proxy's 502s)."""
    body = workdir / "post-body"
    body.write_bytes(b"x" * BODY_BYTES)
    command = ["ab", "-r", "-q", "-s", "60", "-t", str(seconds), "-n", "10000000"]
    command += ["-c", str(concurrency), "-p", str(body), "-T", "text/plain", url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    figures = ab_figures(result.stdout + result.stderr)
    return {
        "requests": figures["requests"],
        "failed": figures["failed"],
        "non_2xx": figures["non_2xx"],
        "requests_per_second": figures["requests_per_second"],
    }
