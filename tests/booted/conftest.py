"""What every booted test shares: the .debs, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.debs import build_all


@pytest.fixture(scope="session")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("debs")
    build_all(out)
    return out
