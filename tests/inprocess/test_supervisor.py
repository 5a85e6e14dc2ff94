"""The supervisor's rules, in-process: a fake Host stands in for the OS (a clock
the test moves, pids it makes up, signals and systemd messages it records),
so each timing rule is checked exactly, without sleeping.  The end-to-end
tests prove the same rules hold with real processes."""

from __future__ import annotations

import io
import json
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server_starter.contract import parse_notify as parse
from server_starter.superdaemon.environment import read_envdir
from server_starter.superdaemon.events import (
    Checked,
    Exited,
    HostEvent,
    Notified,
    Requested,
    Signalled,
)
from server_starter.superdaemon.generation import State
from server_starter.superdaemon.journal import EventLog
from server_starter.superdaemon.reloads import Answer
from server_starter.superdaemon.report import metrics_text, status_table
from server_starter.superdaemon.settings import SettingError, Settings, parse_label
from server_starter.superdaemon.spawn import SpawnError
from server_starter.superdaemon.supervisor import Host, Supervisor, Upgrader

TERM, KILL = signal.SIGTERM, signal.SIGKILL
WALL_OFFSET = 1_800_000_000.0  # the fake wall clock: the monotonic one plus this


class FakeHost(Host):
    def __init__(self) -> None:
        self.clock = 1000.0
        self.next_pid = 100
        self.environs: dict[int, dict[str, str]] = {}
        self.signals: list[tuple[int, signal.Signals]] = []
        self.systemd: list[dict[str, str]] = []
        self.systemd_sent_at: list[float] = []  # the clock at each message
        self.status_file: list[tuple[int, int]] | None = None
        self.spawn_error: str | None = None
        self.promoted: list[int] = []  # rank_as_serving(): less likely OOM victims
        self.metrics: list[str] = []  # each metrics file written
        self.oom_killed: int | None = 0  # the service's OOM kills, as the kernel counts
        self.script: list[list[HostEvent]] = []  # what each wait() yields, in turn
        self.waits: list[float | None] = []  # the deadline each wait() was given

    def now(self) -> float:
        return self.clock

    def wall_clock(self) -> float:
        return self.clock + WALL_OFFSET

    def pid(self) -> int:
        return 42

    def read_envdir(self, path: str | None) -> dict[str, str] | None:
        return read_envdir(path)

    def spawn(self, number: int, environ: dict[str, str], settings: Settings) -> int:
        if self.spawn_error is not None:
            raise SpawnError(self.spawn_error)
        self.next_pid += 1
        environ["NOTIFY_SOCKET"] = f"@test/gen{number}"
        self.environs[self.next_pid] = environ
        return self.next_pid

    def signal(self, pid: int, number: signal.Signals) -> None:
        self.signals.append((pid, number))

    def oom_kills(self) -> int | None:
        return self.oom_killed

    def rank_as_serving(self, pid: int) -> None:
        self.promoted.append(pid)

    def notify_systemd(self, message: str) -> None:
        self.systemd.append(parse(message.encode()))
        self.systemd_sent_at.append(self.clock)

    def write_status_file(self, path: str, workers: Sequence[tuple[int, int]]) -> None:
        self.status_file = sorted(workers)

    def write_metrics_file(self, path: str, text: str) -> None:
        self.metrics.append(text)

    def wait(self, deadline: float | None) -> Iterator[HostEvent]:
        """The next batch of ``script``; an empty one: nothing happened, and
        the clock moves to the deadline (with none, the loop would block
        forever: a test error)."""
        self.waits.append(deadline)
        assert self.script, "the script ran out: the loop would wait for more"
        batch = self.script.pop(0)
        if not batch:
            assert deadline is not None, "nothing happens and no deadline: blocked forever"
            self.clock = max(self.clock, deadline)
        yield from batch


class Answers(Answer):
    """A control client's answers, checked to come exactly once each."""

    def __init__(self) -> None:
        super().__init__()
        self.got: list[tuple[bool, str]] = []

    def __call__(self, ok: bool, message: str) -> None:
        self.got.append((ok, message))

    @property
    def one(self) -> tuple[bool, str]:
        assert len(self.got) == 1, self.got
        return self.got[0]


class Rig:
    def __init__(
        self, environ: dict[str, str] | None = None, envdir: str | None = None, **settings: object
    ) -> None:
        self.host = FakeHost()
        self.stream = io.StringIO()
        options: dict[str, object] = {"status_file": "status"} | settings
        self.supervisor = Supervisor(
            Settings(["app"], envdir=envdir, **options),
            ports="8080=3",
            fd_names=None,
            environ=dict(environ or {}),
            host=self.host,
            log=EventLog(to_journal=False, stream=self.stream),
        )

    @property
    def log(self) -> str:
        return self.stream.getvalue()

    def pid(self, number: int) -> int:
        (gen,) = [g for g in self.supervisor.generations if g.number == number]
        return gen.pid

    def state(self, number: int) -> State:
        for gen in self.supervisor.generations:
            if gen.number == number:
                return gen.state
        return State.REAPED

    def advance(self, seconds: float) -> None:
        self.host.clock += seconds
        self.supervisor.on_time()

    def until_next_deadline(self) -> float:
        """Move the clock to the next deadline; returns how far that was."""
        deadline = self.supervisor.next_deadline()
        assert deadline is not None, "nothing is due"
        waited = deadline - self.host.clock
        self.host.clock = deadline
        self.supervisor.on_time()
        return waited

    def ready(self, number: int) -> None:
        self.supervisor.on_message(self.pid(number), {"READY": "1"})

    def exit(self, number: int, status: int = 0) -> None:
        self.supervisor.on_exit(self.pid(number), status)

    def serving(self) -> Rig:
        self.supervisor.start()
        self.advance(1.0)
        assert self.state(1) is State.SERVING
        return self

    def serving_by_notify(self) -> Rig:
        self.supervisor.start()
        self.ready(1)
        return self


# -- readiness ------------------------------------------------------------------


def test_alive_after_interval_is_ready_and_idle_has_no_deadline() -> None:
    rig = Rig(interval=2.5)
    rig.supervisor.start()
    assert rig.state(1) is State.STARTING
    assert rig.host.systemd == [{"STATUS": "starting generation 1"}]
    assert rig.until_next_deadline() == 2.5
    assert rig.state(1) is State.SERVING
    assert rig.host.systemd[-1]["READY"] == "1"
    assert rig.host.status_file == [(1, rig.pid(1))]
    assert "is ready (alive after 2.5s)" in rig.log
    assert rig.supervisor.next_deadline() is None  # idle: the loop blocks without a timeout


