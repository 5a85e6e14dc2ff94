"""The apps and workers the tests run: their command lines (the example
app, the adapters with their test apps, the reporting worker), what the
reporting worker writes, and the README's blocks run as written."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from harness.processes import ROOT

APPS = ROOT / "tests" / "apps"
EXAMPLE_APP = [sys.executable, "-m", "server_starter.example_app"]
REPORTER = [sys.executable, str(ROOT / "tests" / "workers" / "reporter.py")]
# Debian's own interpreter, with Debian's aiohttp (3.8 on bookworm); the
# venv's python has PyPI's newest.
DEBIAN_PYTHON = "/usr/bin/python3"


def uvicorn_app(python: str = sys.executable, apps: Path | str = APPS) -> list[str]:
    """The ASGI test app under the uvicorn adapter."""
    return [
        python,
        "-m",
        "server_starter.uvicorn",
        "asgi_app:app",
        f"--app-dir={apps}",
        "--log-level=warning",
    ]


def gunicorn_argv(python: str, *args: str, app: str = "wsgi_app:app") -> list[str]:
    """gunicorn as a generation (server_starter.gunicorn) running a test app
    (the WSGI one by default), with ``args`` before the app."""
    return [
        python,
        "-m",
        "gunicorn",
        "-c",
        "python:server_starter.gunicorn",
        "--chdir",
        str(APPS),
        "--graceful-timeout",
        "10",
        *args,
        app,
    ]


def gunicorn_uvicorn(python: str = sys.executable, apps: Path | str = APPS) -> list[str]:
    """gunicorn with our UvicornWorker, running the same ASGI test app."""
    return [
        python,
        "-m",
        "gunicorn",
        "-c",
        "python:server_starter.gunicorn",
        "-k",
        "server_starter.uvicorn_worker.UvicornWorker",
        "-w",
        "2",
        f"--chdir={apps}",
        "--log-level=warning",
        "asgi_app:app",
    ]


def aiohttp_app(python: str = sys.executable, apps: Path | str = APPS) -> list[str]:
    """The aiohttp test app under the aiohttp adapter."""
    return [python, "-m", "server_starter.aiohttp", "aiohttp_app:app", f"--app-dir={apps}"]


def keep_alive_servers(
    python: str = sys.executable, apps: Path | str = APPS
) -> dict[str, list[str]]:
    """Every server of ours that keeps connections alive, with its test app,
    run by ``python`` from ``apps``: each answers "/" with its generation in
    X-Server-Starter-Generation, and "/slow" with its head before its body."""
    return {
        "uvicorn adapter": uvicorn_app(python, apps),
        "gunicorn + UvicornWorker": gunicorn_uvicorn(python, apps),
        "example app": [python, "-m", "server_starter.example_app"],
        "aiohttp adapter": aiohttp_app(python, apps),
        "asyncio recipe": [python, f"{apps}/asyncio_http_app.py"],
    }


UVICORN_APP = uvicorn_app()
# The venv's gunicorn: PyPI's, which uvicorn-worker brings over Debian's 20.1.
GUNICORN_UVICORN = gunicorn_uvicorn()
KEEP_ALIVE_SERVERS = keep_alive_servers()


README_BLOCK = re.compile(r"^<!-- readme-test: ([\w-]+) -->\n```(\w*)\n(.*?)^```$", re.M | re.S)


def documentation_pages() -> list[Path]:
    """The README and the pages it links to."""
    docs = sorted((ROOT / "docs").glob("*.md"))
    return [ROOT / "README.md", *docs, ROOT / "ansible" / "README.md"]


def readme_blocks() -> dict[str, str]:
    """The fenced blocks marked ``<!-- readme-test: NAME -->`` in the README
    and its pages, by name, verbatim: what the tests run as the
    documentation shows it.  A name may mark the same block on two pages
    (a README section repeats its page's command), never two different
    blocks."""
    blocks: dict[str, str] = {}
    for page in documentation_pages():
        text = page.read_text()
        found = README_BLOCK.findall(text)
        markers = text.count("<!-- readme-test:")
        assert len(found) == markers, f"{page.name}: a marker without a block"
        for name, _, body in found:
            assert blocks.setdefault(name, body) == body, f"{name}: two different blocks"
    return blocks


def reports(directory: Path) -> list[dict[str, Any]]:
    """Worker reports, oldest generation first."""
    found = [json.loads(p.read_text()) for p in directory.glob("report-*.json")]
    return sorted(found, key=lambda r: int(r["env"].get("SERVER_STARTER_GENERATION", 0)))


def wait_for_reports(directory: Path, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    # Reports are files written by separate processes; a short bounded poll is
    # the only way to observe them without an extra channel.
    deadline = time.monotonic() + timeout
    while True:
        found = reports(directory)
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {count} worker reports in {directory}, got {found}")
        time.sleep(0.05)


def signals_received(directory: Path, pid: int) -> list[str]:
    path = directory / f"signals-{pid}.log"
    return path.read_text().split() if path.exists() else []
