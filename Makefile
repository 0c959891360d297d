# The two commands a newcomer needs: `make run` and `make test`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench soak install system-packages better-auth

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

# pgbouncer and chromium come from Debian; nothing downloads a browser.
system-packages:
	@bash scripts/ensure-system-packages

## Migrate (embedded PostgreSQL unless DATABASE_URL is set), then serve.
run: install
	$(PY) -m orchestrator_db.launch $(ARGS)

# The real Better Auth the session tests and the example drive, pinned by lock files.
better-auth:
	npm ci --prefix tests/better_auth --no-audit --no-fund --silent
	npm ci --prefix examples/trading_api/better_auth --no-audit --no-fund --silent

## The whole test suite against a real PostgreSQL, in a throwaway database.
test: install system-packages better-auth
	$(PY) -m pytest

## ruff (lint, import order) and mypy on the package; CI runs it before the tests.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

## Benchmarks against raw asyncpg and SQLAlchemy; prints ratios.
bench: install
	$(PY) -m benchmarks.run $(ARGS)

## The reliability and fuzz tests with 20x the fuzz examples and fault-injection load.
soak: install system-packages
	ORCHESTRATOR_DB_SOAK_FACTOR=20 $(PY) -m pytest tests/test_reliability.py tests/test_fuzz.py
