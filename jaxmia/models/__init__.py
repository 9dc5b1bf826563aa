"""Model registry: ``make(name, num_classes, input_shape, norm=...)`` returns a pure Model."""

from __future__ import annotations

from jaxmia.base import Model
from jaxmia.errors import UserError
from jaxmia.models import cnn, densenet, mlp, resnet, vgg

REGISTRY = {
    "mlp": mlp.make,
    "small_cnn": cnn.make,
    "resnet18": resnet.make_resnet18,
    "resnet20": resnet.make_resnet20,
    "vgg16": vgg.make,
    "densenet121": densenet.make,
}
IMAGE_ONLY = ("small_cnn", "resnet18", "resnet20", "vgg16", "densenet121")


def check_name(name: str) -> None:
    if name not in REGISTRY:
        raise UserError(f"unknown model '{name}'; choose one of {', '.join(REGISTRY)}")


def make(name: str, num_classes: int, input_shape, norm: str | None = None) -> Model:
    """Builds model ``name``.

    ``norm`` is 'batch', 'group' or 'none'; None keeps the architecture's default (BatchNorm for
    the ResNets, VGG and DenseNet, none for the small CNN; the MLP has no norm layers).
    """
    check_name(name)
    if name in IMAGE_ONLY and len(input_shape) != 3:
        raise UserError(f"model '{name}' needs image inputs (H, W, C) but the data has shape "
                        f"{tuple(input_shape)}; use --model=mlp for tabular data")
    kwargs = {} if norm is None else {"norm": norm}
    return REGISTRY[name](num_classes, input_shape, **kwargs)
