"""GLUE text classification (RTE, MRPC, CoLA, SST-2) from the standard ``glue_data`` layout,
tokenized with all-MiniLM-L6-v2's uncased WordPiece tokenizer (:mod:`jaxmia.pretrained`).

The pool is each task's labelled files, ``train.tsv`` then ``dev.tsv`` (the test files carry no
labels), as the image pools are the official train and test sets. A row becomes ``[CLS] a [SEP]``
or, for sentence pairs, ``[CLS] a [SEP] b [SEP]``, truncated (longest first) and padded with
``[PAD]`` (id 0) to the task's length, chosen from the token counts of its files (share of rows
cut: SST-2 0 of 68,221 at 64, CoLA 0 at 48, MRPC 0 at 128, RTE about 10% at 128). ``x`` holds the
ids as float32 (exact: the vocabulary has 30,522 entries), so one array is the whole input, as
elsewhere in the library; the BERT models derive the attention mask and the segment ids from it.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from jaxmia import pretrained
from jaxmia.data.base import Dataset, find_file, make_dataset
from jaxmia.errors import UserError

ORIGIN = "the GLUE benchmark's glue_data download (https://gluebenchmark.com/tasks)"


# task: folder, first and second text columns (None: single sentences), label column, whether the
# files have a header, the label names in id order (None: the labels are the ids), the length.
TASKS = {
    "sst2": ("SST-2", "sentence", None, "label", True, None, 64),
    "cola": ("CoLA", 3, None, 1, False, None, 48),
    "mrpc": ("MRPC", "#1 String", "#2 String", "Quality", True, None, 128),
    "rte": ("RTE", "sentence1", "sentence2", "label", True, ("entailment", "not_entailment"), 128),
}


def _read(path: str, task: str, header: bool, columns) -> dict:
    import pandas as pd

    try:
        df = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, header=0 if header else None,
                         encoding="utf-8-sig", keep_default_na=False, dtype=str)
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(f"{task}: {path} is not a readable GLUE .tsv ({type(e).__name__}); "
                        f"copy it again from {ORIGIN}") from None
    missing = [c for c in columns if c is not None and c not in df.columns]
    if missing or len(df) == 0:
        raise UserError(f"{task}: {path} lacks column(s) {missing or 'and rows'} (it has "
                        f"{list(df.columns)[:6]}); the file is corrupt or of another task")
    return {c: df[c].tolist() for c in columns if c is not None}


def encode(tok, first, second, length: int) -> np.ndarray:
    """Token ids ``[N, length]`` (int32) of single sentences or sentence pairs."""
    enc = tok(list(first), None if second is None else list(second), truncation=True,
              max_length=length, padding="max_length")
    return np.asarray(enc["input_ids"], np.int32)


def load_glue(task: str, data_dir: str | None) -> Dataset:
    """GLUE ``task`` ('sst2', 'cola', 'mrpc', 'rte'): train + dev rows, token ids, 2 classes."""
    folder, a, b, label, header, names, length = TASKS[task]
    paths = [find_file(task, data_dir, [f"glue/{folder}/{split}.tsv", f"{folder}/{split}.tsv",
                                        f"glue_data/{folder}/{split}.tsv"], ORIGIN)
             for split in ("train", "dev")]
    tok = pretrained.tokenizer()
    texts_a, texts_b, labels = [], [], []
    for path in paths:
        cols = _read(path, task, header, (a, b, label))
        texts_a += cols[a]
        texts_b += cols[b] if b is not None else []
        raw = cols[label]
        lookup = {n: i for i, n in enumerate(names)} if names else {"0": 0, "1": 1}
        bad = sorted({v for v in raw if v not in lookup})
        if bad:
            raise UserError(f"{task}: {path} has label(s) {bad[:3]} outside {sorted(lookup)}; the "
                            "file is corrupt or of another task")
        labels += [lookup[v] for v in raw]
    x = encode(tok, texts_a, texts_b if b is not None else None, length)
    return make_dataset(task, x, np.asarray(labels), 2, os.path.dirname(paths[0]))
