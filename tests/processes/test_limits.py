"""The limits operators put on a service, hit during a reload's overlap of
two generations: memory (``MemoryMax=``: the kernel's OOM killer), tasks
(``TasksMax=``: fork's EAGAIN) and descriptors (``LimitNOFILE=``: EMFILE).
Each fails the reload with the reason, keeps the serving generation serving
and fails no request.  The limits are the kernel's own: the superdaemon runs
in a cgroup of the test's making (v1 or v2, as the machine has), or under a
lowered RLIMIT_NOFILE."""

from __future__ import annotations

import contextlib
import os
import resource
import shlex
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.http_clients import generation_of, http_get
from harness.load import Load
from harness.processes import START_SERVER, Daemon, free_port, restart, running, worker_env
from harness.reporting import report

CGROUP_ROOT = Path("/sys/fs/cgroup")
MIB = 1 << 20
# The example app after taking BALLAST_MB of resident memory (bytes written,
# not merely mapped).
BALLAST_APP = [
    sys.executable,
    "-c",
    "import os, sys\n"
    "ballast = b'\\1' * (int(os.environ.get('BALLAST_MB', '0')) << 20)\n"
    "from server_starter.example_app import main\n"
    "sys.exit(main())\n",
]


class Cgroup:
    """A cgroup of one controller (v1) or of the unified hierarchy (v2),
    removed at the end; ``limit`` and ``usage`` speak v2's file names."""

    def __init__(self, controller: str) -> None:
        self.controller = controller
        self.v1 = (CGROUP_ROOT / controller / "cgroup.procs").exists()
        if self.v1:
            own = next(
                line.split(":", 2)[2]
                for line in Path("/proc/self/cgroup").read_text().splitlines()
                if controller in line.split(":")[1].split(",")
            )
            parent = CGROUP_ROOT / controller / own.lstrip("/")
        else:
            # v2: the root may hold processes and enable controllers at once.
            parent = CGROUP_ROOT
            enabled = (parent / "cgroup.subtree_control").read_text().split()
            if controller not in enabled:
                (parent / "cgroup.subtree_control").write_text(f"+{controller}")
        self.path = parent / f"server-starter-test-{os.getpid()}-{controller}"
        self.path.mkdir()

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the cgroup (it moves itself in, then execs)."""
        procs = shlex.quote(str(self.path / "cgroup.procs"))
        return ["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh", *argv]

    def _file(self, name: str) -> Path:
        v1_names = {
            "memory.max": "memory.limit_in_bytes",
            "memory.current": "memory.usage_in_bytes",
            "memory.swap.max": "memory.memsw.limit_in_bytes",
        }
        return self.path / (v1_names.get(name, name) if self.v1 else name)

    def usage(self, name: str) -> int:
        return int(self._file(name).read_text().split()[0])

    def limit(self, name: str, value: int | str) -> None:
        self._file(name).write_text(str(value))

    def oom_kills(self) -> int:
        events = "memory.oom_control" if self.v1 else "memory.events"
        for line in (self.path / events).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.rmdir()


@contextlib.contextmanager
def cgroup(controller: str) -> Iterator[Cgroup]:
    try:
        made = Cgroup(controller)
    except (OSError, StopIteration) as err:
        pytest.skip(f"no {controller} cgroup can be made here: {err}")
    try:
        yield made
    finally:
        made.remove()


def superdaemon(tmp_path: Path, port: int, app: list[str], *options: str) -> list[str]:
    """start_server's command line, with its envdir (made) in tmp_path/env."""
    (tmp_path / "env").mkdir(exist_ok=True)
    return [
        START_SERVER,
        f"--port=127.0.0.1:{port}",
        f"--pid-file={tmp_path / 'pid'}",
        f"--envdir={tmp_path / 'env'}",
        "--require-notify",
        "--backoff-max=60",
        *options,
        "--",
        *app,
    ]


def reload_fails_then_serves(
    daemon: Daemon, pid_file: Path, port: int, reasons: tuple[str, ...], fix: Callable[[], object]
) -> None:
    """A reload fails with ``reasons`` and generation 1 serves on; after
    ``fix`` the next one serves."""
    failed = restart(pid_file)
    assert failed.returncode == 1, failed.stderr
    for reason in (*reasons, "old generation keeps serving"):
        assert reason in failed.stderr, failed.stderr
    assert generation_of(port) == 1
    fix()
    good = restart(pid_file)
    assert good.returncode == 0, good.stderr
    daemon.wait_for(r"^old worker \d+ died")


