#!/usr/bin/env bash
# The main job: set up, then train a CNF on a built-in toy density and write a picture.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/python -m cnflow train checkerboard --max-iter 8000 --out out/
