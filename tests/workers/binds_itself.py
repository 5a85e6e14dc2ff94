"""A worker with the classic bug: it binds the port itself."""

import os
import socket

sock = socket.socket()
sock.bind(("127.0.0.1", int(os.environ["PORT_TO_BIND"])))
