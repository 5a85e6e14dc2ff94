"""What an in-place upgrade may hand to an earlier version: a command line or
a state that version cannot take gets format 2, which its check refuses
before the exec (instead of the new image dying on it after); and the
command line an earlier version accepted, with Perl's abbreviations, is
still read when this one resumes it."""

from __future__ import annotations

import pytest

from server_starter.superdaemon.cli import parse_args
from server_starter.superdaemon.environment import RESUME_VARIABLE
from server_starter.superdaemon.handover import READS_FORMATS
from server_starter.superdaemon.serve import UsageError, handover_format

PLAIN = ["--port=8080", "--pid-file=/run/app.pid", "--kill-old-delay=5", "--", "app"]


@pytest.mark.parametrize(
    ("argv", "states", "expected"),
    [
        (PLAIN, ["serving", "draining"], 1),
        (["--metrics-file=/run/app/m.prom", *PLAIN], ["serving"], 2),
        (["--max-draining", "2", *PLAIN], ["serving"], 2),
        (["--metrics-file=/m", "--metrics-label=unit=app.service", *PLAIN], [], 2),
        (PLAIN, ["serving", "evicted"], 2),
        # The worker's own arguments are not start_server's options.
        ([*PLAIN, "--metrics-file=/tmp/x"], ["serving"], 1),
    ],
    ids=["plain", "metrics-file", "max-draining", "labels", "an-evicted-generation", "worker-args"],
)
def test_a_hand_over_an_earlier_version_cannot_take_is_format_2(
    argv: list[str], states: list[str], expected: int
) -> None:
    assert handover_format(argv, states) == expected
    assert expected in READS_FORMATS


def test_abbreviations_are_refused_but_read_when_resuming(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    abbreviated = ["--pid=/run/app.pid", "--kill-old=1", "--", "app"]
    monkeypatch.delenv(RESUME_VARIABLE, raising=False)
    with pytest.raises(UsageError, match=r"unrecognized arguments: --pid=/run/app\.pid"):
        parse_args(abbreviated)
    monkeypatch.setenv(RESUME_VARIABLE, "9")
    args = parse_args(abbreviated)
    assert (args.pid_file, args.kill_old_delay) == ("/run/app.pid", 1.0)
