"""The Go recipe of docs/go.md, as the page shows it: its marked blocks, and
the program built with the page's own commands by Debian's Go, from the
standard library alone (no module proxy is reached)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from harness.apps import readme_blocks
from harness.processes import run_shell

GO = shutil.which("go")


# The binary built from each program text: both layers' tests use one build
# in a session (a cold build of net/http takes 10-15 s on two cores).
_BUILT: dict[str, Path] = {}


def build_go_recipe(directory: Path) -> Path:
    """Save the page's program as main.go in ``directory``, run the page's
    build commands there and return the binary they make; the binary of an
    earlier call, in its own directory, if the program is the same."""
    blocks = readme_blocks()
    earlier = _BUILT.get(blocks["go-app"])
    if earlier is not None and earlier.is_file():
        return earlier
    (directory / "main.go").write_text(blocks["go-app"])
    env = {
        **os.environ,
        "GOCACHE": str(directory / "go-cache"),
        "GOPATH": str(directory / "go-path"),
        "GOPROXY": "off",  # the standard library only: nothing to fetch
        "GOTOOLCHAIN": "local",  # a newer Go must not download another toolchain
        "GOFLAGS": "",
    }
    built = run_shell(blocks["go-build"], directory, env, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    binary = directory / "myapp"
    assert binary.is_file(), "the build commands made no ./myapp"
    _BUILT[blocks["go-app"]] = binary
    return binary
