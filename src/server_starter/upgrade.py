"""Upgrading the superdaemon in place: the running process becomes the
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
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Sequence

from . import __version__
from .control import ControlServer, PidFile
from .environment import RESUME_VARIABLE
from .journal import WARNING, Event
from .serve import Serving, settings_from
from .sockets import Listener, close_all
from .supervisor import HANDLED_SIGNALS, Answer

# The hand-over's layout; a new version that cannot read the running one's
# refuses the upgrade at the check.
HANDOVER_FORMAT = 1
READS_FORMATS = (1,)
CHECK_TIMEOUT = 20.0


class UpgradeError(Exception):
    """Why an upgrade did not happen (the running version keeps serving)."""


def check_installed() -> str:
    """Run the installed version's check; return its version string."""
    import subprocess  # only here: it costs the resident superdaemon ~2 MB

    command = [sys.executable, "-m", "server_starter.upgrade", "--check", str(HANDOVER_FORMAT)]
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


def write_state(state: dict[str, object]) -> int:
    """The state in an anonymous file, at offset 0, inheritable."""
    import json  # only here: it costs the resident superdaemon ~0.5 MB

    fd = os.memfd_create("server-starter-handover", 0)
    data = json.dumps(state).encode()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def read_state(fd: int) -> dict[str, object]:
    import json

    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    os.close(fd)
    state: dict[str, object] = json.loads(b"".join(chunks))
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


def hand_over(serving: Serving, answer: Answer | None) -> None:
    """Check the installed version, then exec it with the whole state.
    Returns only when the upgrade did not happen (and says why)."""
    serving.log.event(Event.UPGRADE, "received upgrade request, checking the installed version")
    try:
        new_version = check_installed()
    except UpgradeError as err:
        _refused(serving, answer, str(err))
        return
    serving.supervisor.notify_reloading(f"upgrading start_server {__version__} to {new_version}")
    connections = serving.control.handover() if serving.control else []
    # handover() lists the live clients in the order of control.connections.
    live = serving.control.connections if serving.control else []
    by_identity = {id(client): index for index, client in enumerate(live)}
    workers = serving.host.handover()
    state: dict[str, object] = {
        "format": HANDOVER_FORMAT,
        "version": __version__,
        "environ": serving.environ,
        "systemd_socket": serving.systemd_socket,
        "to_journal": serving.to_journal,
        "listeners": [
            {
                "key": listener.key,
                "fd": listener.fd,
                "name": listener.name,
                "created_path": listener.created_path,
            }
            for listener in serving.listeners
        ],
        "created": serving.created,
        "pid_file": None
        if serving.pid_file is None
        else {"path": serving.pid_file.path, "fd": serving.pid_file.fileno()},
        "control": None
        if serving.control is None
        else {"path": serving.control_path, "fd": serving.control.sock.fileno()},
        "connections": connections,
        "workers": workers,
        "supervisor": serving.supervisor.snapshot(lambda a: by_identity.get(id(a))),
        "upgrade_answers": [] if answer is None else [by_identity[id(answer)]],
    }
    keep = [listener.fd for listener in serving.listeners]
    keep += [int(c["fd"]) for c in connections]  # type: ignore[call-overload]
    keep += [int(w["notify_fd"]) for w in workers]  # type: ignore[call-overload]
    if serving.pid_file is not None:
        keep.append(serving.pid_file.fileno())
    if serving.control is not None:
        keep.append(serving.control.sock.fileno())
    state_fd = write_state(state)
    try:
        exec_new_image(state_fd, keep)
    except OSError as err:
        os.close(state_fd)
        _refused(serving, answer, f"exec {err.filename or ''} failed: {err.strerror}")


def _refused(serving: Serving, answer: Answer | None, reason: str) -> None:
    serving.log.event(
        Event.UPGRADE,
        f"upgrade refused, start_server {__version__} keeps running: {reason}",
        priority=WARNING,
    )
    serving.supervisor.notify_systemd(f"READY=1\nSTATUS={serving.supervisor.status_text()}")
    if answer is not None:
        answer(False, reason)