def test_out_of_memory_in_the_overlap_kills_the_starting_generation_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port, envdir = free_port(), tmp_path / "env"
    argv = superdaemon(tmp_path, port, BALLAST_APP)
    (envdir / "BALLAST_MB").write_text("100\n")
    with cgroup("memory") as memory:
        argv = memory.argv(argv)
        with running(argv, env=worker_env()) as daemon:
            daemon.wait_for(r"\(generation 1\) is ready")
            # Room for 40 MiB more: the new generation, smaller than the
            # serving one when it runs out, is still the one to go.
            limit = memory.usage("memory.current") + 40 * MIB
            memory.limit("memory.max", limit)
            with contextlib.suppress(OSError):
                memory.limit("memory.swap.max", limit if memory.v1 else 0)
            (envdir / "BALLAST_MB").write_text("60\n")
            with Load(port, threads=64, path="/slow") as load:
                reload_fails_then_serves(
                    daemon,
                    tmp_path / "pid",
                    port,
                    ("killed by SIGKILL by the OOM killer",),
                    lambda: (envdir / "BALLAST_MB").write_text("1\n"),
                )
            kills = memory.oom_kills()
    assert kills >= 1
    assert "Traceback" not in daemon.output()
    assert load.failures == [], load.failures[:5]
    assert sorted(load.generations)[0] == 1 and max(load.generations) >= 3
    report(
        capsys,
        f"out of memory in a reload's overlap: {kills} OOM kill(s), the starting generation's; "
        f"{load.total()} requests, {len(load.failures)} failed; the next reload served",
    )


def test_out_of_tasks_fails_the_reload_and_keeps_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    with cgroup("pids") as pids:
        argv = pids.argv(superdaemon(tmp_path, port, BALLAST_APP))
        with running(argv, env=worker_env()) as daemon:
            daemon.wait_for(r"\(generation 1\) is ready")
            pids.limit("pids.max", pids.usage("pids.current"))  # no room for one more
            with Load(port, threads=64, path="/slow") as load:
                reload_fails_then_serves(
                    daemon,
                    tmp_path / "pid",
                    port,
                    ("Resource temporarily unavailable", "TasksMax="),
                    lambda: pids.limit("pids.max", "max"),
                )
    assert "Traceback" not in daemon.output()
    assert load.failures == [], load.failures[:5]
    report(
        capsys,
        f"out of tasks (pids.max reached) at a reload: it fails with fork's EAGAIN; "
        f"{load.total()} requests, {len(load.failures)} failed; the next reload served",
    )


def test_out_of_descriptors_fails_the_reload_and_keeps_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    with running(superdaemon(tmp_path, port, BALLAST_APP), env=worker_env()) as daemon:
        daemon.wait_for(r"\(generation 1\) is ready")
        soft, hard = resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE)
        open_fds = {int(fd) for fd in os.listdir(f"/proc/{daemon.pid}/fd")}
        lowest_free = min(set(range(len(open_fds) + 1)) - open_fds)
        with Load(port, threads=64, path="/slow") as load:
            resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (lowest_free, hard))
            # The control socket cannot take the request: it says why.
            refused = restart(tmp_path / "pid")
            assert refused.returncode == 1
            assert "out of file descriptors" in refused.stderr, refused.stderr
            # A HUP needs no descriptor to arrive: the spawn fails, with the reason.
            os.kill(daemon.pid, signal.SIGHUP)
            daemon.wait_for(r"failed to start: cannot start a worker: Too many open files")
            assert generation_of(port) == 1
            resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (soft, hard))
            good = restart(tmp_path / "pid")
            assert good.returncode == 0, good.stderr
            daemon.wait_for(r"^old worker \d+ died")
    output = daemon.output()
    assert "LimitNOFILE=" in output and "Traceback" not in output
    assert load.failures == [], load.failures[:5]
    report(
        capsys,
        f"out of descriptors (RLIMIT_NOFILE) at a reload: --restart refused with the reason, "
        f"HUP's spawn fails with EMFILE; {load.total()} requests, {len(load.failures)} failed",
    )


@pytest.mark.parametrize("keep", [False, True])
def test_the_workers_oom_scores(tmp_path: Path, keep: bool) -> None:
    """A starting generation is the OOM killer's first victim (1000), the
    serving one half-way to the superdaemon's score; --keep-oom-score
    leaves every worker at the superdaemon's."""
    port = free_port()
    options = ["--keep-oom-score"] if keep else []
    argv = superdaemon(tmp_path, port, BALLAST_APP, *options)
    boot = tmp_path / "env" / "EXAMPLE_APP_BOOT_SECONDS"
    with running(argv, env=worker_env()) as daemon:
        daemon.wait_for(r"\(generation 1\) is ready")
        own = int(Path(f"/proc/{daemon.pid}/oom_score_adj").read_text())
        serving = http_get(port)[1]["x-worker-pid"]
        boot.write_text("30\n")  # the next generation stays starting meanwhile
        os.kill(daemon.pid, signal.SIGHUP)
        starting = int(daemon.wait_for(r"starting new worker (\d+)", count=2).group(1))
        scores = {
            role: int(Path(f"/proc/{pid}/oom_score_adj").read_text())
            for role, pid in (("serving", serving), ("starting", starting))
        }
    if keep:
        assert scores == {"serving": own, "starting": own}
    else:
        assert scores == {"serving": own + (1000 - own) // 2, "starting": 1000}
