"""Pair-based posterior balancing (PPB), the defense of Yuan & Zhang, "Membership Inference
Attacks and Defenses in Neural Network Pruning" (USENIX Security 2022), applied while the pruned
model is fine-tuned.

Each example's logits are sorted in descending order (so only the shape of the posterior counts,
not which class is on top); the batch's first half is paired with its second half, example i
with example i + n/2 (an odd last example is left out); the term is
``strength * mean over pairs of KL(softmax(second) || softmax(first))``: it pulls the ranked
posteriors of different training examples together, which hides how confident the model is on
its own members. As mia_prune's ``BaseModel.train_defend_ppb`` (``F.kl_div(log_softmax(first),
softmax(second), reduction='batchmean')``, lambda = 4 by default).

Here a batch may be padded (the last batch of an epoch, see :mod:`jaxmia.training`): the real
rows are paired among themselves, in their order in the batch, exactly as PyTorch pairs the rows
of a shorter last batch. The term couples examples, so DP-SGD refuses it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmia.base import Defense
from jaxmia.errors import UserError

DEFAULT_STRENGTH = 4.0


def penalty(logits: jax.Array, weight: jax.Array) -> jax.Array:
    """Mean over pairs of KL(softmax(ranked second) || softmax(ranked first)) of the real rows
    (``weight > 0``); 0 with fewer than two real rows."""
    real = weight > 0
    # The real rows first, in their order (a stable sort), so pairs never touch padding.
    ranked = -jnp.sort(-logits[jnp.argsort(~real, stable=True)], axis=-1)
    half = jnp.sum(real) // 2
    rows = jnp.arange(logits.shape[0])
    second = ranked[(rows + half) % logits.shape[0]]
    log_first, log_second = jax.nn.log_softmax(ranked), jax.nn.log_softmax(second)
    kl = jnp.sum(jnp.exp(log_second) * (log_second - log_first), axis=-1)
    return jnp.sum(jnp.where(rows < half, kl, 0.0)) / jnp.maximum(half, 1)


def make(strength: float = DEFAULT_STRENGTH) -> Defense:
    """PPB with weight ``strength`` (the paper's lambda) on the balancing term."""
    if not strength > 0:
        raise UserError(f"--defense_strength must be > 0 for ppb, got {strength}")

    def term(logits, labels, weight, epoch, state=None):
        del labels, epoch, state  # Only the ranked posteriors, the same every epoch.
        return strength * penalty(logits, weight)

    return Defense(penalty=term, per_example=False, name="ppb")
