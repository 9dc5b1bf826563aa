"""Tabular datasets from the privacytrustlab archives: Location, Purchase100, Texas100.

Each archive is parsed directly (no extracted copy is needed):
- ``dataset_location.tgz``: one file ``bangkok``, lines ``"<label>",f1,...,f446``, labels 1..30.
- ``dataset_purchase.tgz``: one file ``dataset_purchase``, lines ``<label>,f1,...,f600``, labels 1..100.
- ``dataset_texas.tgz``: ``texas/100/feats`` (6169 comma-separated 0/1 values a line) and
  ``texas/100/labels`` (one label a line, 1..100).
Features are binary and left unnormalized, as in mia_prune.
"""

from __future__ import annotations

import io
import tarfile
import zlib

import numpy as np

from jaxmia.data.base import Dataset, find_file, make_dataset
from jaxmia.errors import UserError

ORIGIN = "https://github.com/privacytrustlab/datasets"


def _read_members(path: str, dataset: str) -> dict[str, bytes]:
    try:
        with tarfile.open(path, "r:*") as tar:
            return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise UserError(f"{dataset}: {path} is not a readable .tgz archive ({type(e).__name__}); "
                        f"download it again from {ORIGIN}") from None


def _member(members: dict[str, bytes], suffix: str, path: str, dataset: str) -> bytes:
    for name, content in members.items():
        if name == suffix or name.endswith("/" + suffix):
            return content
    raise UserError(f"{dataset}: {path} has no member '{suffix}' (it holds {sorted(members)[:5]}); "
                    f"download the archive again from {ORIGIN}")


def _parse_rows(text: bytes, path: str, dataset: str, num_features: int,
                label_columns: int = 0) -> np.ndarray:
    try:
        rows = np.loadtxt(io.BytesIO(text.replace(b'"', b"")), delimiter=",", dtype=np.float32,
                          ndmin=2)
    except ValueError as e:
        raise UserError(f"{dataset}: {path} has a malformed line ({str(e).splitlines()[0]}); "
                        f"download it again from {ORIGIN}") from None
    if rows.shape[1] != num_features + label_columns:
        raise UserError(f"{dataset}: {path} has {rows.shape[1] - label_columns} features a line, "
                        f"expected {num_features}; the file is corrupt or of another dataset")
    return rows


def _label_feature_archive(dataset, data_dir, archive, member, num_features, num_classes):
    path = find_file(dataset, data_dir, [f"{dataset}/{archive}", archive,
                                         f"{dataset.rstrip('0123456789')}/{archive}"], ORIGIN)
    rows = _parse_rows(_member(_read_members(path, dataset), member, path, dataset), path, dataset,
                       num_features, label_columns=1)
    return make_dataset(dataset, rows[:, 1:], rows[:, 0] - 1, num_classes, path)


def load_location(data_dir: str | None) -> Dataset:
    """Location (Shokri et al. 2017): 5010 check-in profiles, 446 binary features, 30 classes."""
    return _label_feature_archive("location", data_dir, "dataset_location.tgz", "bangkok", 446, 30)


def load_purchase100(data_dir: str | None) -> Dataset:
    """Purchase100 (Shokri et al. 2017): 197,324 baskets, 600 binary features, 100 classes."""
    return _label_feature_archive("purchase100", data_dir, "dataset_purchase.tgz",
                                  "dataset_purchase", 600, 100)


def load_texas100(data_dir: str | None) -> Dataset:
    """Texas100 (Shokri et al. 2017): 67,330 hospital records, 6169 binary features, 100 classes."""
    path = find_file("texas100", data_dir, ["texas100/dataset_texas.tgz", "dataset_texas.tgz",
                                            "texas/dataset_texas.tgz"], ORIGIN)
    members = _read_members(path, "texas100")
    feats = _parse_rows(_member(members, "texas/100/feats", path, "texas100"), path, "texas100", 6169)
    labels = _parse_rows(_member(members, "texas/100/labels", path, "texas100"), path, "texas100", 1)
    return make_dataset("texas100", feats, labels[:, 0] - 1, 100, path)
