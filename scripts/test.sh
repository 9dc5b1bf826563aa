#!/usr/bin/env bash
# Sets up .venv, lints (pyflakes errors, syntax, import order), then runs the whole test suite
# (2 workers), doctests of jaxmia/ included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check --select F,E9,I jaxmia experiments tests benchmarks
exec .venv/bin/python -m pytest -n 2 -q --doctest-modules tests jaxmia "$@"
