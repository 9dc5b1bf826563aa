"""Per-example attack features from a model's logits, jitted; leading axes (models, examples)
broadcast, so one call serves a whole ensemble.

Definitions (Song & Mittal 2021, "Systematic evaluation of privacy risks of ML models"):
- ``confidence``: p_y, the true-class probability.
- ``top1``: max_c p_c.
- ``loss``: cross-entropy -log p_y.
- ``entropy``: -sum_c p_c log p_c.
- ``modified_entropy``: -(1 - p_y) log p_y - sum_{c != y} p_c log(1 - p_c).
Logs are taken of probabilities clipped at 1e-30, as their code does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

TINY = 1e-30


@jax.jit
def extract(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """Features of logits ``[..., C]`` with integer labels ``[...]``; each output is ``[...]``
    except ``probs`` (``[..., C]``)."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=probs.dtype)
    p_y = jnp.sum(probs * onehot, axis=-1)
    log_p = jnp.log(jnp.maximum(probs, TINY))
    log_1mp = jnp.log(jnp.maximum(1.0 - probs, TINY))
    mentr = -(1.0 - p_y) * jnp.log(jnp.maximum(p_y, TINY)) - jnp.sum(
        (1.0 - onehot) * probs * log_1mp, axis=-1)
    return {
        "probs": probs,
        "confidence": p_y,
        "top1": jnp.max(probs, axis=-1),
        "loss": -jnp.sum(onehot * log_probs, axis=-1),
        "entropy": -jnp.sum(probs * log_p, axis=-1),
        "modified_entropy": mentr,
        "correct": (jnp.argmax(logits, -1) == labels),
    }