def test_require_notify_waits_for_ready_from_its_own_worker_only() -> None:
    rig = Rig(require_notify=True, ready_timeout=30.0)
    rig.supervisor.start()
    rig.advance(10.0)
    assert rig.state(1) is State.STARTING
    rig.supervisor.on_message(999, {"READY": "1"})  # not a worker of ours
    rig.supervisor.on_message(rig.pid(1), {"STATUS": "loading"})
    assert rig.state(1) is State.STARTING
    assert "status: loading" in rig.log
    rig.ready(1)
    assert rig.state(1) is State.SERVING


def test_ready_timeout_kills_and_counts_as_a_failed_start() -> None:
    rig = Rig(require_notify=True, ready_timeout=30.0)
    rig.supervisor.start()
    assert rig.until_next_deadline() == 30.0
    assert rig.host.signals == [(rig.pid(1), KILL)]
    assert rig.state(1) is State.FAILED
    # The log says why, not only the exit's "killed by SIGKILL".
    why = f"worker {rig.pid(1)} (generation 1) sent no READY=1 within 30s (--ready-timeout)"
    assert f"{why}, sending KILL" in rig.log
    assert rig.supervisor.next_deadline() is None  # its exit comes next, not a timer
    rig.exit(1, status=9)
    assert "seems to have failed to start, exit status:9" in rig.log
    assert "retrying in 1s" in rig.log
    assert rig.until_next_deadline() == 1.0
    assert rig.state(2) is State.STARTING


# -- reloads ----------------------------------------------------------------------


def test_reload_signals_the_old_generation_once_the_new_one_is_ready() -> None:
    rig = Rig().serving()
    answers = Answers()
    rig.supervisor.on_request("reload", answers)
    assert rig.host.systemd[-1]["RELOADING"] == "1"
    assert rig.state(2) is State.STARTING
    assert answers.got == []
    assert rig.host.signals == []
    rig.advance(1.0)
    assert rig.state(2) is State.SERVING
    assert rig.state(1) is State.DRAINING
    assert rig.host.signals == [(rig.pid(1), TERM)]
    assert answers.one == (True, f"generation 2 is serving; sent TERM to worker {rig.pid(1)}")
    # systemd heard READY=1 before the client was answered; the status file has both.
    assert rig.host.systemd[-2]["READY"] == "1"
    assert rig.host.status_file == [(1, rig.pid(1)), (2, rig.pid(2))]
    rig.exit(1)
    assert rig.host.status_file == [(2, rig.pid(2))]
    assert rig.supervisor.next_deadline() is None


def test_a_generation_leaves_the_oom_killers_first_place_once_it_serves() -> None:
    rig = Rig(require_notify=True)
    rig.supervisor.start()
    assert rig.host.promoted == []  # starting: the OOM killer's first victim
    rig.ready(1)
    rig.supervisor.request_reload(None, None)
    assert rig.host.promoted == [rig.pid(1)]
    rig.ready(2)
    assert rig.host.promoted == [rig.pid(1), rig.pid(2)]


def test_a_start_killed_by_the_oom_killer_says_so() -> None:
    rig = Rig().serving()
    answers = Answers()
    rig.supervisor.on_request("reload", answers)
    rig.supervisor.on_exit(rig.pid(2), KILL.value, oom_killed=True)
    ok, message = answers.one
    assert not ok
    assert "killed by SIGKILL by the OOM killer: the service is out of memory" in message
    assert "old generation keeps serving" in message
    assert rig.state(1) is State.SERVING


def test_every_reloading_carries_the_clock_and_ends_with_ready() -> None:
    """What systemd 253 and later match a reload by: each RELOADING=1 has
    MONOTONIC_USEC= from the host's clock, and a READY=1 follows before the
    next one, whether the reload succeeds, fails at start, fails its ready
    timeout, cannot spawn, is retried on its own, or is superseded."""
    rig = Rig(require_notify=True, ready_timeout=30.0).serving_by_notify()

    def latest() -> int:
        return rig.supervisor.generation_count

    rig.supervisor.on_signal(signal.SIGHUP)
    rig.ready(latest())  # succeeds
    rig.supervisor.on_signal(signal.SIGHUP)
    rig.exit(latest(), status=256)  # exits at start
    rig.until_next_deadline()  # the automatic retry starts
    assert rig.state(latest()) is State.STARTING
    rig.until_next_deadline()  # no READY=1 within 30 s: killed
    rig.exit(latest(), status=9)
    rig.host.spawn_error = "failed to exec app: No such file or directory"
    rig.supervisor.on_signal(signal.SIGHUP)  # cannot spawn
    rig.host.spawn_error = None
    rig.supervisor.on_signal(signal.SIGHUP)
    rig.supervisor.on_signal(signal.SIGHUP)  # supersedes the one starting
    rig.ready(latest())
    rig.ready(latest())
    assert rig.supervisor.ledger.next is None and rig.supervisor.policy.retry_at is None
    reloading = None
    for message, sent_at in zip(rig.host.systemd, rig.host.systemd_sent_at, strict=True):
        if message.get("RELOADING") == "1":
            assert reloading is None, f"RELOADING=1 twice without READY=1: {rig.host.systemd}"
            assert int(message["MONOTONIC_USEC"]) == int(sent_at * 1_000_000)
            reloading = message
        elif message.get("READY") == "1":
            reloading = None
    assert reloading is None, "the last RELOADING=1 was never followed by READY=1"
    assert sum(m.get("RELOADING") == "1" for m in rig.host.systemd) == 6


def test_signal_on_hup_is_what_old_generations_get() -> None:
    rig = Rig(signal_on_hup=signal.SIGQUIT).serving()
    rig.supervisor.on_signal(signal.SIGHUP)
    rig.advance(1.0)
    assert rig.host.signals == [(rig.pid(1), signal.SIGQUIT)]


def test_reloads_while_one_is_starting_coalesce_into_one_more() -> None:
    rig = Rig(require_notify=True).serving_by_notify()
    first, second, third = Answers(), Answers(), Answers()
    rig.supervisor.on_request("reload", first)
    rig.supervisor.on_request("reload", second)
    rig.supervisor.on_signal(signal.SIGHUP)
    rig.supervisor.on_request("reload", third)
    assert [g.number for g in rig.supervisor.generations] == [1, 2]
    assert rig.log.count("will reload again once it is ready") == 1
    rig.ready(2)
    assert first.one[0] is True
    assert [g.number for g in rig.supervisor.generations] == [1, 2, 3]  # one more, not three
    assert second.got == third.got == []
    rig.ready(3)
    assert second.one == third.one
    assert second.one[1].startswith("generation 3 is serving; sent TERM to worker")


def test_kill_old_delay_holds_the_signal_and_the_answer() -> None:
    rig = Rig(environ={"KILL_OLD_DELAY": "5"}).serving()
    answers = Answers()
    rig.supervisor.on_request("reload", answers)
    rig.advance(1.0)
    assert rig.state(1) is State.RETIRING
    assert "sleeping 5 secs before killing old workers" in rig.log
    assert rig.host.signals == [] and answers.got == []
    assert rig.until_next_deadline() == 5.0
    assert rig.host.signals == [(rig.pid(1), TERM)]
    assert answers.one[0] is True


