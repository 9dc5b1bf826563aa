#!/usr/bin/env bash
# Sets up .venv and runs the membership-inference audit (flags pass through; default: digits).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python experiments/audit.py "$@"
