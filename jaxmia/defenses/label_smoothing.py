"""Label smoothing as a membership-inference defense (one of RelaxLoss's baselines, after
Szegedy et al. 2016): the cross-entropy against targets that put ``1 - epsilon`` on the label
and ``epsilon`` spread evenly over all classes,
``(1 - epsilon) * CE + epsilon * mean over classes of -log p_c``, over the real rows. As the
RelaxLoss authors' ``LabelSmoothingCrossEntropy`` (epsilon 0.1 by default). It is a sum over
examples, so it does not couple them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmia.base import Defense
from jaxmia.errors import UserError

DEFAULT_STRENGTH = 0.1  # epsilon


def objective(logits: jax.Array, labels: jax.Array, weight: jax.Array,
              epsilon: float) -> jax.Array:
    """The label-smoothed cross-entropy, a weighted mean over the rows."""
    log_p = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]
    uniform = -jnp.mean(log_p, axis=-1)
    rows = (1 - epsilon) * nll + epsilon * uniform
    return jnp.sum(weight * rows) / jnp.maximum(jnp.sum(weight), 1.0)


def make(strength: float = DEFAULT_STRENGTH) -> Defense:
    """Label smoothing with ``strength`` = epsilon, the mass moved to the uniform target."""
    if not 0 < strength < 1:
        raise UserError(f"--defense_strength (label smoothing's epsilon) must be in (0, 1), "
                        f"got {strength}")

    def term(logits, labels, weight, epoch, state=None):
        del epoch, state  # The same every epoch; no adversary.
        return objective(logits, labels, weight, strength)

    return Defense(penalty=term, per_example=True, name="label_smoothing", replaces_loss=True)
