"""Figures worth reading in the test log."""

from __future__ import annotations

from typing import Any


def report(capsys: Any, line: str) -> None:
    """Figures worth reading in the CI log."""
    with capsys.disabled():
        print(f"\n    [measured] {line}")
