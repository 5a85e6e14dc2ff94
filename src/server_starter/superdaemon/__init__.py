"""The superdaemon, ``start_server``: one module per responsibility.

``cli`` reads the command line and picks the command; ``serve`` opens every
resource of a running superdaemon and releases it in reverse; ``supervisor``
is the state machine (a generation's lifecycle, reloads, the loop), which
does everything to the world through a ``Host``; ``host`` is the real one
(spawn, pidfds, signals, the ``select`` loop).  The rest serve them:
``settings``, ``sockets``, ``spawn``, ``control`` (pid file, status file, the
control socket), ``journal``, ``environment`` (the workers'), ``notify`` (the
generations' notify sockets), ``upgrade`` (in place), ``oom``, ``holders``,
``orphans``, ``procfs`` (other processes, from /proc).

Nothing outside this package imports it: the worker side and the superdaemon
share only :mod:`server_starter.contract`.
"""
