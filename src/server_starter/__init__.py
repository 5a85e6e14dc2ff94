"""server-starter: zero-downtime restarts for network daemons, the systemd way.

The superdaemon (``start_server``) owns the listening sockets and runs the
application as generations of child processes that inherit them in the
``SERVER_STARTER_PORT`` format of Perl's Server::Starter.  Applications use
:mod:`server_starter.listener` to pick the sockets up.
"""

__version__ = "0.1.0"
