"""VGG-16 with BatchNorm as in mia_prune's ``cifar10_models/vgg.py``: configuration D with a norm
layer after each biased 3x3 conv, global average pool to 512, then 4096-4096-classes with dropout 0.5."""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from jaxmia.base import Model
from jaxmia.models import layers
from jaxmia.models.wrap import from_linen

CFG_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    num_classes: int
    norm: str = "batch"
    cfg: tuple = CFG_D

    @nn.compact
    def __call__(self, x, train: bool, rows=None):
        for v in self.cfg:
            if v == "M":
                x = layers.max_pool_2x2(x)
            else:
                x = nn.relu(layers.Norm(self.norm)(layers.conv(v, bias=True)(x), train, rows))
        x = jnp.mean(x, axis=(1, 2))
        for _ in range(2):
            x = layers.Dropout(0.5)(nn.relu(layers.dense(4096)(x)), train)
        return layers.dense(self.num_classes)(x)


def make(num_classes: int, input_shape, norm: str = "batch") -> Model:
    layers.check_norm(norm)
    return from_linen(VGG(num_classes, norm), input_shape, "vgg16")
