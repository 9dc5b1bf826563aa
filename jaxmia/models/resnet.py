"""ResNets for 32x32 inputs.

- ``resnet18``: torchvision's ResNet-18 in the CIFAR variant of mia_prune's ``cifar10_models``
  (3x3 stride-1 first conv, the 3x3 stride-2 max-pool kept), 1x1-conv projection shortcuts.
- ``resnet20``: He et al.'s CIFAR ResNet-20 (16-32-64 channels, 3 blocks a stage) with 1x1-conv +
  norm projection shortcuts (272,474 parameters for 10 classes).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from jaxmia.base import Model
from jaxmia.models import layers
from jaxmia.models.wrap import from_linen


class BasicBlock(nn.Module):
    features: int
    stride: int
    norm: str

    @nn.compact
    def __call__(self, x, train: bool, rows=None):
        y = layers.conv(self.features, stride=self.stride)(x)
        y = nn.relu(layers.Norm(self.norm)(y, train, rows))
        y = layers.conv(self.features)(y)
        y = layers.Norm(self.norm)(y, train, rows)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = layers.conv(self.features, kernel=1, stride=self.stride, name="shortcut_conv")(x)
            x = layers.Norm(self.norm, name="shortcut_norm")(x, train, rows)
        return nn.relu(x + y)


class ResNet(nn.Module):
    num_classes: int
    stages: tuple[int, ...]
    widths: tuple[int, ...]
    norm: str = "batch"
    stem_pool: bool = False

    @nn.compact
    def __call__(self, x, train: bool, rows=None):
        x = layers.conv(self.widths[0])(x)
        x = nn.relu(layers.Norm(self.norm)(x, train, rows))
        if self.stem_pool:  # torchvision's MaxPool2d(3, stride=2, padding=1).
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i, (blocks, width) in enumerate(zip(self.stages, self.widths)):
            for b in range(blocks):
                x = BasicBlock(width, 2 if (b == 0 and i > 0) else 1, self.norm)(x, train, rows)
        x = jnp.mean(x, axis=(1, 2))
        return layers.dense(self.num_classes)(x)


def make_resnet18(num_classes: int, input_shape, norm: str = "batch") -> Model:
    layers.check_norm(norm)
    module = ResNet(num_classes, (2, 2, 2, 2), (64, 128, 256, 512), norm, stem_pool=True)
    return from_linen(module, input_shape, "resnet18")


def make_resnet20(num_classes: int, input_shape, norm: str = "batch") -> Model:
    layers.check_norm(norm)
    return from_linen(ResNet(num_classes, (3, 3, 3), (16, 32, 64), norm), input_shape, "resnet20")
