"""A small CNN for quick runs: conv32-pool-conv64-pool-fc128-fc(classes)."""

from __future__ import annotations

from flax import linen as nn

from jaxmia.base import Model
from jaxmia.models import layers
from jaxmia.models.wrap import from_linen


class SmallCNN(nn.Module):
    num_classes: int
    norm: str = "none"

    @nn.compact
    def __call__(self, x, train: bool, rows=None):
        for width in (32, 64):
            x = layers.conv(width, bias=True)(x)
            x = nn.relu(layers.Norm(self.norm)(x, train, rows))
            x = layers.max_pool_2x2(x)
        x = nn.relu(layers.dense(128)(x.reshape(x.shape[0], -1)))
        return layers.dense(self.num_classes)(x)


def make(num_classes: int, input_shape, norm: str = "none") -> Model:
    layers.check_norm(norm)
    return from_linen(SmallCNN(num_classes, norm), input_shape, "small_cnn")
