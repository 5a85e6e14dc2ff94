"""The test harness, shared by the tests and the benchmark: processes
(a start_server and what it runs), http_clients, load, apps, notify_socket
(systemd's side of NOTIFY_SOCKET), reporting; booted systemd containers
(machine, app_service, fleet, debs), real proxies (proxies).  The development
venv has ``tests/`` on its path (scripts/install-deps.sh), so
``from harness.processes import ...`` works from either."""
