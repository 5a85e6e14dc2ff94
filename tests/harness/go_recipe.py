"""The Go recipe of docs/go.md, as the page shows it: its marked blocks, and
the program built with the page's own commands by Debian's Go, from the
standard library alone (no module proxy is reached)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from harness.support import README_BLOCK, ROOT

PAGE = ROOT / "docs" / "go.md"
GO = shutil.which("go")


def go_page_blocks() -> dict[str, str]:
    """docs/go.md's fenced blocks marked ``<!-- readme-test: NAME -->``, by name."""
    text = PAGE.read_text()
    blocks = {name: body for name, _, body in README_BLOCK.findall(text)}
    assert len(blocks) == text.count("<!-- readme-test:"), "a marker not followed by a block"
    return blocks


def build_go_recipe(directory: Path) -> Path:
    """Save the page's program as main.go in ``directory``, run the page's
    build commands there and return the binary they make."""
    blocks = go_page_blocks()
    (directory / "main.go").write_text(blocks["go-app"])
    env = {
        **os.environ,
        "GOCACHE": str(directory / "go-cache"),
        "GOPATH": str(directory / "go-path"),
        "GOPROXY": "off",  # the standard library only: nothing to fetch
        "GOTOOLCHAIN": "local",  # a newer Go must not download another toolchain
        "GOFLAGS": "",
    }
    built = subprocess.run(
        ["sh", "-ec", blocks["go-build"]],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    binary = directory / "myapp"
    assert binary.is_file(), "the build commands made no ./myapp"
    return binary
