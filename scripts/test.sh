#!/usr/bin/env bash
# Sets up .venv and runs the whole test suite (2 workers), doctests of jaxmia/ included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n 2 -q --doctest-modules tests jaxmia "$@"
