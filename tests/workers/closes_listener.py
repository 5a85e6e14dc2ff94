"""A worker that becomes ready, then at once closes its copy of every
inherited listening socket and idles until SIGTERM: an app that shuts its
listener early.  The superdaemon's copies must keep the port open."""

import signal

from server_starter import listener

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
sockets = listener.listen_all()
listener.notify_ready("ready; closing my listeners")
for sock in sockets:
    sock.close()
signal.sigwait({signal.SIGTERM})
