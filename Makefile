# The two set-up commands of the README: `make demo` and `make test`.
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8080

.PHONY: deps demo test lint deb bench soak clean

deps:
	@scripts/install-deps.sh

demo:
	@scripts/install-deps.sh demo
	@echo "Serving the example app on http://localhost:$(PORT)/ under start_server."
	@echo "  reload:  kill -HUP \$$(cat demo.pid)   or   $(BIN)/start_server --restart --pid-file demo.pid"
	@echo "  stop:    Ctrl-C (drains in-flight requests)"
	$(BIN)/start_server --port $(PORT) --pid-file demo.pid --status-file demo.status \
		-- $(BIN)/server-starter-example

lint: deps
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -ra --durations=20

deb: deps
	scripts/build-deb.sh

# MODE=full (default, about 10 minutes), quick (under 5) or smoke (the harness only);
# MODE=memory: a reload's memory, rolling and not (about 6 minutes; memory-smoke: the harness).
MODE ?= full
bench: deps
	@scripts/install-deps.sh bench
	$(BIN)/python bench/benchmark.py --mode=$(MODE)

# 1,000 reloads per app under load (about 15 minutes); `make test` runs 100.
soak: deps
	SOAK_RELOADS=1000 $(BIN)/pytest -q -s --timeout=3600 tests/processes/test_soak.py

clean:
	rm -rf $(VENV) .venv-gunicorn dist build .mypy_cache .ruff_cache .pytest_cache .hypothesis demo.pid demo.status
