"""DenseNet-121 (growth 32, blocks 6-12-24-16, bottleneck 4x, compression 0.5) with the CIFAR stem
of the PyTorch_CIFAR10 models mia_prune uses: a 3x3 stride-1 first conv and no stem pool."""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from jaxmia.base import Model
from jaxmia.models import layers
from jaxmia.models.wrap import from_linen


class DenseNet(nn.Module):
    num_classes: int
    norm: str = "batch"
    growth: int = 32
    blocks: tuple[int, ...] = (6, 12, 24, 16)
    init_features: int = 64
    bn_size: int = 4

    @nn.compact
    def __call__(self, x, train: bool, rows=None):
        x = layers.conv(self.init_features)(x)
        # norm0, relu0; pool0 is dropped for 32x32.
        x = nn.relu(layers.Norm(self.norm)(x, train, rows))
        for i, n in enumerate(self.blocks):
            for _ in range(n):
                y = nn.relu(layers.Norm(self.norm)(x, train, rows))
                y = layers.conv(self.bn_size * self.growth, kernel=1)(y)
                y = nn.relu(layers.Norm(self.norm)(y, train, rows))
                y = layers.conv(self.growth)(y)
                x = jnp.concatenate([x, y], axis=-1)
            if i < len(self.blocks) - 1:  # Transition: norm, relu, 1x1 conv halving, 2x2 avg-pool.
                x = nn.relu(layers.Norm(self.norm)(x, train, rows))
                x = layers.conv(x.shape[-1] // 2, kernel=1)(x)
                x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(layers.Norm(self.norm)(x, train, rows))
        return layers.dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


def make(num_classes: int, input_shape, norm: str = "batch") -> Model:
    layers.check_norm(norm)
    return from_linen(DenseNet(num_classes, norm), input_shape, "densenet121")
