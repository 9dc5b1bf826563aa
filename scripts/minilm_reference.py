"""Writes tests/data/minilm_reference.npz: Hugging Face's own PyTorch ``BertModel`` run on
all-MiniLM-L6-v2 for a few texts, the oracle tests/test_bert.py holds jaxmia's Flax BERT to.

Run it in the PyTorch benchmark environment (never a jaxmia dependency):
  python3 -m venv /work/bench-venv
  /work/bench-venv/bin/pip install torch==2.13.0 transformers==5.24.0 safetensors numpy
  /work/bench-venv/bin/python scripts/minilm_reference.py --model_dir=DIR
where DIR is ``.venv/bin/python -c "from jaxmia import pretrained; print(pretrained.minilm_dir())"``.
"""

import argparse
import os

import numpy as np
import torch
import transformers

SINGLE = ["it 's a charming and often affecting journey . ",
          "The sailors rode the breeze clear of the rocks."]
PAIRS = [("No Weapons of Mass Destruction Found in Iraq Yet.",
          "Weapons of Mass Destruction Found in Iraq.")]
LENGTH = 24


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                      "data", "minilm_reference.npz"))
    args = parser.parse_args()
    tok = transformers.AutoTokenizer.from_pretrained(args.model_dir)
    single = tok(SINGLE, padding="max_length", max_length=LENGTH, truncation=True)
    pair = tok([a for a, _ in PAIRS], [b for _, b in PAIRS], padding="max_length",
               max_length=LENGTH, truncation=True)
    enc = {k: np.concatenate([single[k], pair[k]]) for k in single}
    model = transformers.BertModel.from_pretrained(args.model_dir).eval()
    with torch.no_grad():
        out = model(**{k: torch.as_tensor(v) for k, v in enc.items()})
    np.savez_compressed(args.out, input_ids=enc["input_ids"].astype(np.int32),
                        token_type_ids=enc["token_type_ids"].astype(np.int32),
                        attention_mask=enc["attention_mask"].astype(np.int32),
                        last_hidden_state=out.last_hidden_state.numpy(),
                        pooler_output=out.pooler_output.numpy(),
                        versions=np.asarray([torch.__version__, transformers.__version__]))
    print(f"wrote {args.out}: {enc['input_ids'].shape[0]} texts, {LENGTH} tokens; "
          f"torch {torch.__version__}, transformers {transformers.__version__}")


if __name__ == "__main__":
    main()
