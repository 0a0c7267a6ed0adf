# Lamina: `make up` starts a working cloud on this machine, `make test` runs every test.
# Each target installs what is missing first and is safe to run twice.

VENV   := .venv
PYTHON ?= python3
STAMP  := $(VENV)/.installed

.PHONY: up down test packages venv lint

packages:
	@bash scripts/install-packages.sh

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install -q --disable-pip-version-check -U pip
	@$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

venv: packages $(STAMP)

up: venv
	@bash scripts/up.sh

down:
	@bash scripts/down.sh

lint: venv
	@$(VENV)/bin/ruff check src tests benchmarks

test: venv
	@bash scripts/test.sh
