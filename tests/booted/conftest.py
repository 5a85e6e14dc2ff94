"""What every booted test shares: its marks, the .debs (built once per
session), and the container the subject files run against in turn, one
release at a time.

The subject files (test_packaging.py ... test_removal.py) are one scenario
per release split by what they prove: the container is booted once per
release, and each file leaves it as the next expects it (packaging installs
what the others use, removal purges it).  test_metrics.py and test_fleet.py
boot containers of their own; the shared one is powered off before they run.

A new subject file: take the ``machine`` fixture and the helpers of
``harness.app_service``; it runs after the files in SUBJECTS and before
test_removal.py (with other unlisted files, in name order).  To run it
elsewhere, put its name in SUBJECTS where it belongs.  Leave the unit
``app`` as you found it (serving, the packages installed), or say in
SUBJECTS' order why the next file expects otherwise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest

from harness.debs import build_all
from harness.machine import SUITES, Machine, booted
from harness.processes import ROOT

HERE = Path(__file__).parent

# Marked here once for every test of the directory (no pytestmark to repeat);
# a file adds only what it alone needs.
BOOTED_MARKS = (
    pytest.mark.systemd,
    pytest.mark.timeout(900),  # the first test also builds the .debs and the root file systems
    pytest.mark.skipif(os.geteuid() != 0, reason="booting a container needs root"),
    pytest.mark.skipif(shutil.which("systemd-nspawn") is None, reason="systemd-container missing"),
)

# The order the subject files run in on each release's container.
SUBJECTS = (
    "test_packaging.py",
    "test_reloads.py",
    "test_stops_and_deaths.py",
    "test_upgrades.py",
    "test_worker_side.py",
    "test_template_instances.py",
)
LAST = "test_removal.py"


@pytest.fixture(scope="session")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("debs")
    build_all(out)
    return out


class SharedMachine:
    """The subject files' container: booted for a release at the first test
    that asks for it, powered off when the next test does not need it (a
    session fixture would keep it up until the session ends, beside the
    containers of test_metrics.py and test_fleet.py and under the other
    layers' tests)."""

    def __init__(self) -> None:
        self.release: str | None = None
        self.machine: Machine | None = None
        self.failure: Exception | None = None
        self.stack = contextlib.ExitStack()

    def get(self, release: str, debs: Path, tmp_path_factory: pytest.TempPathFactory) -> Machine:
        if release != self.release:
            self.power_off()
            self.release = release
            log = tmp_path_factory.mktemp(f"machine-{release}") / "console.log"
            binds = [(debs, "/debs"), (ROOT / "tests" / "apps", "/srv/apps")]
            try:
                self.machine = self.stack.enter_context(booted(SUITES[release], binds, log))
            except Exception as error:
                self.failure = error
                raise
        if self.machine is None:  # one failed boot per release, not one per test
            raise RuntimeError(f"the {release} container did not boot") from self.failure
        return self.machine

    def power_off(self) -> None:
        self.stack.close()
        self.release = self.machine = self.failure = None


SHARED = SharedMachine()


@pytest.fixture(scope="session", params=list(SUITES))
def release(request: pytest.FixtureRequest) -> str:
    """Session-scoped so that pytest runs every subject file's tests of one
    release, then those of the next (it groups tests by a session param)."""
    name: str = request.param
    return name


@pytest.fixture
def machine(release: str, debs: Path, tmp_path_factory: pytest.TempPathFactory) -> Machine:
    """The release's container, as the previous test left it."""
    return SHARED.get(release, debs, tmp_path_factory)


def release_of(item: pytest.Item | None) -> str | None:
    """The release of a test on the shared container, None for any other."""
    if not isinstance(item, pytest.Function) or not hasattr(item, "callspec"):
        return None
    release = item.callspec.params.get("release")
    return release if isinstance(release, str) else None


def subject_rank(item: pytest.Item) -> int:
    name = item.path.name
    if name == LAST:
        return len(SUBJECTS) + 1
    return SUBJECTS.index(name) if name in SUBJECTS else len(SUBJECTS)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """First, so that -m and -k see the marks: every test here marked, and
    the shared container's tests put together, by release, then subject, then
    file order (pytest's own grouping by the session param keeps this)."""
    for item in items:
        if item.path.is_relative_to(HERE):
            for mark in BOOTED_MARKS:
                item.add_marker(mark)
    positions = {id(item): index for index, item in enumerate(items)}
    suites = list(SUITES)
    shared = sorted(
        (item for item in items if release_of(item) is not None),
        key=lambda item: (
            suites.index(release_of(item) or ""),
            subject_rank(item),
            positions[id(item)],
        ),
    )
    if shared:
        first = min(positions[id(item)] for item in shared)
        others = [item for item in items if release_of(item) is None]
        items[:] = others[:first] + shared + others[first:]


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if release_of(nextitem) != SHARED.release:
        SHARED.power_off()


def pytest_sessionfinish() -> None:
    SHARED.power_off()
