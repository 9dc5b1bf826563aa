"""Type aliases and the unit types every family of the library shares."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

Params = Any  # A pytree of arrays: the trainable parameters.
Masks = Any  # Same tree as Params, {0., 1.} leaves; all ones when unpruned.
ModelState = Any  # Non-trainable state (BatchNorm running statistics); may be an empty dict.


class Model(NamedTuple):
    """A model as pure functions of a params pytree.

    Attributes:
      init: ``init(key) -> (params, state)``.
      apply: ``apply(params, state, x, *, train, key=None, rows=None) -> (logits, new_state)``.
        ``key`` drives dropout when ``train`` is true; ``new_state`` holds updated BatchNorm
        statistics in training and equals ``state`` otherwise; ``rows`` (``[B]`` bool) marks the
        real rows of a padded training batch, the only ones BatchNorm's statistics see.
      name: registry name of the architecture.
      has_batchnorm: whether ``state`` carries BatchNorm statistics (DP training refuses these).
    """

    init: Callable[[jax.Array], tuple[Params, ModelState]]
    apply: Callable[..., tuple[jax.Array, ModelState]]
    name: str
    has_batchnorm: bool


class Defense(NamedTuple):
    """A membership-inference defense as a loss term, added to the training loss by
    :func:`jaxmia.training.make_train_step` (never a copy of the training loop).

    Attributes:
      penalty: ``penalty(logits [B, C], labels [B], weight [B], epoch) -> scalar``, over the
        real rows of the batch (``weight > 0``; a padded batch's other rows must not count);
        ``epoch`` is the int32 index of the fit's epoch (0 first), for defenses that alternate
        by epoch (RelaxLoss).
      per_example: False when the term couples the examples of a batch (PPB pairs them), which
        per-example clipping cannot bound; DP-SGD refuses such defenses.
      name: registry name.
      replaces_loss: True when ``penalty`` is the whole objective (RelaxLoss), not a term added
        to the cross-entropy; a regularizer of the params is still added.
    """

    penalty: Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
    per_example: bool
    name: str
    replaces_loss: bool = False
