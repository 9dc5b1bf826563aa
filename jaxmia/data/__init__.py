"""Dataset registry: ``load(name, data_dir)`` returns a :class:`Dataset` pool."""

from __future__ import annotations

import functools

from jaxmia.data import images, tabular, text
from jaxmia.data.base import DATA_DIR_ENV, Dataset, resolve_data_dir, subsample  # noqa: F401
from jaxmia.data.splits import Split, mia_prune_splits  # noqa: F401
from jaxmia.errors import UserError

REGISTRY = {
    "digits": images.load_digits,
    "location": tabular.load_location,
    "purchase100": tabular.load_purchase100,
    "texas100": tabular.load_texas100,
    "cifar10": images.load_cifar10,
    "fashion_mnist": images.load_fashion_mnist,
    "cifar100": functools.partial(images.load_tfds, "cifar100"),
    "svhn": functools.partial(images.load_tfds, "svhn"),
    "chmnist": functools.partial(images.load_tfds, "chmnist"),
    **{task: functools.partial(text.load_glue, task) for task in text.TASKS},
}
TABULAR = ("location", "purchase100", "texas100")
TEXT = tuple(text.TASKS)


def is_small(name: str) -> bool:
    """Tabular data and digits: the MLP is the default model there (resnet18 elsewhere)."""
    return name in TABULAR or name == "digits"


def is_text(name: str) -> bool:
    return name in TEXT


def is_image(name: str) -> bool:
    return name not in TABULAR and name not in TEXT


def default_model(name: str) -> str:
    """The MLP on tabular data and digits, the pretrained MiniLM on text, else ResNet-18."""
    return "mlp" if is_small(name) else "minilm" if is_text(name) else "resnet18"


def check_name(name: str) -> None:
    if name not in REGISTRY:
        raise UserError(f"unknown dataset '{name}'; choose one of {', '.join(REGISTRY)}")


def check_seed(seed: int) -> None:
    """The splits' and samplers' seeds are numpy's: an integer in [0, 2**32)."""
    if not 0 <= seed < 2**32:
        raise UserError(f"--seed must be an integer in [0, 2**32), got {seed}")


def load(name: str, data_dir: str | None = None) -> Dataset:
    """Loads dataset ``name`` from ``data_dir`` (or ``$JAXMIA_DATA_DIR``).

    Raises:
      UserError: unknown name, or a missing or corrupt file (one line: which file, where it was
        looked for, where to get it).
    """
    check_name(name)
    return REGISTRY[name](resolve_data_dir(data_dir))