def test_an_old_generation_that_exits_before_its_signal_answers_the_reload() -> None:
    rig = Rig(environ={"KILL_OLD_DELAY": "5"}).serving()
    answers = Answers()
    rig.supervisor.on_request("reload", answers)
    rig.advance(1.0)
    old = rig.pid(1)
    rig.exit(1)
    assert answers.one == (True, f"old worker {old} exited before its signal")
    assert rig.host.signals == []
    assert rig.supervisor.next_deadline() is None


def test_kill_old_delay_is_read_from_the_envdir_at_each_reload(tmp_path: Path) -> None:
    rig = Rig(envdir=str(tmp_path)).serving()
    (tmp_path / "KILL_OLD_DELAY").write_text("3\n")
    rig.supervisor.on_signal(signal.SIGHUP)
    rig.advance(1.0)
    assert rig.until_next_deadline() == 3.0
    (tmp_path / "KILL_OLD_DELAY").write_text("not a number\n")
    rig.supervisor.on_signal(signal.SIGHUP)
    rig.advance(1.0)
    assert "envdir: KILL_OLD_DELAY: 'not a number' is not a number of seconds" in rig.log
    assert rig.state(2) is State.DRAINING  # the default, 0: signalled at once


def test_stop_timeout_escalates_to_kill() -> None:
    rig = Rig(stop_timeout=7.0).serving()
    rig.supervisor.on_signal(signal.SIGHUP)
    rig.advance(1.0)
    assert rig.until_next_deadline() == 7.0
    assert rig.host.signals == [(rig.pid(1), TERM), (rig.pid(1), KILL)]
    assert "still running 7s after its signal, sending KILL" in rig.log
    assert rig.state(1) is State.KILLED
    assert rig.supervisor.next_deadline() is None


def test_a_failed_start_keeps_the_old_generation_and_says_why() -> None:
    rig = Rig().serving()
    answers = Answers()
    rig.supervisor.on_request("reload", answers)
    rig.exit(2, status=256)
    ok, message = answers.one
    assert not ok
    assert message == (
        "generation 2 failed to start: exited before it was ready, exit code 1; "
        "the old generation keeps serving"
    )
    assert rig.state(1) is State.SERVING
    assert rig.host.signals == []
    assert rig.host.systemd[-2]["READY"] == "1"
    assert rig.host.systemd[-2]["STATUS"].startswith("reload failed: generation 2")
    assert "hint: worker" in rig.log


@pytest.mark.parametrize(
    ("status", "why"),
    [
        (2 << 8, "exit code 2"),  # a usage error: its message says why
        (127 << 8, "exit code 127"),  # command not found
        (126 << 8, "exit code 126"),  # not executable
        (signal.SIGSEGV, "killed by SIGSEGV"),
    ],
)
def test_an_exit_with_a_reason_of_its_own_gets_no_bind_hint(status: int, why: str) -> None:
    rig = Rig().serving()
    rig.supervisor.on_request("reload", Answers())
    rig.exit(2, status=status)
    assert f"failed to start, exit status:{status} ({why})" in rig.log
    assert "hint: worker" not in rig.log


def test_spawn_error_is_a_failed_start_with_its_reason() -> None:
    rig = Rig().serving()
    rig.host.spawn_error = "failed to exec app: No such file or directory"
    answers = Answers()
    rig.supervisor.on_request("reload", answers)
    assert not answers.one[0]
    assert "failed to exec app: No such file or directory" in answers.one[1]
    assert rig.supervisor.generation_count == 2
    assert [g.number for g in rig.supervisor.generations] == [1]
    assert rig.supervisor.policy.retry_at == rig.host.clock + 1.0


# -- backoff ------------------------------------------------------------------------


def test_failed_starts_back_off_doubling_up_to_backoff_max() -> None:
    rig = Rig(backoff_max=10.0)
    rig.supervisor.start()
    waits = []
    for number in range(1, 7):
        rig.exit(number, status=256)
        waits.append(rig.until_next_deadline())
    assert waits == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert rig.log.count("hint: worker") == 1  # once per streak


def test_a_streak_starts_after_the_last_ready_generation() -> None:
    """Upstream's t/02-startfail.t: generation 1 fails, 2 serves, a HUP a
    second later, 3 and 4 fail; 5 must serve within 6 s of the HUP."""
    rig = Rig()
    rig.supervisor.start()
    rig.exit(1, status=256)
    rig.until_next_deadline()  # the retry: generation 2
    rig.advance(1.0)
    assert rig.state(2) is State.SERVING
    rig.advance(1.0)
    hup = rig.host.clock
    rig.supervisor.on_signal(signal.SIGHUP)
    waits = []
    for number in (3, 4):
        rig.exit(number, status=256)
        waits.append(rig.until_next_deadline())
    assert waits == [1.0, 2.0]  # a new streak: from --interval, not from where 1 left it
    rig.advance(1.0)
    assert rig.state(5) is State.SERVING
    assert rig.host.clock - hup <= 6.0


def test_failed_reloads_double_however_long_the_old_one_served() -> None:
    rig = Rig(backoff_max=30.0).serving()
    rig.advance(1000.0)  # far longer than --backoff-max
    rig.supervisor.on_signal(signal.SIGHUP)
    waits = []
    for number in range(2, 8):
        rig.exit(number, status=256)
        waits.append(rig.until_next_deadline())
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert rig.state(1) is State.SERVING


def test_an_unexpected_death_respawns_at_once_then_backs_off() -> None:
    rig = Rig().serving()
    rig.exit(1, status=9)
    assert "died unexpectedly with status:9 (killed by SIGKILL), restarting" in rig.log
    assert rig.state(2) is State.STARTING  # at once, as Perl does
    rig.advance(1.0)
    rig.exit(2, status=9)
    assert rig.state(3) is State.REAPED  # not yet
    assert rig.until_next_deadline() == 1.0
    assert rig.state(3) is State.STARTING


def test_the_streak_starts_afresh_after_serving_backoff_max() -> None:
    rig = Rig(backoff_max=4.0).serving()
    rig.exit(1, status=9)
    rig.advance(1.0)  # generation 2 serves
    rig.advance(4.0)  # for backoff_max
    rig.exit(2, status=9)
    assert rig.state(3) is State.STARTING  # respawned at once: a new streak


# -- auto-restart -----------------------------------------------------------------


