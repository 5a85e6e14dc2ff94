#!/bin/sh
# Install what the demo, the tests or the benchmark need on Debian 12
# (bookworm), then the project's virtual environment.  Safe to run again:
# it installs only what is missing.
#
#   scripts/install-deps.sh demo    the demo alone: python3, its venv, curl
#   scripts/install-deps.sh         everything the tests and `make deb` need
#   scripts/install-deps.sh bench   the same: `make bench` needs nothing more
set -eu
WHAT="${1:-test}"

# The demo: Debian's python3 (what the package runs on) with python3-systemd
# (the package's dependency) and python3-uvloop (the example app's loop,
# recommended by its package), and curl for the README's quick start.
SYSTEM_PACKAGES="python3 python3-venv python3-systemd python3-uvloop curl"
if [ "$WHAT" != demo ]; then
# The tests: Perl's start_server to compare with, ab for load,
# systemd-socket-activate.
SYSTEM_PACKAGES="$SYSTEM_PACKAGES libserver-starter-perl apache2-utils systemd"
# gunicorn as Debian ships it (20.1), tested beside the newest from PyPI.
SYSTEM_PACKAGES="$SYSTEM_PACKAGES python3-gunicorn"
# Clients people run under start_server, proven in the tests: Starman (PSGI,
# through Net::Server::SS::PreFork), and the sdnotify readiness library.
SYSTEM_PACKAGES="$SYSTEM_PACKAGES starman libnet-server-ss-prefork-perl python3-sdnotify"
# The proxies users put in front (the keep-alive pools the drain must not
# break), wrk for HTTP/1.1 keep-alive load, and Debian's aiohttp (3.8) beside
# PyPI's newest in the venv.
SYSTEM_PACKAGES="$SYSTEM_PACKAGES nginx haproxy wrk python3-aiohttp"
# make deb: building the packages offline, and checking them.
SYSTEM_PACKAGES="$SYSTEM_PACKAGES dpkg-dev debhelper dh-python python3-all python3-setuptools pybuild-plugin-pyproject lintian"
# End-to-end tests: Debian 12 and 13 root file systems booted with systemd-nspawn,
# and the ssh client Ansible reaches a fleet of them with.
SYSTEM_PACKAGES="$SYSTEM_PACKAGES systemd-container debootstrap openssh-client"
# Go: the Go recipe (docs/go.md) is built and reloaded under load by the
# tests, and the seed's Go program runs in make bench beside our apps.
SYSTEM_PACKAGES="$SYSTEM_PACKAGES golang-go"
# make bench: its plot; and uWSGI, whose chain reload MODE=memory measures
# beside rolling reloads (--max-surge).
SYSTEM_PACKAGES="$SYSTEM_PACKAGES python3-matplotlib uwsgi-core uwsgi-plugin-python3"
fi

missing=""
for pkg in $SYSTEM_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "installing Debian packages:$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi

# Debian's python3 is the interpreter the package runs on; the venv sees its
# python3-systemd through --system-site-packages.
if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
if [ ! -f .venv/.installed-demo ] || [ pyproject.toml -nt .venv/.installed-demo ]; then
    .venv/bin/pip install -q --disable-pip-version-check -e .
    touch .venv/.installed-demo
fi
[ "$WHAT" = demo ] && exit 0
# The list below is in this script: a venv made before a change to it gets it.
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ] || [ "$0" -nt .venv/.installed ]; then
    # uvicorn-worker: what server_starter.uvicorn_worker builds on where it is
    # installed (Debian's python3 keeps uvicorn.workers); it needs gunicorn 21
    # or later, so the venv has PyPI's gunicorn over Debian's 20.1.
    .venv/bin/pip install -q --disable-pip-version-check -e . \
        pytest pytest-timeout hypothesis ruff mypy uvicorn uvicorn-worker "aiohttp>=3.9" \
        jsonschema prometheus-client \
        "ansible-core>=2.19"
    # The test harness (tests/harness), importable by the tests and the bench alike.
    site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    echo "$(pwd)/tests" > "$site/server-starter-tests.pth"
    touch .venv/.installed
fi
# The newest gunicorn from PyPI, apart from Debian's (no system site-packages).
if [ ! -x .venv-gunicorn/bin/python ]; then
    /usr/bin/python3 -m venv .venv-gunicorn
    .venv-gunicorn/bin/pip install -q --disable-pip-version-check gunicorn
fi
