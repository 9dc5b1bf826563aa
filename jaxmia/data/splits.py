"""Data splits exactly as mia_prune's ``pretrain.py`` makes them, so results are comparable.

pool = official train + test. ``train_test_split(range(N), test_size=0.5, random_state=seed)``
gives the target half and the shadow half. Inside a half, ``test_size=0.45`` gives the
non-members ("test"), and the rest is split with ``test_size=0.1818`` into train and dev
(about 45/10/45). Shadow ``i`` (from 0) repeats that on the shadow half with
``random_state=seed + i``, so shadow splits overlap each other but never touch the target half.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from sklearn.model_selection import train_test_split


@dataclasses.dataclass(frozen=True)
class Split:
    """Index arrays into the dataset pool for one model."""

    train: np.ndarray  # members
    dev: np.ndarray  # early-stopping set
    test: np.ndarray  # non-members

    def as_dict(self) -> dict[str, list[int]]:
        return {k: getattr(self, k).tolist() for k in ("train", "dev", "test")}


def _split_half(half: list[int], random_state: int) -> Split:
    train, test = train_test_split(half, test_size=0.45, random_state=random_state)
    train, dev = train_test_split(train, test_size=0.1818, random_state=random_state)
    return Split(*(np.asarray(a, np.int64) for a in (train, dev, test)))


def mia_prune_splits(num_examples: int, num_shadows: int, seed: int = 7) -> list[Split]:
    """Returns ``[target_split, shadow_0_split, ..., shadow_{K-1}_split]``.

    Example:
      >>> s = mia_prune_splits(5010, num_shadows=2, seed=7)  # Location's pool.
      >>> [len(s[0].train), len(s[0].dev), len(s[0].test)]
      [1126, 251, 1128]
    """
    target_half, shadow_half = train_test_split(list(range(num_examples)), test_size=0.5,
                                                random_state=seed)
    return [_split_half(target_half, seed)] + [_split_half(shadow_half, seed + i)
                                               for i in range(num_shadows)]