def test_auto_restart_reloads_every_interval() -> None:
    rig = Rig(environ={"ENABLE_AUTO_RESTART": "1", "AUTO_RESTART_INTERVAL": "100"}).serving()
    assert rig.supervisor.next_deadline() == rig.host.clock + 100
    assert rig.until_next_deadline() == 100.0
    assert "autorestart triggered (interval=100)" in rig.log
    assert rig.state(2) is State.STARTING
    rig.advance(1.0)
    assert rig.state(1) is State.RETIRING  # auto-restart's kill-old-delay default is 5
    assert rig.until_next_deadline() == 5.0
    assert rig.state(1) is State.DRAINING


def test_auto_restart_waits_twice_the_interval_while_old_ones_drain() -> None:
    environ = {"ENABLE_AUTO_RESTART": "1", "AUTO_RESTART_INTERVAL": "100"}
    rig = Rig(environ=environ, stop_timeout=1000.0).serving()
    rig.until_next_deadline()
    rig.advance(1.0)
    ready_at = rig.host.clock
    rig.until_next_deadline()  # generation 1 signalled after 5 s, and it does not exit
    assert rig.state(1) is State.DRAINING
    assert rig.supervisor.next_deadline() == ready_at + 200


# -- stopping -----------------------------------------------------------------------


def test_stop_drains_everything_and_answers_every_request() -> None:
    rig = Rig(signal_on_term=signal.SIGINT, environ={"KILL_OLD_DELAY": "5"}).serving()
    rig.supervisor.on_signal(signal.SIGHUP)
    rig.advance(1.0)  # 2 serving, 1 retiring
    waiting, queued = Answers(), Answers()
    rig.supervisor.on_request("reload", waiting)  # 3 starting
    rig.supervisor.on_request("reload", queued)  # queued behind 3
    rig.supervisor.on_signal(signal.SIGTERM)
    assert waiting.one == queued.one == (False, "start_server is stopping")
    assert sorted(rig.host.signals) == sorted((rig.pid(n), signal.SIGINT) for n in (1, 2, 3))
    assert rig.host.systemd[-1]["STOPPING"] == "1"
    late = Answers()
    rig.supervisor.on_request("reload", late)
    assert late.one == (False, "start_server is stopping")
    for number in (1, 2, 3):
        assert not rig.supervisor.finished
        rig.exit(number)
    assert rig.supervisor.finished
    assert rig.log.endswith("exiting\n")


def test_ctrl_c_sends_term_whatever_signal_on_term_says() -> None:
    rig = Rig(signal_on_term=signal.SIGUSR1).serving()
    rig.supervisor.on_signal(signal.SIGINT)
    assert rig.host.signals == [(rig.pid(1), TERM)]


def test_a_stop_between_two_attempts_says_no_worker_runs() -> None:
    rig = Rig()
    rig.supervisor.start()
    rig.exit(1, status=256)  # failed; the next attempt waits for its backoff
    rig.supervisor.on_signal(signal.SIGTERM)
    assert "received TERM, no worker running\n" in rig.log
    assert "to all workers" not in rig.log
    assert rig.supervisor.finished


def test_unknown_requests_are_refused() -> None:
    rig = Rig().serving()
    answers = Answers()
    rig.supervisor.on_request("shutdown", answers)
    assert answers.one == (False, "unknown request 'shutdown'")


# -- persistent state ------------------------------------------------------------------


def test_the_persistent_state_survives_being_written_out_and_read_back() -> None:
    rig = Rig(environ={"KILL_OLD_DELAY": "5"}).serving()
    rig.supervisor.on_signal(signal.SIGHUP)
    rig.advance(1.0)  # 1 retiring, 2 serving
    rig.supervisor.on_signal(signal.SIGHUP)  # 3 starting
    text = json.dumps(rig.supervisor.snapshot())
    other = Rig(environ={"KILL_OLD_DELAY": "5"})
    other.host.clock = rig.host.clock
    other.supervisor.restore(json.loads(text))
    assert other.supervisor.snapshot() == rig.supervisor.snapshot()
    assert other.supervisor.next_deadline() == rig.supervisor.next_deadline()
    assert [other.state(n) for n in (1, 2, 3)] == [State.RETIRING, State.SERVING, State.STARTING]
    other.until_next_deadline()  # the restored one goes on where the first left off
    assert other.state(3) is State.SERVING


def test_waiting_clients_are_handed_over_by_what_they_wait_for() -> None:
    """Each client records its reload; the hand-over names it by its place in
    the list of clients handed over, whatever order they asked in."""
    rig = Rig(require_notify=True).serving_by_notify()
    starting, queued, idle = Answers(), Answers(), Answers()
    rig.supervisor.on_request("reload", starting)  # starts generation 2
    rig.supervisor.on_request("reload", queued)  # waits for the next reload
    assert starting.waits_for is rig.supervisor.ledger.in_flight[-1]
    assert queued.waits_for is rig.supervisor.ledger.next
    data = json.loads(json.dumps(rig.supervisor.snapshot([queued, idle, starting])))
    assert [r["answers"] for r in data["reloads"]] == [[2]]
    assert data["next_reload"] is not None and data["next_reload"]["answers"] == [0]
    other = Rig(require_notify=True)
    other.host.next_pid = rig.host.next_pid
    adopted = [Answers(), Answers(), Answers()]
    other.supervisor.restore(data, adopted)
    other.supervisor.on_message(rig.pid(2), {"READY": "1"})
    assert adopted[2].one[1].startswith("generation 2 is serving")
    assert adopted[0].got == adopted[1].got == []
    other.supervisor.on_message(other.pid(3), {"READY": "1"})
    assert adopted[0].one[1].startswith("generation 3 is serving")
    assert adopted[1].got == []


# -- probation: a new generation that dies during --kill-old-delay ------------------


def test_a_generation_dying_on_probation_gives_way_back_to_the_old_one() -> None:
    rig = Rig(environ={"KILL_OLD_DELAY": "5"}).serving()
    old = rig.pid(1)
    answers = Answers()
    rig.supervisor.on_request("reload", answers)
    rig.advance(1.0)  # 2 is ready: 1 retires, kept for 5 s
    assert (rig.state(1), rig.state(2)) == (State.RETIRING, State.SERVING)
    rig.advance(2.0)
    rig.exit(2, status=256)  # exit code 1, two seconds after it was ready
    assert rig.state(1) is State.SERVING and rig.pid(1) == old
    assert rig.host.signals == []  # the old one was never signalled
    assert answers.one == (
        False,
        "generation 2 died 2.0s after it was ready, exit code 1, within --kill-old-delay; "
        f"generation 1 (pid {old}) keeps serving",
    )
    assert rig.host.status_file == [(1, old)]
    # No restart loop while a healthy generation serves: nothing is due.
    assert rig.supervisor.next_deadline() is None
    assert rig.supervisor.policy.failures == 1
    assert f"generation 1 (pid {old}) keeps serving" in rig.log
    assert f"worker {old} (generation 1) serves again" in rig.log
    assert rig.host.systemd[-1]["STATUS"].startswith("reload failed: generation 2 died")
    # The next request tries the new code again, and may succeed.
    again = Answers()
    rig.supervisor.on_request("reload", again)
    rig.advance(1.0)
    rig.until_next_deadline()
    assert again.one == (True, f"generation 3 is serving; sent TERM to worker {old}")
    assert rig.supervisor.policy.failures == 0


