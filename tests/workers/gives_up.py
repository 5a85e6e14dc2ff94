"""The example app, giving up GIVE_UP_AFTER seconds after its start when
that variable is set (a deploy that fails on something it reads lazily):
it drains like a stopped generation, so it fails no request it accepted,
then exits 1."""

import os
import signal
import sys
import threading

from server_starter import example_app

after = float(os.environ.get("GIVE_UP_AFTER") or 0)
if after:
    timer = threading.Timer(after, os.kill, (os.getpid(), signal.SIGTERM))
    timer.daemon = True
    timer.start()
code = example_app.main()
sys.exit(1 if after else code)
