"""Type aliases and the unit types every family of the library shares."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

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
      perturb: where the sensitivity feature's Gaussian noise goes, for a model whose inputs
        take none (token ids): ``(shape, apply_perturbed)``, ``apply_perturbed(params, state, x,
        delta) -> logits`` the eval-mode logits with ``delta`` (``[B, *shape]``) added to the
        inputs' continuous representation (the BERTs: their word embeddings). None: the noise is
        added to ``x`` itself.
    """

    init: Callable[[jax.Array], tuple[Params, ModelState]]
    apply: Callable[..., tuple[jax.Array, ModelState]]
    name: str
    has_batchnorm: bool
    perturb: tuple[tuple[int, ...], Callable[..., jax.Array]] | None = None


class Adversary(NamedTuple):
    """A defense's own model, trained against the target inside each training step (ADV's
    inference model): before every target step it takes ``steps`` updates, each on a batch of
    the model's members and one of its reference (non-member) rows.

    Attributes:
      init: ``init(key, num_classes) -> state``, the adversary's params and optimizer state.
      train: ``train(state, member_logits [steps, B, C], member_labels [steps, B],
        reference_logits [steps, B, C], reference_labels [steps, B], key) -> state``; the
        logits are the target's (eval mode, no gradient).
      steps: batches of each kind drawn before every target step.
    """

    init: Callable[[jax.Array, int], Any]
    train: Callable[..., Any]
    steps: int


class Defense(NamedTuple):
    """A membership-inference defense as a loss term, added to the training loss by
    :func:`jaxmia.training.make_train_step` (never a copy of the training loop).

    Attributes:
      penalty: ``penalty(logits [B, C], labels [B], weight [B], epoch, state) -> scalar``, over
        the real rows of the batch (``weight > 0``; a padded batch's other rows must not count);
        ``epoch`` is the int32 index of the fit's epoch (0 first), for defenses that alternate
        by epoch (RelaxLoss); ``state`` is the adversary's state after its updates of this step
        (None without an ``adversary``).
      per_example: False when the term couples the examples of a batch (PPB pairs them), which
        per-example clipping cannot bound; DP-SGD refuses such defenses.
      name: registry name.
      replaces_loss: True when ``penalty`` is the whole objective (RelaxLoss), not a term added
        to the cross-entropy; a regularizer of the params is still added.
      adversary: a model the defense trains alongside the target (ADV), or None.
    """

    penalty: Callable[..., jax.Array]
    per_example: bool
    name: str
    replaces_loss: bool = False
    adversary: Adversary | None = None


class Phase(NamedTuple):
    """One pass of a scheduled epoch over some of each model's training rows.

    Attributes:
      rows: ``rows(epoch) -> [rows of model k]``, the pool indices each model trains on in this
        pass of epoch ``epoch`` (0 first); a subset of the model's training rows.
      capacity: the most rows any model has in this pass in any epoch; it fixes the pass's
        steps per epoch, ``ceil(capacity / batch_size)``, so nothing recompiles.
      weight_decay: None: the stage's optimizer; otherwise the pass has an optimizer of its own
        (the stage's, with this weight decay), whose state persists across epochs (WeMem's RMR).
    """

    rows: Callable[[int], Sequence[Any]]
    capacity: int
    weight_decay: float | None = None


class Schedule(NamedTuple):
    """A data schedule (a defense that changes what each epoch trains on, not the loss), run by
    :func:`jaxmia.training.fit`: every epoch runs its ``phases`` in order, each a shuffled
    pass over its rows. The last phase draws with the epoch's key, as an unscheduled epoch does,
    so a schedule whose one phase holds every row trains exactly the unscheduled models."""

    name: str
    phases: tuple[Phase, ...]
