#!/usr/bin/env bash
# The whole test suite: lint, unit, integration (real libvirtd, QEMU guests, tgtd, PostgreSQL) and
# end-to-end. The integration harness starts and stops its own PostgreSQL, managers and agents.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/start-libvirtd.sh
bash scripts/start-tgtd.sh
.venv/bin/ruff check src tests benchmarks
.venv/bin/mypy src
.venv/bin/lint-imports --no-cache
# The slowest tests, so that what makes the suite long is seen in every run.
exec .venv/bin/python -m pytest --durations=25 tests "$@"
