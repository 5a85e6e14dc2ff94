"""What a running superdaemon tells the people and the programs that watch it:
the supervisor's status rendered as the Prometheus text format for
``--metrics-file`` and as the table of ``start_server --status``.  (Imported
only when one is asked for: the resident superdaemon does without it.)

The status itself is one JSON-serialisable object, built by
``Supervisor.status()``; its schema is docs/status.schema.json (each
field explained in docs/watching.md) and stays stable: fields may be
added, none renamed or removed.  Every time in it is Unix seconds;
durations are seconds.
"""

from __future__ import annotations

from .. import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs the resident superdaemon ~2 MB; annotations need no import
    from collections.abc import Sequence
    from typing import Any

    from .generation import Generation
    from .reloads import Ledger
    from .restart_policy import RestartPolicy

    Status = dict[str, Any]

IN_PROGRESS, FAILED = "in_progress", "failed"  # a reload's outcomes (and "succeeded")

# Every state a generation can be in, as the status and the metrics name it
# (generation.State's values): each state's gauge is written, 0 included.
STATES = (
    "starting",
    "rolling",
    "failed",
    "serving",
    "retiring",
    "draining",
    "evicted",
    "killed",
)


# -- the status -------------------------------------------------------------------


def status_of(
    generations: Sequence[Generation],
    serving: Generation | None,
    probation_until: float | None,
    ledger: Ledger,
    policy: RestartPolicy,
    stopping: bool,
    pid: int,
    now: float,
    offset: float,
) -> Status:
    """The supervisor's status as plain data, times in Unix seconds (the
    schema is docs/status.schema.json); ``now`` is monotonic, ``offset`` what
    turns it into Unix seconds."""

    def wall(monotonic: float | None) -> float | None:
        return None if monotonic is None else round(monotonic + offset, 3)

    entries = [
        {
            "generation": g.number,
            "pid": g.pid,
            "state": g.state.value,
            "since": wall(g.since),
            "started_at": wall(g.spawned_at),
            "ready_at": wall(g.ready_at),
            "probation_until": wall(probation_until) if g is serving else None,
            "workers": None
            if g.workers is None
            else {"ready": g.workers.ready, "target": g.workers.target, "full": g.workers.full},
        }
        for g in generations
    ]
    record = ledger.record
    finished = record.last_reload
    if finished is not None:
        duration = finished["duration_seconds"]
        finished = {
            **finished,
            "started_at": wall(finished["started_at"]) or 0.0,
            "duration_seconds": None if duration is None else round(duration, 3),
        }
    last = finished
    running = ledger.running()
    if running:
        reload = running[-1]
        assert reload.started_at is not None and reload.number is not None
        last = {
            "generation": reload.number,
            "outcome": IN_PROGRESS,
            "reason": None,
            "started_at": wall(reload.started_at) or 0.0,
            "duration_seconds": None,
        }
    return {
        "superdaemon": {
            "pid": pid,
            "version": __version__,
            "started_at": wall(record.started_at),
            "uptime_seconds": round(now - record.started_at, 3),
        },
        "stopping": stopping,
        "serving_generation": serving.number if serving is not None else None,
        "generations": entries,
        "last_reload": last,
        "last_finished_reload": finished,
        "last_success_at": wall(record.last_success_at),
        "reloads": {**record.reloads, IN_PROGRESS: len(running)},
        "failure_streak": policy.failures,
        "next_retry_at": wall(policy.retry_at),
        "worker_exits": dict(record.exits),
    }


# -- the Prometheus text format -------------------------------------------------


