# Modelport developer commands. Everything installs into .venv; nothing is global but the
# services `make test` may start (PostgreSQL, Redis) when they are not already running.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install install-dev run test lint bench services clean

$(VENV)/.run-installed: requirements.txt requirements-run.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements-run.txt
	touch $@

$(VENV)/.dev-installed: $(VENV)/.run-installed requirements-dev.txt
	$(PIP) install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.run-installed
install-dev: $(VENV)/.dev-installed

## make run: migrate, start web + workers (+ embedded SQLite/Redis when unset), register a demo model
run: install
	$(PY) deploy/run_local.py

## make test: the whole suite against real Postgres, Redis and worker processes
test: install-dev services
	bash deploy/ci/run-tests.sh $(PY)

services:
	bash deploy/ci/ensure-services.sh

lint: install-dev
	$(PY) -m ruff check .

bench: install-dev services
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) var test-artifacts .pytest_cache