def test_a_death_after_the_probation_is_a_crash_of_the_serving_generation() -> None:
    rig = Rig(environ={"KILL_OLD_DELAY": "5"}).serving()
    rig.supervisor.on_signal(signal.SIGHUP)
    rig.advance(1.0)
    rig.until_next_deadline()  # 1 signalled: the probation is over
    assert rig.state(1) is State.DRAINING
    rig.exit(2, status=256)
    assert "died unexpectedly" in rig.log
    assert rig.state(3) is State.STARTING  # respawned at once, as before


def test_a_reload_during_a_probation_replaces_the_new_generation_not_the_kept_one() -> None:
    rig = Rig(environ={"KILL_OLD_DELAY": "5"}).serving()
    rig.supervisor.on_signal(signal.SIGHUP)
    rig.advance(1.0)  # 2 serves on probation, 1 kept
    rig.supervisor.on_signal(signal.SIGHUP)
    rig.advance(1.0)  # 3 serves, 2 retires too
    assert [rig.state(n) for n in (1, 2, 3)] == [State.RETIRING, State.RETIRING, State.SERVING]
    rig.exit(3, status=256)
    assert rig.state(2) is State.SERVING and rig.state(1) is State.RETIRING
    rig.until_next_deadline()
    assert rig.host.signals == [(rig.pid(1), TERM)]


# -- --max-draining -------------------------------------------------------------------


def test_max_draining_stops_the_oldest_with_signal_on_term() -> None:
    rig = Rig(max_draining=2, signal_on_hup=signal.SIGUSR1).serving()
    pids = [rig.pid(1)]
    for number in (2, 3, 4):
        rig.supervisor.on_signal(signal.SIGHUP)
        rig.advance(1.0)
        pids.append(rig.pid(number))
    # 1, 2 and 3 were replaced; the third over the cap stops the oldest.
    assert [rig.state(n) for n in (1, 2, 3, 4)] == [
        State.EVICTED,
        State.DRAINING,
        State.DRAINING,
        State.SERVING,
    ]
    usr1 = signal.SIGUSR1
    assert rig.host.signals == [(pids[0], usr1), (pids[1], usr1), (pids[2], usr1), (pids[0], TERM)]
    assert "more than 2 old generations draining (--max-draining): evicting the oldest" in rig.log
    evicted = rig.supervisor.status()["generations"][0]
    assert evicted["state"] == "evicted"
    rig.advance(85.0)  # --stop-timeout
    assert (pids[0], KILL) in rig.host.signals


def test_without_max_draining_old_generations_pile_up() -> None:
    rig = Rig().serving()
    for _ in range(4):
        rig.supervisor.on_signal(signal.SIGHUP)
        rig.advance(1.0)
    assert [rig.state(n) for n in (1, 2, 3, 4)] == [State.DRAINING] * 4


# -- what it reports: --status and the metrics file -------------------------------------

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "status.schema.json").read_text()
)


def reported(
    rig: Rig,
) -> tuple[dict[str, object], dict[str, dict[tuple[tuple[str, str], ...], float]], str]:
    """The status (checked against the documented schema), the metrics file's
    samples as Prometheus's own parser reads them, and the table."""
    status = json.loads(json.dumps(rig.supervisor.status()))
    jsonschema.validate(status, SCHEMA)
    rig.supervisor.publish()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(rig.host.metrics[-1]):
        assert family.documentation, family.name
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    table = status_table(status, rig.host.clock + WALL_OFFSET)
    return status, samples, table


def states(status: dict[str, object]) -> list[tuple[int, str]]:
    generations = status["generations"]
    assert isinstance(generations, list)
    return [(g["generation"], g["state"]) for g in generations]


def test_status_and_metrics_through_a_reload_a_failure_and_a_stop() -> None:
    rig = Rig(environ={"KILL_OLD_DELAY": "5"}, metrics_file="metrics.prom")
    rig.supervisor.start()
    status, samples, table = reported(rig)  # starting
    assert states(status) == [(1, "starting")] and status["serving_generation"] is None
    assert status["last_reload"] is None
    assert samples["server_starter_serving_generation"][()] == 0
    assert samples["server_starter_generations"][(("state", "starting"),)] == 1
    assert "serving: no generation" in table and "last reload: none yet" in table

    rig.advance(1.0)
    status, samples, table = reported(rig)  # serving
    assert states(status) == [(1, "serving")] and status["serving_generation"] == 1
    assert samples["server_starter_last_reload_successful"][()] == 1
    assert f"  1           {rig.pid(1)}  serving" in table

    rig.supervisor.on_signal(signal.SIGHUP)
    status, samples, table = reported(rig)  # a reload in progress
    assert states(status) == [(1, "serving"), (2, "starting")]
    last = status["last_reload"]
    assert isinstance(last, dict) and last["outcome"] == "in_progress"
    assert samples["server_starter_reload_in_progress"][()] == 1
    assert "last reload: generation 2 in progress" in table

    rig.advance(2.0)
    status, samples, table = reported(rig)  # 2 on probation, 1 retiring
    assert states(status) == [(1, "retiring"), (2, "serving")]
    generations = status["generations"]
    assert isinstance(generations, list)
    assert generations[1]["probation_until"] == rig.host.clock + 5 + WALL_OFFSET
    assert "on probation for 5.0s more" in table

    rig.advance(1.0)
    rig.exit(2, status=256)
    status, samples, table = reported(rig)  # a failed reload: 1 serves again
    assert states(status) == [(1, "serving")]
    last = status["last_reload"]
    assert isinstance(last, dict)
    assert last["outcome"] == "failed" and last["duration_seconds"] == 3.0
    assert "died 1.0s after it was ready" in last["reason"]
    assert status["reloads"] == {"succeeded": 0, "failed": 1, "in_progress": 0}
    assert samples["server_starter_last_reload_successful"][()] == 0
    assert samples["server_starter_reloads_total"][(("outcome", "failed"),)] == 1
    assert samples["server_starter_worker_exits_total"][(("reason", "probation"),)] == 1
    assert "last reload: generation 2 failed" in table and "failures in a row: 1" in table

    rig.supervisor.on_signal(signal.SIGHUP)
    rig.advance(1.0)
    rig.until_next_deadline()  # 1 signalled after the delay
    status, samples, table = reported(rig)  # a successful reload: 1 draining
    assert states(status) == [(1, "draining"), (3, "serving")]
    assert status["reloads"] == {"succeeded": 1, "failed": 1, "in_progress": 0}
    assert samples["server_starter_last_reload_successful"][()] == 1
    assert samples["server_starter_last_reload_duration_seconds"][()] == 6.0
    assert samples["server_starter_last_reload_success_timestamp_seconds"][()] == (
        rig.host.clock + WALL_OFFSET
    )
    rig.exit(1)
    assert reported(rig)[0]["worker_exits"] == {
        "failed_start": 0,
        "probation": 1,
        "died": 0,
        "oom_killed": 0,
        "drained": 1,
        "evicted": 0,
        "killed": 0,
        "stopped": 0,
    }

    # The serving one crashes soon after it was ready: its death carries on
    # the streak of the failed reload, so the respawn backs off.
    rig.exit(3, status=256)
    status, samples, table = reported(rig)  # no generation serves
    assert states(status) == [] and status["serving_generation"] is None
    assert status["next_retry_at"] == rig.host.clock + 1.0 + WALL_OFFSET
    assert samples["server_starter_failure_streak"][()] == 2
    assert "serving: no generation" in table and "next retry: in 1.0s" in table

    rig.supervisor.on_signal(signal.SIGTERM)
    status, samples, table = reported(rig)
    assert status["stopping"] is True and ", stopping" in table


