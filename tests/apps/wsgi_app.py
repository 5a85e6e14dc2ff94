"""A dependency-free WSGI app for the gunicorn tests.

Replies with its generation and pid; with WSGI_APP_BROKEN set it raises at
import (a broken deploy).  /slow takes 100 ms, /50ms 50 ms."""

import os
import time
from collections.abc import Iterator

if os.environ.get("WSGI_APP_BROKEN"):
    raise RuntimeError("WSGI_APP_BROKEN is set: this deploy is broken")

GENERATION = os.environ.get("SERVER_STARTER_GENERATION", "0")

# A big app's import: WSGI_APP_IMPORT_SECONDS of work, WSGI_APP_MEGABYTES held.
time.sleep(float(os.environ.get("WSGI_APP_IMPORT_SECONDS", "0")))
BALLAST = bytearray(int(os.environ.get("WSGI_APP_MEGABYTES", "0")) * 2**20)
for _page in range(0, len(BALLAST), 4096):
    BALLAST[_page] = 1  # touched: private memory, as an app's objects are

# A deploy that breaks midway: the first WSGI_APP_BOOTS_BEFORE_FAILING
# imports of each generation (counted in WSGI_APP_BOOTS_DIR) succeed; the
# next ones raise, or hang with WSGI_APP_FAILING_HANGS.
if os.environ.get("WSGI_APP_BOOTS_DIR"):
    _boots = os.path.join(os.environ["WSGI_APP_BOOTS_DIR"], f"generation-{GENERATION}")
    with open(_boots, "a") as _file:
        _file.write(f"{os.getpid()}\n")
    with open(_boots) as _file:
        _count = len(_file.readlines())
    if _count > int(os.environ.get("WSGI_APP_BOOTS_BEFORE_FAILING", "1")):
        if os.environ.get("WSGI_APP_FAILING_HANGS"):
            time.sleep(3600)
        raise RuntimeError(f"import {_count} of generation {GENERATION} fails, as told")

# The app is loaded in this process: an empty file named by its pid in
# WSGI_APP_LOADED_DIR (make bench MODE=memory tells the workers that hold
# the app from those still importing it).
if os.environ.get("WSGI_APP_LOADED_DIR"):
    with open(os.path.join(os.environ["WSGI_APP_LOADED_DIR"], str(os.getpid())), "w"):
        pass


def app(environ, start_response):  # type: ignore[no-untyped-def]
    if environ.get("PATH_INFO") == "/stream":  # its head and a first part, the rest 0.5 s later
        parts = [b"first part\n", b"second part\n"]
        length = str(sum(map(len, parts)))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", length)])
        return _paused(parts)
    if environ.get("PATH_INFO") == "/slow":
        time.sleep(0.1)
    elif environ.get("PATH_INFO") == "/50ms":
        time.sleep(0.05)
    elif environ.get("PATH_INFO") == "/echo":  # reads the body, answers after 20 ms
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        time.sleep(0.02)
    # Fixed width: ab counts a response of another length as failed.
    body = f"generation {GENERATION:>6}\n".encode()
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(body))),
            ("X-Server-Starter-Generation", GENERATION),
            ("X-Worker-Pid", str(os.getpid())),
        ],
    )
    return [body]


def _paused(parts: list[bytes]) -> Iterator[bytes]:
    yield parts[0]
    time.sleep(0.5)
    yield parts[1]
