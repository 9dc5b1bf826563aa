"""Image datasets: digits (embedded), CIFAR-10 (JPEG npz or TFDS), Fashion-MNIST (IDX), and the
TFDS-only ones (CIFAR-100, SVHN, CHMNIST). All come out NHWC float32, normalized per channel.
"""

from __future__ import annotations

import gzip
import io
import os
import zipfile

import numpy as np

from jaxmia.data.base import Dataset, find_file, make_dataset
from jaxmia.errors import UserError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # mia_prune's CIFAR normalization.
CIFAR_STD = (0.2023, 0.1994, 0.2010)
HALF = (0.5, 0.5, 0.5)  # mia_prune's SVHN / CHMNIST normalization.
TFDS_HINT = ("prepare it on a machine with internet with `tfds build {name} --data_dir=DIR` "
             "and pass DIR as --data_dir")
FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def load_digits(data_dir: str | None = None) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes): the embedded default."""
    del data_dir  # Unused: the data ships inside scikit-learn.
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]  # Pixel values 0..16 -> [0, 1].
    return make_dataset("digits", x, d.target, 10, "sklearn.datasets.load_digits",
                        mean=(0.5,), std=(0.5,))


def _decode_jpegs(blob: np.ndarray, offsets: np.ndarray, path: str) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(offsets) - 1, 32, 32, 3), np.uint8)
    raw = blob.tobytes()
    try:
        for i in range(len(out)):
            img = Image.open(io.BytesIO(raw[offsets[i]:offsets[i + 1]])).convert("RGB")
            out[i] = np.asarray(img)
    except (OSError, ValueError) as e:
        raise UserError(f"cifar10: image {i} in {path} does not decode ({type(e).__name__}); the "
                        "file is corrupt, copy it again") from None
    return out


def load_cifar10(data_dir: str | None) -> Dataset:
    """CIFAR-10: ``cifar10/cifar10_jpeg_q75.npz`` if present, else a prepared TFDS ``cifar10``."""
    npz_candidates = ["cifar10/cifar10_jpeg_q75.npz", "cifar10_jpeg_q75.npz"]
    if data_dir and not any(os.path.isfile(os.path.join(data_dir, c)) for c in npz_candidates):
        if os.path.isdir(os.path.join(data_dir, "cifar10")) and any(
                os.path.isdir(os.path.join(data_dir, "cifar10", v))
                for v in os.listdir(os.path.join(data_dir, "cifar10"))):
            return load_tfds("cifar10", data_dir)
    path = find_file("cifar10", data_dir, npz_candidates,
                     "the JPEG pack of ../shared/data/cifar10, or a TFDS directory with cifar10")
    try:
        with np.load(path, allow_pickle=False) as z:
            parts = {k: z[k] for k in ("train_jpeg", "train_offsets", "train_labels",
                                       "test_jpeg", "test_offsets", "test_labels")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"cifar10: {path} is not a readable CIFAR-10 JPEG pack "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        "copy it again") from None
    x = np.concatenate([_decode_jpegs(parts["train_jpeg"], parts["train_offsets"], path),
                        _decode_jpegs(parts["test_jpeg"], parts["test_offsets"], path)])
    y = np.concatenate([parts["train_labels"], parts["test_labels"]])
    return make_dataset("cifar10", x / 255.0, y, 10, path, CIFAR_MEAN, CIFAR_STD)


def _read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        magic = int.from_bytes(data[:4], "big")
        if magic >> 8 != 0x08:  # IDX magic: 0x00 0x00 <type=0x08 ubyte> <ndim>.
            raise ValueError(f"bad IDX magic {magic:#x}")
        ndim = magic & 0xFF
        shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
        arr = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
        return arr.reshape(shape)
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"fashion_mnist: {path} is not a readable IDX file ({e}); reinstall "
                        "Debian's dataset-fashion-mnist or download it again") from None


def load_fashion_mnist(data_dir: str | None) -> Dataset:
    """Fashion-MNIST from IDX files: ``data_dir/fashion_mnist/`` or Debian's install folder."""
    origin = "`apt-get install dataset-fashion-mnist` or https://github.com/zalandoresearch/fashion-mnist"
    dirs = ([os.path.join(data_dir, "fashion_mnist"), os.path.join(data_dir, "fashion-mnist")]
            if data_dir else []) + [FASHION_DIR]
    parts = {}
    for part in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        paths = [os.path.join(d, part + ext) for d in dirs for ext in (".gz", "")]
        found = next((p for p in paths if os.path.isfile(p)), None)
        if found is None:
            raise UserError(f"fashion_mnist: {part}.gz not found (looked in {', '.join(dirs)}); "
                            f"get it with {origin}")
        parts[part] = _read_idx(found)
    x = np.concatenate([parts["train-images-idx3-ubyte"], parts["t10k-images-idx3-ubyte"]])
    y = np.concatenate([parts["train-labels-idx1-ubyte"], parts["t10k-labels-idx1-ubyte"]])
    return make_dataset("fashion_mnist", x[..., None] / 255.0, y, 10, os.path.dirname(found),
                        mean=(0.5,), std=(0.5,))


_TFDS = {  # registry name -> (TFDS name, splits, classes, normalization, resize)
    "cifar10": ("cifar10", ("train", "test"), 10, (CIFAR_MEAN, CIFAR_STD), None),
    "cifar100": ("cifar100", ("train", "test"), 100, (CIFAR_MEAN, CIFAR_STD), None),
    "svhn": ("svhn_cropped", ("train", "test"), 10, (HALF, HALF), None),
    "chmnist": ("colorectal_histology", ("train",), 8, (HALF, HALF), 32),
}


def load_tfds(name: str, data_dir: str | None) -> Dataset:
    """Loads a prepared TFDS dataset through ``tfds.data_source`` (no TensorFlow needed).

    The pool is the concatenation of the splits in ``_TFDS`` (official train + test). CHMNIST's
    150x150 images are resized to 32x32, as mia_prune does.
    """
    import tensorflow_datasets as tfds

    tfds_name, splits, num_classes, (mean, std), resize = _TFDS[name]
    xs, ys = [], []
    for split in splits:
        try:
            source = tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False)
        except Exception as e:  # TFDS raises several types for "not prepared here".
            raise UserError(f"{name}: no prepared TFDS '{tfds_name}' in "
                            f"{data_dir or 'the default TFDS folder'} ({type(e).__name__}); "
                            + TFDS_HINT.format(name=tfds_name)) from None
        records = [source[i] for i in range(len(source))]
        images = np.stack([np.asarray(r["image"]) for r in records])
        if resize is not None and images.shape[1] != resize:
            from PIL import Image
            images = np.stack([np.asarray(Image.fromarray(im).resize((resize, resize),
                                                                      Image.BILINEAR))
                               for im in images])
        xs.append(images)
        ys.append(np.asarray([r["label"] for r in records]))
    return make_dataset(name, np.concatenate(xs) / 255.0, np.concatenate(ys), num_classes,
                        f"tfds:{tfds_name}@{data_dir or 'default'}", mean, std)
