"""The /proc reader both the bind error (holders) and the upgrade of every
running superdaemon (upgrade --all) rely on, on a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from server_starter.superdaemon import procfs


def test_another_process_as_proc_shows_it(tmp_path: Path) -> None:
    target = tmp_path / "held"
    command = [sys.executable, "-c", "print('running', flush=True); input()", "an argument"]
    with open(target, "w") as held:
        child = subprocess.Popen(
            command,
            env={"MARK": "a=b c", "EMPTY": ""},
            pass_fds=(held.fileno(),),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
    try:
        # Until then it may be half-way through exec, its cmdline still empty.
        assert child.stdout is not None and child.stdout.readline() == "running\n"
        assert child.pid in set(procfs.other_processes())
        assert os.getpid() not in set(procfs.other_processes())
        assert procfs.argv(child.pid) == command
        assert procfs.environ(child.pid) == {"MARK": "a=b c", "EMPTY": ""}
        assert str(target) in procfs.descriptor_targets(child.pid)
    finally:
        child.kill()
        child.communicate(timeout=10)
    # Gone: every read says nothing, none raises.
    assert procfs.argv(child.pid) == [] and procfs.environ(child.pid) == {}
    assert procfs.descriptor_targets(child.pid) == set()
