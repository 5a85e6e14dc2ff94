"""Starting one worker process: fork, a clean descriptor table, exec.

The child keeps exactly stdin, stdout, stderr and the listening sockets (at
the numbers SERVER_STARTER_PORT names); everything else is closed before
exec.  An exec failure is reported back through a close-on-exec pipe, so
the superdaemon can say "no such file" instead of guessing from exit 255.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
from collections.abc import Mapping, Sequence

# Signals whose disposition Python changes at start-up; a worker must get the
# defaults (an app that inherits SIGPIPE ignored behaves differently).
_RESET_SIGNALS = (
    signal.SIGPIPE,
    signal.SIGXFSZ,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGTERM,
    signal.SIGQUIT,
    signal.SIGCHLD,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


class SpawnError(Exception):
    """The command could not be started at all (exec or chdir failed, or
    the service is out of processes or descriptors)."""


def resource_error(err: OSError) -> SpawnError:
    """A worker not started for want of a resource, with the limit to look at."""
    hint = {
        errno.EAGAIN: " (the service's TasksMax= or the user's process limit is reached)",
        errno.EMFILE: " (start_server is out of file descriptors: LimitNOFILE=)",
        errno.ENFILE: " (the system's file table is full)",
        errno.ENOMEM: " (out of memory: MemoryMax=?)",
    }.get(err.errno or 0, "")
    return SpawnError(f"cannot start a worker: {err.strerror or err}{hint}")


class Process:
    __slots__ = ("pid", "pidfd")

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.pidfd = pidfd  # readable once the process has exited


def _close_all_but(keep: Sequence[int]) -> None:
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    low = 0
    # Never call closerange with an empty range: CPython maps it onto
    # close_range(low, high - 1), and closerange(0, 0) would close everything.
    for fd in sorted(set(keep)):
        if fd > low:
            os.closerange(low, fd)
        low = max(low, fd + 1)
    if limit > low:
        os.closerange(low, limit)


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    keep_fds: Sequence[int],
    directory: str | None,
    own_process_group: bool = False,
    oom_score_adj: int | None = None,
) -> Process:
    """Fork and exec ``argv``; raise SpawnError if it could not be exec'd.
    With ``own_process_group`` the child leads a process group of its own,
    out of reach of the signals a terminal sends to ours; ``oom_score_adj``
    is set in the child before exec (best effort, see oom.py)."""
    try:
        report_read, report_write = os.pipe2(os.O_CLOEXEC)
    except OSError as err:
        raise resource_error(err) from None
    try:
        pid = os.fork()
    except OSError as err:
        os.close(report_read)
        os.close(report_write)
        raise resource_error(err) from None
    if pid == 0:  # the child: nothing here may return or raise
        stage = "prepare to exec"
        try:
            os.close(report_read)
            if own_process_group:
                os.setpgid(0, 0)
            for number in _RESET_SIGNALS:
                signal.signal(number, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            signal.set_wakeup_fd(-1)
            if oom_score_adj is not None:
                with contextlib.suppress(OSError):
                    score = os.open("/proc/self/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
                    os.write(score, str(oom_score_adj).encode())
                    os.close(score)
            stage = "chdir to"
            if directory is not None:
                os.chdir(directory)
            # Keep the report pipe until exec closes it for us.
            _close_all_but([0, 1, 2, report_write, *keep_fds])
            for fd in keep_fds:
                os.set_inheritable(fd, True)
            stage = "exec"
            os.execvpe(argv[0], list(argv), dict(env))
        except OSError as err:
            target = directory if stage == "chdir to" else argv[0]
            message = f"failed to {stage} {target}: {err.strerror or err}"
        except BaseException as err:  # the child must never unwind into our event loop
            message = f"failed to exec {argv[0]}: {err}"
        try:
            os.write(report_write, message.encode(errors="replace"))
        finally:
            os._exit(255)
    os.close(report_write)
    if own_process_group:
        # Also here, so that the group exists whichever of the two runs first
        # (EACCES: the child has exec'd, so it has done it itself).
        with contextlib.suppress(PermissionError, ProcessLookupError):
            os.setpgid(pid, pid)
    try:
        failure = b""
        while chunk := os.read(report_read, 4096):
            failure += chunk
    finally:
        os.close(report_read)
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as err:  # EMFILE: a child we could not watch must not run
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise resource_error(err) from None
    if failure:
        os.waitpid(pid, 0)
        os.close(pidfd)
        raise SpawnError(failure.decode(errors="replace"))
    return Process(pid=pid, pidfd=pidfd)


def reap(pid: int) -> int | None:
    """The raw wait status if our child ``pid`` has exited, else None."""
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return 0
    if reaped == 0:
        return None
    return status
