"""The .debs the booted tests install: this version, a newer one to upgrade
to in place, and one of 0.1.0's flat layout that installed hosts still run."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
from pathlib import Path

from harness.machine import SUITES, prepare
from harness.processes import ROOT

VERSION = subprocess.run(
    ["dpkg-parsechangelog", "-l", str(ROOT / "packaging/debian/changelog"), "-S", "Version"],
    capture_output=True,
    text=True,
    check=False,
).stdout.strip()
UPGRADE = f"{VERSION}+upgrade1"
# The last commit with 0.1.0's layout as released, every module in one
# folder: installed versions of it must upgrade in place to today's.
FLAT_LAYOUT_COMMIT = "d4593bc868f65070255699bf9a017f059c7f1256"
FLAT = f"{VERSION}~flat"  # sorts before VERSION


def build_debs(out: Path, version: str | None = None) -> list[Path]:
    """Build our .debs into ``out`` (the version in the changelog, unless given)."""
    result = subprocess.run(
        [str(ROOT / "scripts" / "build-deb.sh"), *([version] if version else [])],
        env={**os.environ, "DIST_DIR": str(out)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"building the packages failed:\n{result.stderr[-3000:]}")
    return sorted(out.glob(f"*_{version}_all.deb" if version else "*.deb"))


def build_all(out: Path) -> None:
    """Every version's .debs into ``out``, built while every release's root
    file system is made (the first run on a machine), in parallel."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        roots = pool.submit(prepare, SUITES.values())
        build_debs(out, VERSION)
        build_debs(out, UPGRADE)
        build_flat_layout_debs(out)
        roots.result()


def build_flat_layout_debs(out: Path) -> None:
    """The .debs of 0.1.0's layout, built from its commit in a worktree."""
    worktree = out / "flat-layout"
    git = ["git", "-C", str(ROOT)]
    added = subprocess.run(
        [*git, "worktree", "add", "--detach", str(worktree), FLAT_LAYOUT_COMMIT],
        capture_output=True,
        text=True,
        check=False,
    )
    assert added.returncode == 0, f"the flat layout's commit is needed: {added.stderr}"
    try:
        build = subprocess.run(
            [str(worktree / "scripts" / "build-deb.sh"), FLAT],
            env={**os.environ, "DIST_DIR": str(out)},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert build.returncode == 0, build.stderr[-3000:]
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(worktree)], check=False)


def deb(out: Path, package: str, version: str) -> Path:
    return out / f"{package}_{version}_all.deb"
