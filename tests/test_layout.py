"""The package's two sides: the worker side (what apps import) never imports
the superdaemon's modules, so an app loads none of its code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "server_starter"
WORKER_SIDE = [
    "listener",
    "asyncio_servers",
    "uvicorn",
    "uvicorn_drain",
    "uvicorn_worker",
    "aiohttp",
    "gunicorn",
    "example_app",
]
SHARED = {"environment", "notify", "fds", "listener", "asyncio_servers", "uvicorn", "uvicorn_drain"}


def _imported_modules(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("server_starter."):
            found.add((node.module or "").split(".")[1])
    return found


@pytest.mark.parametrize("module", WORKER_SIDE)
def test_worker_side_imports_only_the_shared_contract(module: str) -> None:
    allowed = SHARED | set(WORKER_SIDE)
    assert _imported_modules(module) <= allowed, _imported_modules(module) - allowed


def test_the_check_sees_imports() -> None:
    assert {"supervisor", "host", "control"} <= _imported_modules("serve")
