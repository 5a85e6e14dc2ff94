"""``python3 -m server_starter.upgrade --check FORMAT | --all``: the in-place
upgrade's command line (superdaemon/upgrade.py), at the path that installed
versions call and the package's postinst runs."""

import sys

from .superdaemon.upgrade import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
