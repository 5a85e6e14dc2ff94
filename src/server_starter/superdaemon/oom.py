"""Whom the OOM killer takes when the service runs out of memory.

A reload runs two generations at once, so with ``MemoryMax=`` it may need
more than the service is given; the kernel then kills the process of the
cgroup with the highest badness, its memory weighted by ``oom_score_adj``.
We rank them: a starting generation first (1000: it is the one to fail),
the serving one next, the superdaemon last (it keeps the score the unit
gave it, ``OOMScoreAdjust=``).  Anyone may raise a score; lowering it back is
allowed down to the score the service started with, so no privilege is
needed.  The units set ``OOMPolicy=continue``: systemd's default would stop
the whole service at the first OOM kill.
"""

from __future__ import annotations

import contextlib

from . import procfs

STARTING_SCORE = 1000  # the most a score can be: the first victim


def own_score() -> int:
    try:
        with open("/proc/self/oom_score_adj") as score:
            return int(score.read())
    except (OSError, ValueError):
        return 0


def serving_score(own: int) -> int:
    """Halfway between the superdaemon's score and a starting generation's."""
    return own + (STARTING_SCORE - own) // 2


def set_score(pid: int, score: int) -> None:
    """Give ``pid`` and its descendants (a gunicorn's workers) ``score``;
    best effort: one that has gone meanwhile is no matter."""
    for process in [pid, *_descendants(pid)]:
        with contextlib.suppress(OSError), open(f"/proc/{process}/oom_score_adj", "w") as out:
            out.write(str(score))


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    pending = procfs.children(pid)
    while pending:
        child = pending.pop()
        found.append(child)
        pending += procfs.children(child)
    return found


def kills() -> int | None:
    """How many processes of our memory cgroup the OOM killer has killed
    (None where the kernel does not say)."""
    for path in _memory_events_files():
        try:
            with open(path) as events:
                for line in events:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


def _memory_events_files() -> list[str]:
    v1, v2 = [], []
    for hierarchy, controllers, path in procfs.own_cgroups():
        if "memory" in controllers.split(","):
            v1.append(f"{procfs.CGROUP_ROOT}/memory{path}/memory.oom_control")
        elif hierarchy == "0":
            v2.append(f"{procfs.CGROUP_ROOT}{path}/memory.events")
    # The v1 memory controller, where it is mounted, is the one that limits.
    return v1 + v2
