"""The test harness, shared by the tests and the benchmark: real processes
(support), booted systemd containers (machine), real proxies (proxies).
The development venv has ``tests/`` on its path (scripts/install-deps.sh),
so ``from harness.support import ...`` works from either."""
