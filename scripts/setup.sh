#!/usr/bin/env bash
# Set up a virtual environment in .venv with cnflow and its test tools, on a fresh machine.
# torch==2.13.0 is installed first (a CPU wheel on these machines), so that the range in
# setup.cfg is already met and pip never downloads a multi-GB CUDA build.
# Usage: bash scripts/setup.sh [extras]   (extras default "test"; e.g. "test,bench")
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
pip_install() { .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@"; }
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    pip_install "torch==2.13.0"
fi
pip_install -e ".[${extras}]"
