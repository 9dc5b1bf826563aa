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
- ``label_synonym`` (text only; needs WordNet): as ``label_aug``, with copies in which one
  random word is replaced by a random WordNet synonym (EDA's synonym replacement: words of one
  piece that are WordNet lemmas and not stop words; a synonym may take several pieces, and the
  rest moves right). Of the four edits it is the one that keeps the text most natural.
Word pieces are all tokens but [CLS], [SEP] and [PAD], which no edit touches. The attacks are
the same global thresholds as the image ones (:mod:`jaxmia.attacks.label_only`).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from jaxmia.attacks import threshold
from jaxmia.models.bert import CLS_ID, FIRST_PIECE_ID, MASK_ID, PAD_ID, SEP_ID

FEATURES = ("label_aug", "label_noise", "label_boundary", "label_synonym")
TEXT_ONLY = ("label_synonym",)  # the others are the image attacks' names
MAX_SYNONYM_PIECES = 4


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


@dataclasses.dataclass(frozen=True)
class SynonymTable:
    """Which word pieces can be replaced, and by what (:func:`synonym_table`)."""
    options: dict  # a whole word's piece id -> its synonyms, each a tuple of piece ids
    shortest: np.ndarray  # [vocab] pieces of the shortest synonym (0: not replaceable)
    continuation: np.ndarray  # [vocab] bool: a '##' piece (the rest of a word)


def synonym_table(tokenizer, lemmas: dict) -> SynonymTable:
    """The replaceable words of ``tokenizer``'s vocabulary (a piece that is a whole word, of
    letters only, not an English stop word, with WordNet synonyms in ``lemmas``:
    :func:`jaxmia.data.wordnet.synonyms`) and their synonyms' piece ids (at most
    ``MAX_SYNONYM_PIECES``, none unknown to the tokenizer)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    vocab = tokenizer.get_vocab()
    size = max(vocab.values()) + 1
    continuation = np.zeros(size, bool)
    continuation[[i for token, i in vocab.items() if token.startswith("##")]] = True
    words = {i: token for token, i in vocab.items()
             if i >= FIRST_PIECE_ID and token.isalpha() and token not in ENGLISH_STOP_WORDS
             and lemmas.get(token)}
    flat = sorted({s for token in words.values() for s in lemmas[token]})
    encoded = dict(zip(flat, tokenizer(flat, add_special_tokens=False)["input_ids"]))
    unknown = tokenizer.unk_token_id
    options, shortest = {}, np.zeros(size, np.int64)
    for i, token in sorted(words.items()):
        found = tuple(tuple(encoded[s]) for s in lemmas[token]
                      if 0 < len(encoded[s]) <= MAX_SYNONYM_PIECES and unknown not in encoded[s])
        if found:
            options[i] = found
            shortest[i] = min(len(f) for f in found)
    return SynonymTable(options, shortest, continuation)


def replace_one(ids: np.ndarray, rng: np.random.Generator, table: SynonymTable) -> np.ndarray:
    """Each row with one random replaceable word replaced by a random synonym that fits the row
    (rows with none unchanged). A replaceable word is one piece followed by no '##' piece."""
    n, t = ids.shape
    length = (ids != PAD_ID).sum(1)
    following = np.concatenate([ids[:, 1:], np.full((n, 1), PAD_ID, ids.dtype)], 1)
    room = (t - length)[:, None]
    shortest = table.shortest[ids]
    spots = (shortest > 0) & ~table.continuation[following] & (shortest - 1 <= room)
    out = ids.copy()
    for i in np.flatnonzero(spots.any(1)):
        j = rng.choice(np.flatnonzero(spots[i]))
        fits = [s for s in table.options[int(ids[i, j])] if len(s) - 1 <= room[i, 0]]
        new = np.r_[ids[i, :j], fits[rng.integers(len(fits))], ids[i, j + 1:length[i]]]
        out[i] = np.r_[new, np.full(t - len(new), PAD_ID)]
    return out


def mask_first(ids: np.ndarray, rank: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Each row with its word pieces of ``rank < r`` (per row) replaced by [MASK]."""
    return np.where(rank < r[:, None], MASK_ID, ids).astype(ids.dtype)


def query_features(predict_labels, x: np.ndarray, y: np.ndarray, seed: int, *,
                   features=FEATURES[:3], copies: int = 10, rate: float = 0.1,
                   noise_draws: int = 20, directions: int = 8, vocab_size: int = 30522,
                   synonyms: SynonymTable | None = None) -> dict:
    """The ``features`` (module docstring) of token ids ``x`` ``[n, T]`` with labels ``y``.
    ``predict_labels(batch) -> labels`` is the only access to the model; the batches it gets are
    token ids of the same shape and dtype as ``x``. ``label_synonym`` needs ``synonyms``.

    The edits are drawn in one order whatever is asked (only the queries of features not asked
    are skipped), so a feature's value does not depend on which others are asked."""
    unknown = set(features) - set(FEATURES)
    if unknown:
        raise ValueError(f"unknown text label-only feature(s) {sorted(unknown)}")
    if "label_synonym" in features and synonyms is None:
        raise ValueError("label_synonym needs a SynonymTable (synonyms=)")
    rng = np.random.default_rng(seed)
    x = np.asarray(x)
    y = np.asarray(y)
    ids = x.astype(np.int64)

    def correct(edited, rows=slice(None)):
        return predict_labels(edited.astype(x.dtype)) == y[rows]

    def kept(copies_):  # the original and its copies: the fraction still classified correctly
        return np.mean([is_correct] + [correct(c) for c in copies_], 0)

    out = {}
    is_correct = correct(ids)
    deleted = [delete_one(ids, rng) for _ in range(copies)]
    if "label_aug" in features:
        out["label_aug"] = kept(deleted)
    noisy = [substitute(ids, rng, rate, vocab_size) for _ in range(noise_draws)]
    if "label_noise" in features:
        out["label_noise"] = np.mean([correct(c) for c in noisy], 0)
    where = pieces(ids)
    count = where.sum(1)
    # Random orders of each row's pieces (non-pieces sort past every piece).
    orders = [np.where(where, rng.random(ids.shape), np.inf) for _ in range(directions)]
    if "label_boundary" in features:
        best = count.astype(float)  # masking every piece: the most any order can need
        for keys in orders:
            rank = np.argsort(np.argsort(keys, 1), 1)
            flips = is_correct & ~correct(mask_first(ids, rank, count))
            lo, hi = np.zeros_like(count), count.copy()  # correct at lo, wrong at hi
            while np.any(step := flips & (hi - lo > 1)):  # only unresolved rows are queried
                mid = (lo[step] + hi[step]) // 2
                wrong = ~correct(mask_first(ids[step], rank[step], mid), step)
                hi[step] = np.where(wrong, mid, hi[step])
                lo[step] = np.where(wrong, lo[step], mid)
            best = np.minimum(best, np.where(flips, hi, count))
        boundary = np.where(count > 0, best / np.maximum(count, 1), 1.0)
        out["label_boundary"] = np.where(is_correct, boundary, 0.0)
    if "label_synonym" in features:
        out["label_synonym"] = kept([replace_one(ids, rng, synonyms) for _ in range(copies)])
    return out


REGISTRY = {name: functools.partial(threshold.make_global, name) for name in TEXT_ONLY}
