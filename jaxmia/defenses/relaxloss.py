"""RelaxLoss, the defense of Chen, Yu & Fritz, "RelaxLoss: Defending Membership Inference
Attacks without Losing Utility" (ICLR 2022): train towards a mean loss of ``alpha`` instead of
towards zero, so that members' losses stay near where non-members' are.

With ``L`` the batch's mean cross-entropy (over its real rows):

- even epochs (0, 2, ...): the objective is ``|L - alpha|``: gradient descent while ``L`` is
  above ``alpha``, gradient *ascent* once it is below;
- odd epochs: ``L`` while it is above ``alpha``; below it, *posterior flattening*: the
  cross-entropy against soft targets that keep the true class's probability ``p_y`` (clipped to
  at most ``upper``) and spread the rest evenly, ``(1 - p_y) / (C - 1)``, over the other
  classes.

As the authors' code for tabular data (``source/nonimage/defense/relaxloss.py``): the soft
targets are computed from the model's own softmax and are not detached, so the gradient also
flows through them; defaults there are alpha 0.8 / upper 0.3 for Purchase, 2.5 / 0.1 for Texas,
and 1 / 1 for CIFAR-10 (the default here). Their image code (``source/cifar/defense/
relaxloss.py``) flattens otherwise: the mean over rows of ``(1 - correct) * CE(soft targets) -
CE`` (gradient ascent on the correctly classified rows, the soft term on the misclassified
ones only); ``variant='image'`` is that one. The objective branches on the batch's mean loss, so
it couples the examples of a batch and DP-SGD refuses it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmia.base import Defense
from jaxmia.errors import UserError

DEFAULT_STRENGTH = 1.0  # alpha, the target loss level
DEFAULT_UPPER = 1.0  # the flattened targets' cap on the true class's probability
VARIANTS = ("tabular", "image")  # the authors' two flattening steps


def objective(logits: jax.Array, labels: jax.Array, weight: jax.Array, epoch: jax.Array,
              alpha: float, upper: float = DEFAULT_UPPER, variant: str = "tabular") -> jax.Array:
    """RelaxLoss's objective for one batch in epoch ``epoch``, over the real rows
    (``weight > 0``), with the flattening step of the authors' ``variant`` code."""
    n = jnp.maximum(jnp.sum(weight), 1.0)
    log_p = jax.nn.log_softmax(logits)
    num_classes = logits.shape[-1]
    onehot = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
    ce_rows = -jnp.sum(onehot * log_p, axis=-1)
    ce = jnp.sum(weight * ce_rows) / n
    p_true = jnp.clip(jnp.sum(onehot * jnp.exp(log_p), axis=-1), 0.0, upper)
    soft = onehot * p_true[:, None] + (1 - onehot) * ((1 - p_true) / (num_classes - 1))[:, None]
    soft_rows = -jnp.sum(soft * log_p, axis=-1)
    if variant == "image":
        wrong = (jnp.argmax(logits, axis=-1) != labels).astype(logits.dtype)
        soft_rows = wrong * soft_rows - ce_rows
    flattened = jnp.sum(weight * soft_rows) / n
    odd = jnp.where(ce > alpha, ce, flattened)
    return jnp.where(epoch % 2 == 0, jnp.abs(ce - alpha), odd)


def make(strength: float = DEFAULT_STRENGTH, upper: float = DEFAULT_UPPER,
         variant: str = "tabular") -> Defense:
    """RelaxLoss with target loss level ``strength`` (the paper's alpha), the flattened
    targets' cap ``upper`` on the true class's probability, and the authors' ``variant`` of
    the flattening step ('tabular' or 'image')."""
    if not strength > 0:
        raise UserError(f"--defense_strength (RelaxLoss's alpha, a target loss level) must be "
                        f"> 0, got {strength}")
    if not 0 < upper <= 1:
        raise UserError(f"--relaxloss_upper must be in (0, 1], got {upper}")
    if variant not in VARIANTS:
        raise UserError(f"unknown --relaxloss_variant '{variant}'; choose one of "
                        f"{', '.join(VARIANTS)}")

    def term(logits, labels, weight, epoch, state=None):
        del state  # No adversary.
        return objective(logits, labels, weight, epoch, strength, upper, variant)

    return Defense(penalty=term, per_example=False, name="relaxloss", replaces_loss=True)
