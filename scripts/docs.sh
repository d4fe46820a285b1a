#!/usr/bin/env bash
# Build the documentation site (Sphinx) into docs/_build/html, with warnings as errors.
# The API reference and the gallery are generated from the code and density_examples/ at
# every build; no example is run (their committed figures are shown).
# Usage: bash scripts/docs.sh [sphinx-build arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# MathJax for reading the site offline: a copy from npm when npm is present (else its CDN).
mathjax=docs/_build/mathjax
if [ ! -f "$mathjax/es5/tex-chtml.js" ] && command -v npm >/dev/null 2>&1; then
    if npm install --silent --no-audit --no-fund --prefix docs/_build/mathjax-npm mathjax@3; then
        mkdir -p "$mathjax" && cp -r docs/_build/mathjax-npm/node_modules/mathjax/es5 "$mathjax/"
    else
        echo "npm could not install MathJax; the pages load it from its CDN"
    fi
fi
.venv/bin/python -m sphinx -W --keep-going -q -b html docs docs/_build/html "$@"
echo "built docs/_build/html/index.html"
