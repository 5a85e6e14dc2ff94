"""Descriptor facts both sides need: the superdaemon when it adopts systemd's
sockets, and workers (the gunicorn adapter) when they look for theirs."""

from __future__ import annotations

import errno
import os

# sd_listen_fds(3): passed sockets start at descriptor 3.
SD_LISTEN_FDS_START = 3


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as err:
        if err.errno == errno.EBADF:
            return False
        raise
    return True
