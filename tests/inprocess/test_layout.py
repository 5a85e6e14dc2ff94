"""The package's layout is its architecture, checked from the imports:
the superdaemon (``server_starter.superdaemon``) and the worker side (every
other module, at the public paths apps use) share only
``server_starter.contract``, which imports neither; nothing outside the
superdaemon imports it (but ``server_starter.upgrade``, the path its
upgrade command is run by); and no two modules import each other, however
indirectly."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "server_starter"
# The superdaemon's command `python3 -m server_starter.upgrade`, where
# installed versions call it: a door into the superdaemon, not worker side.
SUPERDAEMON_DOOR = "server_starter.upgrade"


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
SUPERDAEMON = {name for name in MODULES if name.startswith("server_starter.superdaemon")}
WORKER_SIDE = set(MODULES) - SUPERDAEMON - {SUPERDAEMON_DOOR, "server_starter.contract"}


def imports(module: str) -> set[str]:
    """The package's modules ``module`` imports, anywhere in it (a function's
    lazy import counts too)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found.update(c for c in candidates if c in MODULES and c != module)
    return found


def test_the_check_sees_imports() -> None:
    serve = imports("server_starter.superdaemon.serve")
    assert {"server_starter.superdaemon.supervisor", "server_starter.contract"} <= serve
    # upgrade's check imports the package inside a function: that counts too.
    assert "server_starter.superdaemon" in imports("server_starter.superdaemon.upgrade")
    assert "server_starter.asyncio_servers" in imports("server_starter.listener")
    assert len(WORKER_SIDE) >= 8 and len(SUPERDAEMON) >= 15


def test_the_contract_imports_nothing_of_ours() -> None:
    assert imports("server_starter.contract") <= {"server_starter"}


@pytest.mark.parametrize("module", sorted(WORKER_SIDE))
def test_the_worker_side_never_imports_the_superdaemon(module: str) -> None:
    assert not imports(module) & SUPERDAEMON, imports(module) & SUPERDAEMON


def test_no_module_imports_itself_through_others() -> None:
    graph = {module: imports(module) - {"server_starter"} for module in MODULES}
    cycles = []
    for start in graph:
        seen: set[str] = set()
        stack: list[tuple[str, tuple[str, ...]]] = [(start, (start,))]
        while stack:
            module, path = stack.pop()
            for target in graph[module]:
                if target == start:
                    cycles.append(" -> ".join((*path, start)))
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, (*path, target)))
    assert cycles == []
