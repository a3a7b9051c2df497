# marketo-dynamics-sync — the two set-up commands are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# airbyte-source-marketo's pins clash with Airflow, so the emulator test that runs it gets its own venv.
AIRBYTE_VENV := .venv-airbyte
AIRBYTE_STAMP := $(AIRBYTE_VENV)/.installed-stamp
# Benchmark peers, each in its own venv (their pins clash with Airflow and with each other).
TAP_STAMP := .venv-tap-marketo/.installed-stamp
DATAVERSE_PEER_STAMP := .venv-airbyte-dataverse/.installed-stamp

export PYTHONPATH := $(CURDIR)/include:$(CURDIR)/plugins:$(CURDIR)
export MDS_PROJECT_DIR := $(CURDIR)
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins

.PHONY: help install install-test-clients bench bench-engine bench-quick bench-peers demo demo-fault demo-fault-off demo-check stop status prod-local prod-health prod-status load-settings install-browser lint typecheck test test-fast test-unit test-dags test-e2e parse clean

help:
	@echo "make demo    - install, start the emulators and Airflow, load airflow_settings.yaml, print the login"
	@echo "make test    - install if needed, then lint, type-check and run the whole test suite"
	@echo "make test-fast - unit, DAG integrity and mocked-HTTP hook tests: the loop while editing"
	@echo "make stop    - stop everything 'make demo' or 'make prod-local' started"
	@echo "make demo-fault - break one Dataverse endpoint: watch sync_lead fail, retry, alert and recover"
	@echo "make demo-check - compare both systems and print the differences (none expected)"
	@echo "make prod-local - PostgreSQL + CeleryExecutor (Redis) + two workers; see docs/deployment.md"

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m pip check
	touch $@

$(AIRBYTE_STAMP): tests/emulators/marketo/airbyte_venv.sh
	# PYTHONPATH would show this project's own metadata to that venv's pip check.
	env -u PYTHONPATH PYTHON=$(PYTHON) bash tests/emulators/marketo/airbyte_venv.sh $(CURDIR)/$(AIRBYTE_VENV)
	touch $@

install: $(STAMP)

install-test-clients: $(AIRBYTE_STAMP)

# Headless Chromium from Debian's packages for tests/e2e/test_browser.py (driven by Playwright,
# which never downloads a browser of its own); apt-get runs only when /usr/bin/chromium is missing.
install-browser:
	@if [ -x /usr/bin/chromium ]; then \
		echo "chromium: $$(/usr/bin/chromium --version 2>/dev/null)"; \
	elif command -v apt-get >/dev/null; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver; \
	else \
		echo "install-browser: no apt-get here; install Chromium as /usr/bin/chromium or the browser test skips"; \
	fi

$(TAP_STAMP): benchmarks/peers/tap_marketo_venv.sh
	env -u PYTHONPATH PYTHON=$(PYTHON) bash benchmarks/peers/tap_marketo_venv.sh $(CURDIR)/.venv-tap-marketo
	touch $@

$(DATAVERSE_PEER_STAMP): benchmarks/peers/dataverse_venv.sh
	env -u PYTHONPATH PYTHON=$(PYTHON) bash benchmarks/peers/dataverse_venv.sh $(CURDIR)/.venv-airbyte-dataverse
	touch $@

bench-peers: $(AIRBYTE_STAMP) $(TAP_STAMP) $(DATAVERSE_PEER_STAMP)

# Figures printed to benchmarks/results/ (JSON, Markdown, PNG), never asserted. See README "Benchmarks".
bench-quick: install bench-peers
	$(BIN)/python -m benchmarks.run --quick $(BENCH_ARGS)

bench: install bench-peers
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

# Issue 18's engine figures (full copies at 1M and 100k, incremental, transform; limits off),
# this checkout beside BEFORE (default: the previous commit), part by part: benchmarks/results/engine.*
bench-engine: install
	$(BIN)/python -m benchmarks.engine_run --before $(or $(BEFORE),HEAD~1) $(BENCH_ARGS)

demo: install
	$(BIN)/python scripts/stack.py start

# Needs a running `make demo`. The fault stays on until the alert arrives (see demo/faults.py).
demo-fault: install
	$(BIN)/python -m demo.faults on --stack-dir $${MDS_STACK_DIR:-$(CURDIR)}

demo-fault-off: install
	$(BIN)/python -m demo.faults off --stack-dir $${MDS_STACK_DIR:-$(CURDIR)}

demo-check: install
	$(BIN)/python scripts/stack.py check

stop:
	@if [ -x $(BIN)/python ]; then $(BIN)/python scripts/stack.py stop; else $(PYTHON) scripts/stack.py stop; fi

status: install
	$(BIN)/python scripts/stack.py status

# Production shape on this machine: PostgreSQL metadata DB and state store, CeleryExecutor with
# Redis, two workers (docs/deployment.md). `make stop` stops it too.
prod-local: install
	$(BIN)/python scripts/prod_stack.py start

prod-health: install
	$(BIN)/python scripts/prod_stack.py health

prod-status: install
	$(BIN)/python scripts/prod_stack.py status

load-settings: install
	AIRFLOW_HOME=$${AIRFLOW_HOME:-$(CURDIR)/.airflow} $(BIN)/python -m crm_sync.settings_loader airflow_settings.yaml

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: install
	$(BIN)/mypy include plugins dags emulators demo scripts tests

parse: install
	@for f in dags/*.py; do echo "parse $$f"; $(BIN)/python $$f || exit 1; done

# The suite runs in pytest-xdist workers (tests/conftest.py deals the long tests out first, and
# at most two tests run an Airflow stack at once: tests/support/slots.py). Many end-to-end tests
# wait on emulators and Airflow, so three workers keep two cores busy; four only made every
# stack slower. TEST_WORKERS=0 runs everything in this one process.
TEST_WORKERS ?= 3
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist worksteal)
# The edit-test loop: unit tests, DAG integrity and the hook tests against mocked HTTP.
FAST_TESTS := tests/unit tests/dags tests/hooks/test_marketo_unit.py tests/hooks/test_dynamics_unit.py tests/hooks/test_limiter.py

# MDS_REQUIRE_TEST_CLIENTS turns "independent client not installed" from a skip into a failure.
test: lint typecheck install-test-clients install-browser
	MDS_REQUIRE_TEST_CLIENTS=1 $(BIN)/python -m pytest $(XDIST) --durations=25 $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -n 2 --dist worksteal $(FAST_TESTS) $(PYTEST_ARGS)

test-unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-dags: install
	$(BIN)/python -m pytest tests/dags $(PYTEST_ARGS)

test-e2e: install
	$(BIN)/python -m pytest tests/e2e $(PYTEST_ARGS)

clean: stop
	rm -rf .airflow var .run
