"""Model registry: ``make(name, num_classes, input_shape, norm=...)`` returns a pure Model."""

from __future__ import annotations

from jaxmia.base import Model
from jaxmia.errors import UserError
from jaxmia.models import bert, cnn, densenet, layers, mlp, resnet, vgg

REGISTRY = {
    "mlp": mlp.make,
    "small_cnn": cnn.make,
    "resnet18": resnet.make_resnet18,
    "resnet20": resnet.make_resnet20,
    "vgg16": vgg.make,
    "densenet121": densenet.make,
    **bert.REGISTRY,
}
IMAGE_ONLY = ("small_cnn", "resnet18", "resnet20", "vgg16", "densenet121")
TEXT_ONLY = tuple(bert.REGISTRY)


def check_name(name: str) -> None:
    if name not in REGISTRY:
        raise UserError(f"unknown model '{name}'; choose one of {', '.join(REGISTRY)}")


PRETRAINED = ("minilm", "minilm_2l")


def default_lr(name: str) -> float:
    """Adam's default learning rate: 5e-5 for fine-tuning the pretrained BERTs (BERT's own
    fine-tuning range), 1e-3 (the papers') for everything trained from scratch."""
    return 5e-5 if name in PRETRAINED else 1e-3


def check_data(name: str, dataset: str, text_data: bool) -> None:
    """Refuses a text model on non-text data and the other way round (both are [N, F] arrays)."""
    if text_data and name not in TEXT_ONLY:
        raise UserError(f"{dataset} is text (token ids); model '{name}' cannot read it: use one "
                        f"of {', '.join(TEXT_ONLY)}")
    if name in TEXT_ONLY and not text_data:
        raise UserError(f"model '{name}' reads token ids, and {dataset} is not a text dataset; "
                        "use it with sst2, cola, mrpc or rte")


def check_norm(name: str, norm: str | None) -> None:
    """Refuses an unknown norm layer, and any norm for the BERTs (theirs are LayerNorms)."""
    if norm is None:
        return
    layers.check_norm(norm)
    if name in TEXT_ONLY:
        raise UserError(f"model '{name}' has BERT's LayerNorms and takes no --norm; drop it")


def make(name: str, num_classes: int, input_shape, norm: str | None = None) -> Model:
    """Builds model ``name``.

    ``norm`` is 'batch', 'group' or 'none'; None keeps the architecture's default (BatchNorm for
    the ResNets, VGG and DenseNet, none for the small CNN; the MLP has no norm layers).
    """
    check_name(name)
    if name in IMAGE_ONLY and len(input_shape) != 3:
        raise UserError(f"model '{name}' needs image inputs (H, W, C) but the data has shape "
                        f"{tuple(input_shape)}; use --model=mlp for tabular data")
    check_norm(name, norm)
    kwargs = {} if norm is None else {"norm": norm}
    return REGISTRY[name](num_classes, input_shape, **kwargs)