def metrics_text(status: Status, labels: Sequence[str] = ()) -> str:
    """The status as Prometheus's text exposition format (version 0.0.4), for
    node_exporter's textfile collector: HELP and TYPE before each family.
    ``labels`` (``NAME=VALUE``, from --metrics-label) go on every series."""
    lines: list[str] = []
    common = "".join(
        f'{name}="{_label(value)}",'
        for name, _, value in (label.partition("=") for label in labels)
    )

    def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP server_starter_{name} {help_text}")
        lines.append(f"# TYPE server_starter_{name} {kind}")
        for own, value in samples:
            both = (common + own.strip("{}")).rstrip(",")
            lines.append(
                f"server_starter_{name}{{{both}}} {_number(value)}"
                if both
                else f"server_starter_{name} {_number(value)}"
            )

    superdaemon = status["superdaemon"]
    family(
        "info",
        "gauge",
        "The superdaemon's version and pid (always 1).",
        [(f'{{version="{_label(superdaemon["version"])}",pid="{superdaemon["pid"]}"}}', 1)],
    )
    family(
        "start_time_seconds",
        "gauge",
        "When the superdaemon started (Unix seconds; an in-place upgrade keeps it).",
        [("", superdaemon["started_at"])],
    )
    family(
        "serving_generation",
        "gauge",
        "The number of the generation that serves (SERVER_STARTER_GENERATION); 0 when none.",
        [("", status["serving_generation"] or 0)],
    )
    counts = dict.fromkeys(STATES, 0)
    for generation in status["generations"]:
        counts[generation["state"]] += 1
    family(
        "generations",
        "gauge",
        "Generations alive, by state.",
        [(f'{{state="{state}"}}', count) for state, count in counts.items()],
    )
    family(
        "reloads_total",
        "counter",
        "Reloads finished, by outcome (each attempt: a retry after a failed start counts too).",
        [
            (f'{{outcome="{outcome}"}}', count)
            for outcome, count in status["reloads"].items()
            if outcome != IN_PROGRESS
        ],
    )
    last = status["last_reload"]
    finished = status["last_finished_reload"]
    family(
        "reload_in_progress",
        "gauge",
        "1 while a reload is under way.",
        [("", 1 if last is not None and last["outcome"] == IN_PROGRESS else 0)],
    )
    family(
        "last_reload_successful",
        "gauge",
        "Whether the last finished reload succeeded (1 before any reload).",
        [("", 0 if finished is not None and finished["outcome"] == FAILED else 1)],
    )
    family(
        "last_reload_success_timestamp_seconds",
        "gauge",
        "When the last successful reload finished (Unix seconds; the start before any).",
        [("", status["last_success_at"] or superdaemon["started_at"])],
    )
    family(
        "last_reload_duration_seconds",
        "gauge",
        "How long the last finished reload took, from its request to its outcome.",
        [("", finished["duration_seconds"] if finished is not None else 0)],
    )
    family(
        "failure_streak",
        "gauge",
        "Failed starts, failed reloads and unexpected deaths in a row.",
        [("", status["failure_streak"])],
    )
    family(
        "worker_exits_total",
        "counter",
        "Workers that exited, by reason.",
        [(f'{{reason="{reason}"}}', count) for reason, count in status["worker_exits"].items()],
    )
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(round(value, 6))


def _label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# -- the table of ``start_server --status`` ---------------------------------------


def status_table(status: Status, now: float) -> str:
    """The status for a person, at a glance; ``now`` in Unix seconds."""
    superdaemon = status["superdaemon"]
    lines = [
        f"start_server {superdaemon['version']} (pid {superdaemon['pid']}), "
        f"up {_age(now - superdaemon['started_at'])}" + (", stopping" if status["stopping"] else "")
    ]
    serving = status["serving_generation"]
    lines.append(
        f"serving: generation {serving}" if serving is not None else "serving: no generation"
    )
    rows = [("GENERATION", "PID", "STATE", "FOR", "AGE", "")]
    for generation in status["generations"]:
        notes = []
        workers = generation.get("workers")
        if workers is not None:
            notes.append(f"{workers['ready']} of {workers['full']} workers ready")
        if generation.get("probation_until") is not None:
            notes.append(f"on probation for {_age(generation['probation_until'] - now)} more")
        note = "; ".join(notes)
        rows.append(
            (
                str(generation["generation"]),
                str(generation["pid"]),
                generation["state"],
                _age(now - generation["since"]),
                _age(now - generation["started_at"]),
                note,
            )
        )
    if len(rows) > 1:
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            lines.append(("  " + "  ".join(cells) + "  " + row[5]).rstrip())
    last = status["last_reload"]
    if last is None:
        lines.append("last reload: none yet")
    elif last["outcome"] == IN_PROGRESS:
        lines.append(
            f"last reload: generation {last['generation']} in progress, "
            f"for {_age(now - last['started_at'])}"
        )
    else:
        line = (
            f"last reload: generation {last['generation']} {last['outcome']} "
            f"{_age(now - last['started_at'] - last['duration_seconds'])} ago, "
            f"in {last['duration_seconds']:.2f}s"
        )
        if last["reason"]:
            line += f": {last['reason']}"
        lines.append(line)
    reloads = status["reloads"]
    lines.append(
        f"reloads: {reloads['succeeded']} succeeded, {reloads['failed']} failed; "
        f"failures in a row: {status['failure_streak']}"
    )
    if status["next_retry_at"] is not None:
        lines.append(f"next retry: in {_age(status['next_retry_at'] - now)}")
    return "\n".join(lines)


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s"
