# Lamina: `make up` starts a working cloud on this machine, `make test` runs every test,
# `make check` is the fast loop (lint, types, unit tests; no daemons).
# Each target installs what is missing first and is safe to run twice.

VENV   := .venv
PYTHON ?= python3
STAMP  := $(VENV)/.installed

.PHONY: up down test check packages venv lint

packages:
	@bash scripts/install-packages.sh

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install -q --disable-pip-version-check -U pip
	@$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

venv: packages $(STAMP)

# HOSTS=N (N >= 2): N hosts on this machine, each a network namespace with its own libvirtd
# and agent (docs/hosts.md); remembered by the data directory.
up: venv
	@HOSTS="$(HOSTS)" bash scripts/up.sh

down:
	@bash scripts/down.sh

lint: venv
	@$(VENV)/bin/ruff check src tests benchmarks

# The fast loop: ruff (lint and format), mypy, the import contracts, the unit tests and the
# contract suites' halves that need no daemon (the fakes, the file store, libvirt's test
# driver), without starting one.
check: venv
	@$(VENV)/bin/ruff check src tests benchmarks
	@$(VENV)/bin/ruff format --check src tests benchmarks
	@$(VENV)/bin/mypy src
	@$(VENV)/bin/lint-imports --no-cache
	@$(VENV)/bin/python -m pytest -q -m 'not integration' tests/unit tests/contract

test: venv
	@bash scripts/test.sh
