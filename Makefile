# Two entry points, each bootstrapping its own virtualenv from pyproject.toml:
#   make run    start the gateway with the embedded default (./.state, 127.0.0.1:8080, demo session)
#   make test   lint, type-check and run the whole test suite
#   make test-fast   only the `unit` tests (no server, no helm/Chromium/node): seconds, not minutes
#   make bench-live  fan-out against Nchan (with the latency plot) and --workers 2 vs 1, into docs/benchmarks.md
#   make bench-sessions  S sessions x 2 followers x 20 events/s against Nchan, S swept, and the
#                        connection storm, into docs/benchmarks.md
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-fast lint bench bench-live bench-sessions soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/agui-gateway serve --demo 1

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench examples
	$(BIN)/mypy gateway

test: lint
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m unit

soak: $(STAMP)
	SOAK_SECONDS=600 $(BIN)/python -m pytest -q -m slow -p no:cacheprovider --timeout 900

bench: $(STAMP)
	$(BIN)/python bench/replay.py --out docs/benchmarks.md

bench-live: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	$(BIN)/python bench/fanout.py --out docs/benchmarks.md --plot docs/fanout-latency.svg
	$(BIN)/python bench/workers.py --out docs/benchmarks.md

bench-sessions: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	$(BIN)/python bench/sessions.py --sweep 100,200,300,400 --rounds 2 --inflight 0 --out docs/benchmarks.md --plot docs/sessions-p99.svg
	$(BIN)/python bench/storm.py --out docs/benchmarks.md

clean:
	rm -rf $(VENV) .state .pytest_cache .mypy_cache .ruff_cache
