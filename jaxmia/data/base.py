"""The dataset record and the helpers every loader shares (locating files, clear errors)."""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

from jaxmia.errors import UserError

DATA_DIR_ENV = "JAXMIA_DATA_DIR"


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset pool: the official train and test sets concatenated, as mia_prune uses them.

    Attributes:
      name: registry name.
      x: float32 inputs, already normalized (images NHWC, tabular [N, F]).
      y: int32 labels in [0, num_classes).
      num_classes: number of classes.
      input_shape: shape of one input (``x.shape[1:]``).
      mean, std: the per-channel normalization applied to ``x`` (None where none is applied).
      source: the file or TFDS directory the arrays came from.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    num_classes: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    source: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return int(self.x.shape[0])


def make_dataset(name, x, y, num_classes, source, mean=None, std=None) -> Dataset:
    """Validates and normalizes raw arrays into a :class:`Dataset`."""
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y).astype(np.int32)
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise UserError(f"{name}: {source} holds {x.shape[0]} inputs but {y.shape[0]} labels; "
                        "the file is corrupt, download it again")
    if y.min() < 0 or y.max() >= num_classes:
        raise UserError(f"{name}: labels in {source} fall outside [0, {num_classes}); "
                        "the file is corrupt or of another dataset")
    if mean is not None:
        x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return Dataset(name=name, x=x, y=y, num_classes=num_classes, source=source,
                   mean=None if mean is None else tuple(mean),
                   std=None if std is None else tuple(std))


def subsample(ds: Dataset, size: int | None, seed: int) -> Dataset:
    """``size`` rows of ``ds`` drawn without replacement by ``seed`` (kept in pool order); None:
    ``ds`` itself. A UserError where the pool is smaller."""
    if size is None:
        return ds
    if size > len(ds):
        raise UserError(f"--pool_size={size} exceeds {ds.name}'s {len(ds)} rows; pass at most "
                        f"{len(ds)} or leave it unset")
    rows = np.sort(np.random.default_rng(seed).permutation(len(ds))[:size])
    return dataclasses.replace(ds, x=ds.x[rows], y=ds.y[rows],
                               source=f"{ds.source} ({size} of {len(ds)} rows, seed {seed})")


def resolve_data_dir(data_dir: str | None) -> str | None:
    """The data directory: the flag's value, else ``$JAXMIA_DATA_DIR``, else None."""
    return data_dir or os.environ.get(DATA_DIR_ENV) or None


def find_file(dataset: str, data_dir: str | None, candidates: Sequence[str], origin: str) -> str:
    """Returns the first existing ``data_dir/candidate``, or raises a one-line UserError.

    Args:
      dataset: the dataset's registry name, for the message.
      data_dir: the resolved data directory (None when neither flag nor env var is set).
      candidates: relative paths to try, in order.
      origin: where the user can get the file.
    """
    if data_dir is None:
        raise UserError(f"{dataset}: no data directory given; pass --data_dir=DIR or set "
                        f"{DATA_DIR_ENV} to the folder holding {candidates[0]} (get it from {origin})")
    tried = [os.path.join(data_dir, c) for c in candidates]
    for path in tried:
        if os.path.isfile(path):
            return path
    raise UserError(f"{dataset}: {os.path.basename(candidates[0])} not found (looked for "
                    f"{', '.join(tried)}); get it from {origin} and pass its folder as --data_dir")
