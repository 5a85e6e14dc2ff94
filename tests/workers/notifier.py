"""A worker that reports ready with a notify client people use, named by its
argument: ``sdnotify`` (the PyPI/Debian library) or ``systemd`` (python3-systemd's
``systemd.daemon.notify``); then it waits for its signal.  (The third client,
``systemd-notify --ready``, is run from ``notifier.sh``.)"""

import signal
import sys

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
how = sys.argv[1]
if how == "sdnotify":
    import sdnotify

    sdnotify.SystemdNotifier().notify("READY=1")
elif how == "systemd":
    from systemd import daemon

    if not daemon.notify("READY=1"):
        sys.exit("systemd.daemon.notify found no NOTIFY_SOCKET")
else:
    sys.exit(f"unknown notify client {how!r}")
signal.sigwait({signal.SIGTERM})
