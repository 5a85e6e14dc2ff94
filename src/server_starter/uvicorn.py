"""Run an ASGI app with uvicorn on the inherited sockets:

    start_server --port 8000 --require-notify -- \\
        python3 -m server_starter.uvicorn myapp:app [--app-dir DIR]

uvicorn serves every inherited stream socket (TCP or unix) and binds
nothing; ``READY=1`` goes to the superdaemon once uvicorn has started (the
app's lifespan start-up included).  SIGTERM stops accepting at once and
drains, bounded by ``--timeout-graceful-shutdown``, without losing a
connection the process has accepted (``DrainingServer``).

For gunicorn's ``-k``, see ``server_starter.uvicorn_worker``.  Needs uvicorn
(``pip install uvicorn``); HTTP is served by h11.

How the drain ends keep-alive connections, and why uvicorn's own shutdown
loses requests under a proxy: ``server_starter.uvicorn_drain``.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from types import FrameType
from typing import Any

from . import listener


def draining_classes() -> tuple[type[Any], type[Any]]:
    """The h11 protocol and the server that drain without losing a
    request, built on the installed uvicorn (imported only when asked for)."""
    from .uvicorn_drain import DrainingH11Protocol, DrainingServer

    return DrainingH11Protocol, DrainingServer


def _switch(meaning: str) -> dict[str, Any]:
    return {"action": argparse.BooleanOptionalAction, "default": True, "help": meaning}


# uvicorn's own options for an app behind a proxy, each passed to
# uvicorn.Config under its name, as uvicorn's command line would; its socket
# and process options have no meaning here.
UVICORN_OPTIONS: dict[str, dict[str, Any]] = {
    "factory": {"action": "store_true", "help": "the app is a factory of the app"},
    "root_path": {"default": "", "help": "the ASGI root_path (a proxy's prefix)"},
    "proxy_headers": _switch(
        "trust X-Forwarded-For/-Proto from --forwarded-allow-ips (default on, uvicorn's)"
    ),
    "forwarded_allow_ips": {
        "default": None,
        "metavar": "IPS",
        "help": "comma-separated addresses to trust proxy headers from "
        "(default $FORWARDED_ALLOW_IPS or 127.0.0.1)",
    },
    "limit_concurrency": {
        "type": int,
        "default": None,
        "metavar": "N",
        "help": "answer 503 beyond N connections and tasks at once",
    },
    "access_log": _switch("log each request"),
    "server_header": _switch("send Server: uvicorn"),
    "date_header": _switch("send Date:"),
    "lifespan": {"choices": ("auto", "on", "off"), "default": "auto"},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m server_starter.uvicorn")
    parser.add_argument("app", help="the ASGI app, as module:attribute")
    parser.add_argument("--app-dir", default=".", help="directory to import the app from")
    parser.add_argument(
        "--timeout-graceful-shutdown",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest drain on SIGTERM (default 30)",
    )
    parser.add_argument(
        "--timeout-keep-alive",
        type=int,
        default=5,
        metavar="SECONDS",
        help="close a connection idle this long, also while draining (default 5, uvicorn's)",
    )
    parser.add_argument("--log-level", default="info")
    for name, spec in UVICORN_OPTIONS.items():
        parser.add_argument("--" + name.replace("_", "-"), **spec)
    args = parser.parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        print(
            "server_starter.uvicorn: uvicorn is not installed (pip install uvicorn)",
            file=sys.stderr,
        )
        return 1
    try:
        protocol, server_class = draining_classes()
    except ImportError as err:  # uvicorn too old, or a part of it missing
        print(f"server_starter.uvicorn: {err}", file=sys.stderr)
        return 1
    try:
        sockets = [s for s in listener.listen_all() if s.type == socket.SOCK_STREAM]
    except (listener.NotUnderServerStarter, ValueError) as err:
        print(f"server_starter.uvicorn: {err}", file=sys.stderr)
        return 1
    if not sockets:
        print("server_starter.uvicorn: no stream socket in SERVER_STARTER_PORT", file=sys.stderr)
        return 1

    sys.path.insert(0, args.app_dir)
    config = uvicorn.Config(
        args.app,
        http=protocol,
        log_level=args.log_level,
        timeout_graceful_shutdown=int(args.timeout_graceful_shutdown),
        timeout_keep_alive=args.timeout_keep_alive,
        **{name: getattr(args, name) for name in UVICORN_OPTIONS},
    )
    server = server_class(config)
    server.on_started = lambda: listener.notify_ready(f"uvicorn {uvicorn.__version__} serving")

    def stop(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True  # uvicorn looks at it before it serves

    # uvicorn raises the stop signal again once it has drained, against the
    # handler it found: this one, so that a clean drain exits 0 (the
    # superdaemon would log "killed by SIGTERM"), and a stop that arrives
    # before uvicorn has its own handlers still stops it.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    server.run(sockets=sockets)
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
