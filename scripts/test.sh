#!/usr/bin/env bash
# Set up (scripts/setup.sh), lint with ruff, then run the whole test suite in parallel.
# Usage: bash scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/ruff check cnflow tests scripts density_examples benchmarks docs/conf.py
# One test process per core (pytest-xdist), each with one torch thread: the tests are small
# and mostly single-threaded, so two processes on two cores take about half the time of one.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
.venv/bin/python -m pytest -n auto "$@"
