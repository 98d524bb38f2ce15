# Developer and CI entry points; .ci/run calls `make test` unchanged.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install run test lint typecheck pytest unit integration e2e bench clean

$(BIN)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

install: $(BIN)/.installed

## The main job: a local Kafka broker and a 3-node cluster (one standalone node without Java).
run: install
	$(BIN)/ratelimiter up

## Everything CI checks: lint, types, then unit, integration (real Kafka) and e2e (processes).
test: install lint typecheck pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest $(PYTEST_ARGS)

unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration: install
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

e2e: install
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m stress_test.bench_core
	$(BIN)/python -m stress_test.bench_http

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
