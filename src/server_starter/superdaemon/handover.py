"""The in-place upgrade's hand-over: the running process becomes the
installed version by ``exec``, keeping its pid (systemd's MainPID), its
listening sockets, its control socket and every worker.

The hand-over, in the old image:

1. check the installed program: ``python3 -m server_starter.upgrade --check
   FORMAT`` imports every module of the new version and says whether it
   reads this hand-over format; if not, nothing changes;
2. write the whole state (settings' argv, environment, listeners, control
   socket and the connections waiting on it, pid file, each generation with
   its pid, state and deadlines, its notify socket, counters, backoff) as
   JSON into a memfd;
3. block the signals the loop handles (they stay pending across ``exec``),
   clear close-on-exec on every descriptor handed over, and ``exec``.

The new image sees ``SERVER_STARTER_RESUME_FD``, reads the state, adopts
every descriptor, reopens a pidfd for each worker (one that exited meanwhile
is a zombie: its pidfd is readable at once and it is reaped with its real
status), unblocks the signals and carries on.  Workers are never signalled.

The state is one JSON object, typed by :class:`State`; each holder writes
its own part and adopts it back (``Listener``, ``PidFile``,
``ControlServer`` and its connections, ``SystemHost`` for the workers,
``Supervisor.snapshot`` and ``restore``).  A waiting client is named by its
place in ``connections``: in its reload's ``answers``, or in
``upgrade_answers``.  Compatibility rule: ``HANDOVER_FORMAT`` names the
layout; a version reads every format in ``READS_FORMATS``, and a change
that an older reader would misread gets a new number (the new version's
check then refuses the upgrade before anything changes).  Every descriptor
the state names is written through :meth:`Descriptors.keep`, which is the
list of those left open across ``exec``: none can be named and closed.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

from .environment import RESUME_VARIABLE
from .supervisor import HANDLED_SIGNALS

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs the resident superdaemon ~2 MB; annotations need no import
    from typing import TypedDict

    from .control import ConnectionState, OpenFile
    from .host import WorkerState
    from .sockets import ListenerState
    from .supervisor import SupervisorState

    class State(TypedDict):
        format: int
        version: str
        environ: dict[str, str]
        systemd_socket: str | None
        to_journal: bool
        listeners: list[ListenerState]
        created: bool
        pid_file: OpenFile | None
        control: OpenFile | None
        connections: list[ConnectionState]
        workers: list[WorkerState]
        supervisor: SupervisorState
        upgrade_answers: list[int]


# The hand-over's layout; a new version that cannot read the running one's
# refuses the upgrade at the check.  Format 2 is format 1's layout holding
# what the versions that read only 1 cannot take (serve.handover_format).
HANDOVER_FORMAT = 1
READS_FORMATS = (1, 2)
CHECK_TIMEOUT = 20.0


class UpgradeError(Exception):
    """Why an upgrade did not happen (the running version carries on)."""


class Descriptors:
    """The descriptors a hand-over names: each is kept open across exec."""

    __slots__ = ("kept",)

    def __init__(self) -> None:
        self.kept: list[int] = []

    def keep(self, fd: int) -> int:
        self.kept.append(fd)
        return fd


def check_installed(layout: int = HANDOVER_FORMAT) -> str:
    """Run the installed version's check of the hand-over format ``layout``;
    return its version.  (An earlier version's image calls it with no
    argument: it imports this module from the installed files only when it
    upgrades.  Keep the names and signatures its serve.py uses.)"""
    import subprocess  # only here: it costs the resident superdaemon ~2 MB

    command = [sys.executable, "-m", "server_starter.upgrade", "--check", str(layout)]
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT,
            check=False,
            cwd="/",
        )
    except subprocess.TimeoutExpired:
        raise UpgradeError(f"the new version's check took over {CHECK_TIMEOUT:g}s") from None
    except OSError as err:
        raise UpgradeError(f"cannot run {sys.executable}: {err.strerror}") from None
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise UpgradeError(
            f"the new version fails its check: {lines[-1] if lines else 'no output'}"
        )
    return result.stdout.strip()


def write_state(state: State) -> int:
    """The state in an anonymous file, at offset 0, inheritable."""
    import json  # only here: it costs the resident superdaemon ~0.5 MB

    fd = os.memfd_create("server-starter-handover", 0)
    data = json.dumps(state).encode()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def read_state(fd: int) -> State:
    import json

    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    os.close(fd)
    state: State = json.loads(b"".join(chunks))
    if state.get("format") not in READS_FORMATS:
        raise UpgradeError(
            f"hand-over format {state.get('format')!r} is not one this version reads"
        )
    return state


def exec_new_image(state_fd: int, keep: Sequence[int]) -> None:
    """Become the installed program.  Returns only if ``exec`` failed (and then
    undoes what it changed; the caller logs the OSError it raises)."""
    was_inheritable = {fd: os.get_inheritable(fd) for fd in (state_fd, *keep)}
    for fd in was_inheritable:
        os.set_inheritable(fd, True)
    # Blocked across exec, so none is lost or acts by default (TERM would kill).
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    env = {**os.environ, RESUME_VARIABLE: str(state_fd)}
    try:
        os.execve(sys.executable, sys.orig_argv, env)
    except OSError:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        for fd, inheritable in was_inheritable.items():
            os.set_inheritable(fd, inheritable)
        raise


def unblock_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
