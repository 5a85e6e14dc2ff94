"""The workers of a superdaemon that died under systemd: the units'
``ExecStopPost=start_server --drain-orphans``.

When the superdaemon dies (SIGKILL, the OOM killer, a crash), its workers
live on, re-parented to the service manager, with requests in flight.
systemd then stops the service without ``ExecStop=``: SIGTERM to the main
process (gone), and with ``KillMode=mixed`` SIGKILL to the rest of the cgroup
at once, failing every request in flight.  The units set ``SendSIGKILL=no``
so that ``ExecStopPost=`` runs instead, with ``$SERVICE_RESULT`` saying how
the service ended:

- the superdaemon died (``signal``, ``core-dump``, ``exit-code``,
  ``oom-kill``, ``watchdog``): send the orphans their drain signal, wait until
  they have exited (up to ``--stop-timeout``), then SIGKILL what is left;
  connections arriving meanwhile wait in the socket unit's backlog for the
  restarted superdaemon;
- any other end (``success``: it drained everything itself; ``timeout``:
  it hung): SIGKILL whatever is left at once, as systemd's own final SIGKILL
  would have.

Either way the cgroup is empty when it returns: systemd refuses to start a
``SendSIGKILL=no`` service while processes of it remain.

The orphans are every process of our own service's cgroup but us (our
parent is the service manager, outside it): the units' sandbox
(``PrivateUsers=``, ``ProtectProc=invisible``) hides the other processes'
``/proc`` entries, so who is whose child cannot be told; a worker's children
get the drain signal with it, which gunicorn's and the like drain on too.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Iterable

from . import procfs


class OrphansError(Exception):
    """--drain-orphans run where it cannot act (exit 2)."""


# $SERVICE_RESULT values for which the main process itself ended the run
# (systemd.exec(5)): its workers may still be running.
SUPERDAEMON_DIED = frozenset({"signal", "core-dump", "exit-code", "oom-kill", "watchdog"})


def drain(environ: dict[str, str], own_pid: int, sent: signal.Signals, timeout: float) -> str:
    """What ``ExecStopPost=`` does (see above); returns what it did, in a line."""
    result = environ.get("SERVICE_RESULT")
    if result is None:
        raise OrphansError("--drain-orphans is for ExecStopPost= in a systemd service")
    said = []
    if result in SUPERDAEMON_DIED:
        how = "/".join(filter(None, (environ.get("EXIT_CODE"), environ.get("EXIT_STATUS"))))
        said.append(f"start_server died ({how or result})")
        pidfds = {}
        for pid in find(own_pid):
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue  # gone meanwhile
            try:
                signal.pidfd_send_signal(pidfd, sent)
            except ProcessLookupError:
                os.close(pidfd)
                continue
            pidfds[pid] = pidfd
        if pidfds:
            waited = time.monotonic()
            running = _wait(pidfds, waited + timeout)
            said.append(
                f"sent {sent.name} to its workers {_pids(pidfds)}"
                + (
                    f"; {_pids(running)} still running after {timeout:g}s"
                    if running
                    else f": all exited in {time.monotonic() - waited:.1f}s"
                )
            )
        else:
            said.append("no worker of it was left")
    else:
        said.append(f"service stopped ({result})")
    left = find(own_pid)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if left:
        said.append(f"sent KILL to what was left: {_pids(left)}")
    return "; ".join(said)


def _pids(pids: Iterable[int]) -> str:
    return " ".join(map(str, sorted(pids)))


def _wait(pidfds: dict[int, int], deadline: float) -> list[int]:
    """Until every pidfd is readable (its process exited) or the deadline;
    returns the pids still running."""
    poller = select.poll()
    by_fd = {fd: pid for pid, fd in pidfds.items()}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    while by_fd and (remaining := deadline - time.monotonic()) > 0:
        for fd, _ in poller.poll(remaining * 1000):
            poller.unregister(fd)
            os.close(fd)
            del by_fd[fd]
    for fd in by_fd:
        os.close(fd)
    return sorted(by_fd.values())


def find(own_pid: int) -> list[int]:
    """The orphans of our service (see above), lowest pid first."""
    return sorted(_service_members() - _ancestors(own_pid))


def _service_members() -> set[int]:
    path = _own_cgroup()
    if path is None or not path.endswith(".service"):
        return set()
    try:
        with open(path + "/cgroup.procs") as procs:
            return {int(line) for line in procs if line.strip()}
    except (OSError, ValueError):
        return set()


def _own_cgroup() -> str | None:
    """Our cgroup's directory: systemd's own hierarchy under cgroup v1 or
    hybrid mode (``name=systemd``), else the unified one (cgroup v2)."""
    cgroups = procfs.own_cgroups()
    for _, controllers, path in cgroups:
        if controllers == "name=systemd":
            return f"{procfs.CGROUP_ROOT}/systemd{path}"
    return next(
        (f"{procfs.CGROUP_ROOT}{path}" for hierarchy, _, path in cgroups if hierarchy == "0"), None
    )


def _ancestors(pid: int) -> set[int]:
    found = {pid}
    while (parent := procfs.parent(pid)) is not None and parent > 0 and parent not in found:
        found.add(parent)
        pid = parent
    return found
