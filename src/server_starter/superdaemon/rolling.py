"""The rolling reload's rule (``--max-surge=K``): which generation to grow
or shrink next, from the worker counts both report (contract.py).

The new generation starts with K workers beside the serving one's FULL,
the surge.  Then, one signal in flight per generation:

- the serving one gives up its oldest worker (SIGTTOU) when the workers
  ready without it are still FULL, and none of its is still draining: the
  capacity never drops below the steady state;
- the new one gets one more (SIGTTIN) when the workers alive, draining
  ones included (of the serving generation and of older ones that report
  theirs), plus that one stay within FULL + K,
  and fewer than K of its own are still booting: the memory never rises
  above the steady state plus K workers.

The roll is done when the new generation has FULL ready; the serving one,
down to its last worker, is then replaced as in any reload.
"""

from __future__ import annotations

import signal

from .generation import Generation

GROW, SHRINK = signal.SIGTTIN, signal.SIGTTOU


def is_whole(gen: Generation) -> bool:
    workers = gen.workers
    return workers is not None and min(workers.ready, workers.target) >= workers.full


def next_steps(
    serving: Generation | None, rolling: Generation, surge: int, others: int = 0
) -> list[tuple[Generation, signal.Signals]]:
    """The signals to send now (none while the last ones are in flight);
    ``others``: the workers of older generations still draining."""
    new = rolling.workers
    assert new is not None
    if is_whole(rolling):
        return []
    old = serving.workers if serving is not None else None
    steps: list[tuple[Generation, signal.Signals]] = []
    if serving is not None and old is not None and serving.resize is None:
        draining = old.ready > old.target
        capacity_without_one = old.target - 1 + min(new.ready, new.target)
        if old.target > 1 and not draining and capacity_without_one >= new.full:
            steps.append((serving, SHRINK))
    if rolling.resize is None and new.target < new.full:
        alive = others + max(new.ready, new.target)
        alive += max(old.ready, old.target) if old is not None else 0
        booting = new.target - new.ready
        if alive + 1 <= new.full + surge and booting < surge:
            steps.append((rolling, GROW))
    return steps


def restore_step(serving: Generation) -> signal.Signals | None:
    """A serving generation left short by a roll that failed is grown back
    to the target it had when the roll began, one worker at a time (a
    target the operator set by hand, with SIGTTOU, is left alone)."""
    workers, whole = serving.workers, serving.whole
    if workers is None or whole is None or serving.resize is not None:
        return None
    if workers.target >= whole:
        serving.whole = None
        return None
    return GROW