def test_the_record_is_handed_over_in_an_upgrade() -> None:
    rig = Rig().serving()
    rig.supervisor.on_signal(signal.SIGHUP)
    rig.advance(1.0)
    data = json.loads(json.dumps(rig.supervisor.snapshot()))
    other = Rig()
    other.host.clock = rig.host.clock
    other.supervisor.restore(data)
    assert other.supervisor.status() == rig.supervisor.status()
    # 0.1's hand-over has no record: the new image starts counting.
    del data["record"]
    for generation in data["generations"]:
        del generation["since"]
    other = Rig()
    other.supervisor.restore(data)
    assert other.supervisor.status()["reloads"]["succeeded"] == 0


def test_the_metrics_escape_what_they_quote() -> None:
    rig = Rig().serving()
    status = rig.supervisor.status()
    status["superdaemon"]["version"] = 'a"b\\c'
    families = {f.name: f for f in text_string_to_metric_families(metrics_text(status))}
    assert families["server_starter_info"].samples[0].labels["version"] == 'a"b\\c'


def test_metrics_labels_go_on_every_series() -> None:
    rig = Rig(metrics_file="m.prom", metrics_labels=["unit=app@one.service", "team=a\\b"])
    rig.supervisor.start()
    rig.supervisor.publish()
    for family in text_string_to_metric_families(rig.host.metrics[-1]):
        for sample in family.samples:
            assert sample.labels["unit"] == "app@one.service", sample
            assert sample.labels["team"] == "a\\b", sample


@pytest.mark.parametrize(
    ("label", "why"),
    [
        ("unit", "is not NAME=VALUE"),
        ("1unit=x", "is not a Prometheus label name"),
        ("__name__=x", "is not a Prometheus label name"),
        ("state=x", "one the metrics use themselves"),
    ],
)
def test_a_metrics_label_that_cannot_be_is_refused(label: str, why: str) -> None:
    with pytest.raises(SettingError, match=why):
        parse_label(label)


# -- rolling reloads (--max-surge) ---------------------------------------------------

TTIN, TTOU = signal.SIGTTIN, signal.SIGTTOU