def resume(args: argparse.Namespace, state_fd: int) -> int:
    """The new image's start: adopt everything the previous one handed over."""
    state = read_state(state_fd)
    environ = state["environ"]
    assert isinstance(environ, dict)
    settings = settings_from(args, environ)
    listeners = [
        Listener(
            key=str(entry["key"]),
            sock=_adopted_socket(entry["fd"], inheritable=True),
            name=entry["name"],
            created_path=entry["created_path"],
        )
        for entry in state["listeners"]  # type: ignore[attr-defined]
    ]
    created = bool(state["created"])
    with contextlib.ExitStack() as resources:
        if created:
            resources.callback(close_all, listeners)
        pid_file = None
        if state["pid_file"] is not None:
            entry = state["pid_file"]
            pid_file = PidFile.adopt(str(entry["path"]), int(entry["fd"]))  # type: ignore[index]
            resources.callback(pid_file.remove)
        control = control_path = None
        if state["control"] is not None:
            entry = state["control"]
            control_path = str(entry["path"])  # type: ignore[index]
            control = ControlServer(_adopted_socket(entry["fd"], inheritable=False))  # type: ignore[index]
            control.sock.setblocking(False)
        serving = Serving(
            resources,
            settings,
            environ,
            listeners,
            created,
            pid_file,
            control,
            control_path,
            state["systemd_socket"],  # type: ignore[arg-type]
            to_journal=bool(state["to_journal"]),
        )
        answers: list[Answer] = list(
            control.adopt(state["connections"]) if control else []  # type: ignore[arg-type]
        )
        serving.host.adopt(state["workers"])  # type: ignore[arg-type]
        serving.supervisor.restore(state["supervisor"], answers)  # type: ignore[arg-type]
        old = str(state["version"])
        serving.log.event(
            Event.UPGRADE,
            f"start_server upgraded in place from {old} to {__version__} (pid {os.getpid()}); "
            f"{len(serving.supervisor.generations)} generation(s) kept",
            old_version=old,
            new_version=__version__,
        )
        serving.supervisor.notify_systemd(f"READY=1\nSTATUS={serving.supervisor.status_text()}")
        for index in state["upgrade_answers"]:  # type: ignore[attr-defined]
            answers[index](True, f"upgraded in place from {old} to {__version__}")
        unblock_signals()
        return serving.supervisor.loop()


def _adopted_socket(fd: object, inheritable: bool) -> socket.socket:
    """A socket handed over; the listeners stay inheritable (the workers get
    them), the rest close-on-exec again, as they were."""
    assert isinstance(fd, int)
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(inheritable)
    return sock


def unblock_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)


ENTRY_POINTS = ("/usr/bin/server-starter", "/usr/bin/start_server")


def _running_superdaemons() -> list[tuple[int, list[str], dict[str, str]]]:
    """Every process running the packaged superdaemon: pid, argv, environment."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0")[:-1]]
            with open(f"/proc/{entry}/environ", "rb") as f:
                pairs = [p.decode(errors="replace") for p in f.read().split(b"\0") if b"=" in p]
        except OSError:
            continue  # gone, or not ours to read
        if len(argv) < 2 or "python3" not in os.path.basename(argv[0]):
            continue
        if argv[1] not in ENTRY_POINTS:
            continue
        if any(
            a in ("--restart", "--upgrade", "--stop", "--drain-orphans", "--version")
            for a in argv[2:]
        ):
            continue  # a client, not a superdaemon
        found.append((int(entry), argv[2:], dict(p.split("=", 1) for p in pairs)))
    return found


def _upgrade_all() -> int:
    """Ask every running packaged superdaemon to become the installed version
    (the package's postinst runs this).  Each is asked on its control socket
    when it has one, and waited for; else with SIGUSR2.  Exit 1 if any failed."""
    from .cli import parse_args
    from .control import ControlError, control_socket_path, request
    from .serve import UsageError

    failed = 0
    for pid, argv, environ in _running_superdaemons():
        try:
            args = parse_args(argv)
            path = control_socket_path(args.control_socket, args.pid_file, environ)
        except UsageError:
            path = None  # a command line this version reads otherwise: signal it instead
        if path and os.path.exists(path):
            try:
                message = request(path, "upgrade", CHECK_TIMEOUT + 10)
            except ControlError as err:
                print(f"start_server (pid {pid}) was not upgraded: {err}", file=sys.stderr)
                failed += 1
                continue
            print(f"start_server (pid {pid}): {message}")
        else:
            os.kill(pid, signal.SIGUSR2)
            print(f"start_server (pid {pid}): asked to upgrade in place (SIGUSR2; see its log)")
    return 1 if failed else 0


def _check(argv: Sequence[str]) -> int:
    """The new version's side of the check: import everything the superdaemon
    runs, and say whether the hand-over format is one it reads."""
    if len(argv) != 2 or argv[0] != "--check" or not argv[1].isdigit():
        print("usage: python3 -m server_starter.upgrade --check FORMAT | --all", file=sys.stderr)
        return 2
    from . import cli, control, host, journal, notify, serve, settings, sockets, spawn, supervisor

    del cli, control, host, journal, notify, serve, settings, sockets, spawn, supervisor
    if int(argv[1]) not in READS_FORMATS:
        print(f"version {__version__} cannot read hand-over format {argv[1]}", file=sys.stderr)
        return 1
    print(__version__)
    return 0


if __name__ == "__main__":
    sys.exit(_upgrade_all() if sys.argv[1:] == ["--all"] else _check(sys.argv[1:]))
