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
# gunicorn (Debian's, through the venv's system site-packages).
GUNICORN_UVICORN = gunicorn_uvicorn()
KEEP_ALIVE_SERVERS = keep_alive_servers()


README_BLOCK = re.compile(r"^<!-- readme-test: ([\w-]+) -->\n```(\w*)\n(.*?)^```$", re.M | re.S)


def readme_blocks() -> dict[str, str]:
    """The README's fenced blocks marked ``<!-- readme-test: NAME -->``, by
    name, verbatim: what the tests run as the README shows it."""
    text = (ROOT / "README.md").read_text()
    blocks = {name: body for name, _, body in README_BLOCK.findall(text)}
    assert len(blocks) == text.count("<!-- readme-test:"), "a marker not followed by a block"
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
