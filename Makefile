# Ferryman's developer commands. `make run` and `make test` are the two the README promises work on a
# fresh machine: each creates .venv and installs what it needs first.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck format check-tools bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,otlp]'
	touch $(STAMP)

## Serve the embedded example (fake provider, no keys, no Redis, no database) on :8000.
run: $(STAMP)
	$(BIN)/ferryman serve --host 0.0.0.0 --port 8000

## Install what the suite needs, lint, type-check, then run every test.
test: $(STAMP) check-tools lint typecheck
	$(BIN)/pytest --cov --cov-report=term:skip-covered

check-tools: $(STAMP)
	bash scripts/install-test-services.sh
	@if [ -f scripts/install-deploy-tools.sh ]; then bash scripts/install-deploy-tools.sh; fi
	@if [ -f scripts/install-observability-tools.sh ]; then bash scripts/install-observability-tools.sh; fi

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/bandit -c pyproject.toml -r src -q

typecheck: $(STAMP)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

## The overhead benchmark: direct vs Ferryman vs LiteLLM, written to bench/RESULTS.md.
bench: $(STAMP)
	$(BIN)/python bench/run.py

## The spend-ledger benchmark: a month of 1 M ledger rows in a throwaway PostgreSQL database, then
## GET /admin/spend grouped by key per day, timed; written to bench/LEDGER.md.
.PHONY: bench-ledger
bench-ledger: $(STAMP)
	$(BIN)/python bench/ledger.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