class Pool:
    """The worker counts of generations that take part in rolling reloads,
    as gunicorn keeps them: a SIGTTIN raises the target at once and boots a
    worker later, a SIGTTOU lowers it at once and the worker exits after its
    drain.  Each step is a report to the supervisor, as the real one sends."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.counts: dict[int, list[int]] = {}  # generation: [ready, target, full]
        self.seen = 0  # host.signals answered so far
        self.peak_alive = 0
        self.least_ready = 10**6

    def report(self, number: int, ready: int, target: int, full: int, **fields: str) -> None:
        self.counts[number] = [ready, target, full]
        message = {"X_SERVER_STARTER_WORKERS": f"{ready}/{target}/{full}", **fields}
        self.rig.supervisor.on_message(self.rig.pid(number), message)
        self.measure()

    def measure(self) -> None:
        alive = [n for n in self.counts if self.rig.state(n) is not State.REAPED]
        self.peak_alive = max(self.peak_alive, sum(max(*self.counts[n][:2]) for n in alive))
        serving = sum(min(*self.counts[n][:2]) for n in alive)
        self.least_ready = min(self.least_ready, serving)

    def answer_signals(self, boot: bool = True) -> None:
        """Answer every SIGTTIN and SIGTTOU sent, and those they lead to."""
        by_pid = {g.pid: g.number for g in self.rig.supervisor.generations}
        while self.seen < len(self.rig.host.signals):
            pid, sent = self.rig.host.signals[self.seen]
            self.seen += 1
            number = by_pid.get(pid)
            if number is None or sent not in (TTIN, TTOU):
                continue
            ready, target, full = self.counts[number]
            if sent is TTOU:
                self.report(number, ready, target - 1, full)
                self.report(number, ready - 1, target - 1, full)  # drained, exited
            else:
                self.report(number, ready, target + 1, full)
                if boot:
                    self.report(number, ready + 1, target + 1, full)


def rolling_rig(full: int = 4, surge: int = 1) -> tuple[Rig, Pool]:
    """Generation 1 serving ``full`` workers, generation 2 ready with ``surge``."""
    rig = Rig(require_notify=True, ready_timeout=60.0, max_surge=surge)
    pool = Pool(rig)
    rig.supervisor.start()
    assert "SERVER_STARTER_START_WORKERS" not in rig.host.environs[rig.pid(1)]
    pool.report(1, full, full, full, READY="1")
    assert rig.state(1) is State.SERVING
    return rig, pool


def start_roll(rig: Rig, pool: Pool, surge: int = 1, full: int = 4) -> Answers:
    answers = Answers()
    rig.supervisor.on_request("reload", answers)
    assert rig.host.environs[rig.pid(2)]["SERVER_STARTER_START_WORKERS"] == str(surge)
    pool.report(2, surge, surge, full, READY="1")
    assert rig.state(2) is State.ROLLING
    return answers


def test_a_roll_moves_the_workers_one_at_a_time_within_the_surge() -> None:
    rig, pool = rolling_rig()
    answers = start_roll(rig, pool)
    assert "is ready with 1 of 4 workers (READY=1); rolling it in, 1 at a time" in rig.log
    # The serving one gives up a worker first: 4 + 1 is the surge already.
    assert rig.host.signals == [(rig.pid(1), TTOU)]
    pool.answer_signals()
    assert rig.state(2) is State.SERVING
    assert rig.state(1) is State.DRAINING
    ttous = [s for s in rig.host.signals if s == (rig.pid(1), TTOU)]
    ttins = [s for s in rig.host.signals if s == (rig.pid(2), TTIN)]
    assert (len(ttous), len(ttins)) == (3, 3)  # the old one's last worker goes with it
    assert rig.host.signals[-1] == (rig.pid(1), TERM)
    assert pool.peak_alive == 5  # the steady state plus --max-surge
    assert pool.least_ready == 4  # and never fewer ready than the steady state
    assert answers.one == (True, f"generation 2 is serving; sent TERM to worker {rig.pid(1)}")
    assert "is ready (all 4 workers ready)" in rig.log
    status = rig.supervisor.status()
    assert [g["workers"] for g in status["generations"]] == [
        {"ready": 1, "target": 1, "full": 4},
        {"ready": 4, "target": 4, "full": 4},
    ]


def test_a_larger_surge_moves_more_workers_at_once() -> None:
    rig, pool = rolling_rig(full=6, surge=2)
    answers = start_roll(rig, pool, surge=2, full=6)
    pool.answer_signals()
    assert rig.state(2) is State.SERVING
    assert pool.peak_alive <= 8
    assert pool.least_ready >= 6
    assert answers.one[0]


def test_a_roll_whose_next_worker_is_never_ready_stops_and_the_old_one_grows_back() -> None:
    rig, pool = rolling_rig()
    answers = start_roll(rig, pool)
    pool.answer_signals(boot=False)  # generation 2's second worker never boots
    assert rig.host.signals[-1] == (rig.pid(2), TTIN)
    assert rig.state(2) is State.ROLLING
    assert rig.until_next_deadline() == 60.0
    assert rig.state(2) is State.FAILED
    assert rig.host.signals[-2:] == [(rig.pid(2), TERM), (rig.pid(1), TTIN)]
    assert "had 1 of 4 workers ready, and no more within 60s (--ready-timeout)" in rig.log
    assert answers.got == []  # answered at its exit, with why
    rig.exit(2)
    ok, message = answers.one
    assert not ok
    assert "had 1 of 4 workers ready, and no more within 60s" in message
    assert "the old generation keeps serving" in message
    pool.answer_signals()
    assert pool.counts[1] == [4, 4, 4]
    assert rig.state(1) is State.SERVING
    assert pool.least_ready >= 3  # one of 4 was moving: the surge's worker replaced it


def test_a_generation_that_dies_midway_fails_the_reload_and_the_old_one_grows_back() -> None:
    rig, pool = rolling_rig()
    answers = start_roll(rig, pool)
    # Step 2 of 4: the old one gave up a worker, the new one is growing to 2.
    pool.report(1, 4, 3, 4)
    pool.report(1, 3, 3, 4)
    assert rig.host.signals[-1] == (rig.pid(2), TTIN)
    rig.supervisor.on_exit(rig.pid(2), KILL.value, oom_killed=True)
    ok, message = answers.one
    assert not ok
    assert "exited during its roll with 1 of 4 workers ready" in message
    assert "by the OOM killer" in message
    assert "the old generation keeps serving" in message
    assert rig.host.signals[-1] == (rig.pid(1), TTIN)  # grown back, one at a time
    pool.seen = len(rig.host.signals) - 1
    pool.answer_signals()
    assert pool.counts[1] == [4, 4, 4]
    assert rig.state(1) is State.SERVING
    assert rig.supervisor.status()["worker_exits"]["oom_killed"] == 1


def test_a_reload_asked_during_a_roll_follows_it() -> None:
    rig, pool = rolling_rig()
    first = start_roll(rig, pool)
    second = Answers()
    rig.supervisor.on_request("reload", second)
    assert "generation 2 is still starting; will reload again once it is ready" in rig.log
    assert len(rig.supervisor.generations) == 2
    pool.answer_signals()
    assert first.one[0]
    assert rig.state(3) is State.STARTING  # after the roll, not beside it
    assert rig.host.environs[rig.pid(3)]["SERVER_STARTER_START_WORKERS"] == "1"
    assert second.got == []


def test_a_stop_during_a_roll_drains_both_generations() -> None:
    rig, pool = rolling_rig()
    answers = start_roll(rig, pool)
    pool.report(1, 4, 3, 4)
    rig.supervisor.on_signal(TERM)
    assert rig.state(1) is State.DRAINING and rig.state(2) is State.DRAINING
    assert answers.one == (False, "start_server is stopping")
    sent = len(rig.host.signals)
    pool.report(1, 3, 3, 4)  # its reports go on; no further roll step
    assert len(rig.host.signals) == sent
    rig.exit(1)
    rig.exit(2)
    assert rig.supervisor.finished


def test_a_roll_is_handed_over_in_an_in_place_upgrade() -> None:
    rig, pool = rolling_rig()
    start_roll(rig, pool)
    pool.report(1, 4, 3, 4)
    data = json.loads(json.dumps(rig.supervisor.snapshot()))
    other = Rig(require_notify=True, ready_timeout=60.0, max_surge=1)
    other.supervisor.restore(data)
    assert other.supervisor.snapshot() == rig.supervisor.snapshot()
    assert other.state(2) is State.ROLLING
    pool.rig = other
    pool.seen = len(other.host.signals)
    pool.report(1, 3, 3, 4)  # the old one's worker exits after the upgrade
    pool.answer_signals()
    assert other.state(2) is State.SERVING
    assert other.state(1) is State.DRAINING


def test_a_program_that_reports_no_workers_gets_the_whole_overlap_said_once() -> None:
    rig = Rig(require_notify=True, max_surge=1).serving_by_notify()
    for number in (2, 3):
        rig.supervisor.request_reload(None, None)
        assert "SERVER_STARTER_START_WORKERS" not in rig.host.environs[rig.pid(number)]
        rig.ready(number)
        assert rig.state(number) is State.SERVING
    assert rig.log.count("reports no workers (X_SERVER_STARTER_WORKERS)") == 1
    assert not [s for s in rig.host.signals if s[1] in (TTIN, TTOU)]


def test_max_surge_needs_require_notify_and_a_worker_count() -> None:
    with pytest.raises(SettingError, match="--max-surge applies only with --require-notify"):
        Settings(["app"], max_surge=1).check()
    rig, pool = rolling_rig()
    rig.supervisor.on_message(rig.pid(1), {"X_SERVER_STARTER_WORKERS": "4/4"})
    assert "sent X_SERVER_STARTER_WORKERS='4/4', not READY/TARGET/FULL: ignored" in rig.log
    assert pool.counts[1] == [4, 4, 4]


# -- the loop, with the host's events ------------------------------------------------


def test_the_loop_handles_the_hosts_events_in_order_until_it_has_stopped() -> None:
    rig = Rig(require_notify=True)
    answers = Answers()
    first, second = rig.host.next_pid + 1, rig.host.next_pid + 2
    rig.host.script = [
        [Notified(first, {"READY": "1"})],
        [Requested("reload", answers)],
        [Notified(second, {"READY": "1"}), Exited(first, 0)],
        [Signalled(TERM)],
        # Handled: the last worker's exit ends the loop; what follows is not read.
        [Exited(second, 0), Signalled(signal.SIGHUP)],
    ]
    rig.supervisor.start()
    assert rig.supervisor.loop() == 0
    assert rig.host.script == []
    assert answers.one == (True, f"generation 2 is serving; sent TERM to worker {first}")
    assert "received HUP" not in rig.log
    assert rig.log.rstrip().endswith("exiting")
    # Idle between events: every wait but the stop's had no deadline.
    assert rig.host.waits[:4] == [60.0 + 1000.0, None, 60.0 + 1000.0, None]


def test_the_loop_runs_what_is_due_when_nothing_happens() -> None:
    rig = Rig(interval=2.0)
    pid = rig.host.next_pid + 1
    rig.host.script = [[], [Signalled(TERM)], [Exited(pid, 0)]]
    rig.supervisor.start()
    assert rig.supervisor.loop() == 0
    assert rig.host.waits[0] == 1002.0  # the interval's deadline
    assert "is ready (alive after 2s)" in rig.log


class FakeUpgrader(Upgrader):
    def __init__(self) -> None:
        self.checks = 0
        self.results: list[tuple[Checked, list[Answer | None]]] = []

    def check(self) -> None:
        self.checks += 1

    def checked(self, checked: Checked, answers: Sequence[Answer | None]) -> None:
        self.results.append((checked, list(answers)))


def test_the_upgrade_check_runs_beside_the_loop_and_answers_all_who_asked_meanwhile() -> None:
    rig = Rig(require_notify=True).serving_by_notify()
    upgrader = rig.supervisor.upgrader = FakeUpgrader()
    first, second = Answers(), Answers()
    rig.supervisor.on_request("upgrade", first)
    assert upgrader.checks == 1
    # The loop goes on while the installed version is checked: a reload runs.
    rig.supervisor.request_reload(None, None)
    rig.ready(2)
    assert rig.state(2) is State.SERVING
    rig.supervisor.on_request("upgrade", second)
    rig.supervisor.on_signal(signal.SIGUSR2)
    assert upgrader.checks == 1  # one check answers them all
    rig.supervisor.handle(Checked("9.9", None))
    ((checked, answers),) = upgrader.results
    assert checked.version == "9.9"
    assert answers == [first, second, None]
    assert first.waits_for == "upgrade" and second.waits_for == "upgrade"


def test_a_stop_during_the_upgrade_check_refuses_the_upgrade() -> None:
    rig = Rig(require_notify=True).serving_by_notify()
    upgrader = rig.supervisor.upgrader = FakeUpgrader()
    asked = Answers()
    rig.supervisor.on_request("upgrade", asked)
    rig.supervisor.on_signal(TERM)
    rig.supervisor.handle(Checked("9.9", None))
    assert upgrader.results == []
    assert asked.one == (False, "start_server is stopping")


def test_a_stopped_roll_still_running_after_the_stop_timeout_is_killed() -> None:
    rig, pool = rolling_rig()
    start_roll(rig, pool)
    pool.answer_signals(boot=False)
    rig.until_next_deadline()  # --ready-timeout: the roll stops, TERM
    assert rig.state(2) is State.FAILED
    pool.answer_signals()  # generation 1 grows back
    assert rig.until_next_deadline() == 85.0  # --stop-timeout
    assert rig.host.signals[-1] == (rig.pid(2), KILL)
    assert rig.state(2) is State.FAILED
    assert rig.supervisor.next_deadline() is None  # its exit comes next


def test_a_start_killed_for_no_ready_by_an_earlier_version_is_failed_after_the_upgrade() -> None:
    rig = Rig(require_notify=True, ready_timeout=30.0).serving_by_notify()
    rig.supervisor.request_reload(None, None)
    data = json.loads(json.dumps(rig.supervisor.snapshot()))
    data["generations"][1].update(state="killed", deadline=None)  # as 0.1 wrote it
    for entry in data["generations"]:
        for newer in ("workers", "resize", "failure"):
            del entry[newer]
    other = Rig(require_notify=True, ready_timeout=30.0)
    other.supervisor.restore(data)
    assert other.state(2) is State.FAILED
    other.exit(2, status=9)
    assert other.state(1) is State.SERVING
    assert "seems to have failed to start" in other.log


def test_a_generation_shrunk_by_hand_is_left_as_the_operator_set_it() -> None:
    rig, pool = rolling_rig()
    pool.report(1, 4, 3, 4)  # an operator's SIGTTOU to gunicorn
    pool.report(1, 3, 3, 4)
    assert not [s for s in rig.host.signals if s[1] in (TTIN, TTOU)]
    # A roll that fails leaves it as it was when the roll began: 3.
    answers = start_roll(rig, pool)
    assert rig.host.signals[-1] == (rig.pid(2), TTIN)  # 3 + 1 + 1: within the surge
    pool.answer_signals(boot=False)
    rig.until_next_deadline()  # generation 2's next worker is not ready in time
    rig.exit(2)
    assert not answers.one[0]
    pool.answer_signals()
    assert pool.counts[1] == [3, 3, 4]
    assert (rig.pid(1), TTIN) not in rig.host.signals


def test_a_generation_started_small_grows_whole_when_the_serving_one_died_meanwhile() -> None:
    rig, pool = rolling_rig()
    answers = Answers()
    rig.supervisor.on_request("reload", answers)
    rig.exit(1, status=9)  # dies while generation 2 starts with 1 worker
    pool.report(2, 1, 1, 4, READY="1")
    assert rig.state(2) is State.ROLLING
    pool.answer_signals()
    assert rig.state(2) is State.SERVING
    assert pool.counts[2] == [4, 4, 4]
    assert answers.one[0]


def test_a_generation_whose_workers_the_oom_killer_takes_fails_at_once() -> None:
    """gunicorn respawns a worker the OOM killer took: without this rule the
    start would churn until --ready-timeout."""
    rig, pool = rolling_rig()
    rig.supervisor.settings.given["max_surge"] = None  # the whole overlap
    answers = Answers()
    rig.supervisor.on_request("reload", answers)
    pool.report(2, 2, 4, 4)
    assert rig.state(2) is State.STARTING
    rig.host.oom_killed = 1
    pool.report(2, 1, 4, 4)  # a booted worker of generation 2 killed
    assert rig.state(2) is State.FAILED
    assert rig.host.signals[-1] == (rig.pid(2), TERM)  # gracefully: it may serve already
    rig.exit(2)
    ok, message = answers.one
    assert not ok
    assert message == (
        "generation 2 failed to start: 1 process of the service killed by the OOM killer: "
        "the service is out of memory (MemoryMax=?); the old generation keeps serving"
    )
    assert rig.state(1) is State.SERVING
