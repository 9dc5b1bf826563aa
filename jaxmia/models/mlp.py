"""mia_prune's tabular "ColumnFC": in -> 256 -> 128 -> classes, ReLU, dropout after each hidden layer."""

from __future__ import annotations

import jax
from flax import linen as nn

from jaxmia.base import Model
from jaxmia.models import layers
from jaxmia.models.wrap import from_linen


class MLP(nn.Module):
    num_classes: int
    hidden: tuple[int, ...] = (256, 128)
    dropout: float = 0.1
    dropout_layers: int | None = None  # how many hidden layers dropout follows (None: all)

    @nn.compact
    def __call__(self, x, train: bool):
        x = x.reshape(x.shape[0], -1)
        for i, width in enumerate(self.hidden):
            x = nn.relu(layers.dense(width, name=f"Dense_{i}")(x))
            if self.dropout_layers is None or i < self.dropout_layers:
                x = layers.Dropout(self.dropout)(x, train)
        return layers.dense(self.num_classes, name=f"Dense_{len(self.hidden)}")(x)


def make(num_classes: int, input_shape, norm: str = "none", dropout: float = 0.1) -> Model:
    del norm  # Unused: the MLP has no norm layers.
    return from_linen(MLP(num_classes, dropout=dropout), input_shape, "mlp")


def first_layer(params) -> tuple:
    """(kernel [D, H], bias [H]) of the first dense layer."""
    return params["Dense_0"]["kernel"], params["Dense_0"]["bias"]


def from_first_preactivation(params, z0):
    """Eval-mode logits given the first layer's pre-activation ``z0 = x @ kernel + bias``
    (dropout is off in eval mode): the rest of :class:`MLP`, for sensitivity's projected noise."""
    num_dense = len(params)
    h = z0
    for i in range(1, num_dense):
        h = jax.nn.relu(h)
        h = h @ params[f"Dense_{i}"]["kernel"] + params[f"Dense_{i}"]["bias"]
    return h
