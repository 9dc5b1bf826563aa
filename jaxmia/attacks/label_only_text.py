"""Label-only features for text models (Choquette-Choo et al., ICML 2021's three, with edits of
the token ids in place of the image perturbations): an attacker who can only send text and read
the predicted label.

Features (one per example, higher = more member-like), from ``predict_labels`` on token ids
``[n, T]`` as :mod:`jaxmia.data.text` makes them:
- ``label_aug``: fraction of the original and ``copies`` edited copies still classified
  correctly; each copy deletes one random word piece (EDA's random deletion, Wei & Zou 2019;
  the rest moves left and [PAD] fills the end).
- ``label_noise``: fraction of ``noise_draws`` copies still classified correctly, each word
  piece replaced with probability ``rate`` by a random piece of the vocabulary (the discrete
  counterpart of Gaussian input noise).
- ``label_boundary``: how much masking the label survives. Along ``directions`` random orders
  of an example's word pieces, a bisection over r finds the fewest leading pieces whose
  replacement by [MASK] changes the label; the feature is the smallest such r over the orders,
  divided by the number of pieces (1 when masking every piece keeps the label, 0 when the
  example is already misclassified).
Word pieces are all tokens but [CLS], [SEP] and [PAD], which no edit touches. The attacks are
the same global thresholds as the image ones (:mod:`jaxmia.attacks.label_only`).
"""

from __future__ import annotations

import numpy as np

from jaxmia.models.bert import CLS_ID, FIRST_PIECE_ID, MASK_ID, PAD_ID, SEP_ID


def pieces(ids: np.ndarray) -> np.ndarray:
    """Where the word pieces are: ``[n, T]`` bool (not [CLS], [SEP] or [PAD])."""
    return (ids != PAD_ID) & (ids != CLS_ID) & (ids != SEP_ID)


def delete_one(ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each row with one random word piece deleted (rows without pieces unchanged)."""
    n, t = ids.shape
    where = pieces(ids)
    count = where.sum(1)
    # The k-th piece of each row, k uniform in [0, count): its column.
    k = np.floor(rng.random(n) * np.maximum(count, 1)).astype(int)
    col = np.where(count > 0, np.argmax(np.cumsum(where, 1) > k[:, None], 1), t)
    src = np.arange(t)[None] + (np.arange(t)[None] >= col[:, None])
    out = np.take_along_axis(ids, np.minimum(src, t - 1), 1)
    return np.where(src < t, out, PAD_ID).astype(ids.dtype)


def substitute(ids: np.ndarray, rng: np.random.Generator, rate: float,
               vocab_size: int) -> np.ndarray:
    """Each word piece replaced with probability ``rate`` by a uniform piece of the vocabulary
    (ids ``FIRST_PIECE_ID`` to ``vocab_size - 1``: no [unused] or special tokens)."""
    hit = pieces(ids) & (rng.random(ids.shape) < rate)
    return np.where(hit, rng.integers(FIRST_PIECE_ID, vocab_size, ids.shape), ids).astype(
        ids.dtype)


def mask_first(ids: np.ndarray, rank: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Each row with its word pieces of ``rank < r`` (per row) replaced by [MASK]."""
    return np.where(rank < r[:, None], MASK_ID, ids).astype(ids.dtype)


def query_features(predict_labels, x: np.ndarray, y: np.ndarray, seed: int, *,
                   copies: int = 10, rate: float = 0.1, noise_draws: int = 20,
                   directions: int = 8, vocab_size: int = 30522) -> dict:
    """The three features of token ids ``x`` ``[n, T]`` with labels ``y`` (module docstring).
    ``predict_labels(batch) -> labels`` is the only access to the model; the batches it gets are
    token ids of the same shape and dtype as ``x``."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x)
    y = np.asarray(y)
    ids = x.astype(np.int64)

    def correct(edited, rows=slice(None)):
        return predict_labels(edited.astype(x.dtype)) == y[rows]

    is_correct = correct(ids)
    aug = np.mean([is_correct] + [correct(delete_one(ids, rng)) for _ in range(copies)], 0)
    noise = np.mean([correct(substitute(ids, rng, rate, vocab_size))
                     for _ in range(noise_draws)], 0)
    where = pieces(ids)
    count = where.sum(1)
    best = count.astype(float)  # masking every piece: the most any order can need
    for _ in range(directions):
        # A random order of each row's pieces: rank[i, t] (non-pieces rank past every piece).
        keys = np.where(where, rng.random(ids.shape), np.inf)
        rank = np.argsort(np.argsort(keys, 1), 1)
        flips = is_correct & ~correct(mask_first(ids, rank, count))
        lo, hi = np.zeros_like(count), count.copy()  # correct at lo (0: is_correct), wrong at hi
        while np.any(step := flips & (hi - lo > 1)):  # only the unresolved rows are queried
            mid = (lo[step] + hi[step]) // 2
            wrong = ~correct(mask_first(ids[step], rank[step], mid), step)
            hi[step] = np.where(wrong, mid, hi[step])
            lo[step] = np.where(wrong, lo[step], mid)
        best = np.minimum(best, np.where(flips, hi, count))
    boundary = np.where(count > 0, best / np.maximum(count, 1), 1.0)
    return {"label_aug": aug, "label_noise": noise,
            "label_boundary": np.where(is_correct, boundary, 0.0)}
