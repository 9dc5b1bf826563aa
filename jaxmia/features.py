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


def sensitivity(logits_fn, x: jax.Array, key: jax.Array, num_samples: int = 10,
                epsilon: float = 1e-3) -> jax.Array:
    """Prediction sensitivity as mia_prune's ``predict_target_sensitivity`` computes it.

    p = softmax(f(x)); for m = ``num_samples`` Gaussian directions u ~ N(0, I) in the (normalized)
    input space, sens = mean_m |softmax(f(x + eps u)) - p| / eps, one value per class. All m
    perturbed copies go through ``logits_fn`` in one batch. "Sparsity can improve privacy" uses
    m = 5, eps = 1e-3.

    Args:
      logits_fn: eval-mode logits of a batch, ``[B, ...] -> [B, C]``.
      x: inputs ``[B, ...]``.
      key: PRNG key of this batch's perturbations (each example gets its own draws).
      num_samples: m.
      epsilon: perturbation size.

    Returns:
      ``[B, C]`` sensitivities.
    """
    p = jax.nn.softmax(logits_fn(x).astype(jnp.float32), axis=-1)
    u = jax.random.normal(key, (num_samples,) + x.shape, x.dtype)
    perturbed = (x[None] + epsilon * u).reshape((-1,) + x.shape[1:])
    q = jax.nn.softmax(logits_fn(perturbed).astype(jnp.float32), axis=-1)
    q = q.reshape((num_samples,) + p.shape)
    return jnp.mean(jnp.abs(q - p[None]), axis=0) / epsilon
