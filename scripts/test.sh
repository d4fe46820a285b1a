#!/usr/bin/env bash
# Set up (scripts/setup.sh), lint with ruff, then run the whole test suite.
# Usage: bash scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/ruff check cnflow tests scripts density_examples benchmarks docs/conf.py
.venv/bin/python -m pytest "$@"
