"""Adversarial regularization (ADV), Nasr, Shokri & Houmansadr, "Machine Learning with
Membership Privacy using Adversarial Regularization" (CCS 2018), as the pruning paper's code
runs it (mia_prune's ``train_defend_adv``, after cyphercat).

An inference model ``h`` (mia_prune's ``MIAFC``: [softmax p, one-hot y] (2C) -> 512 -> 256 ->
128 -> 2, ReLU, dropout 0.2 after the first two layers; Adam lr 1e-3, weight decay 5e-4) plays
against the target. Before every target step, ``h`` takes ``steps`` (7) updates, each on a
batch of the target's members (its training rows, label 1) and a batch of its reference rows
(its dev rows, label 0), on the target's eval-mode outputs. The target step then minimizes
``CE - strength * CE(h([p, y]), member)`` on its batch (``h`` in eval mode): the target is
rewarded where the inference model fails to recognize its members.

Differences from the released code, on purpose: there, ``train_defend_adv`` takes its 7 attack
steps and *one* target step per call, and is called once per epoch, so a whole fine-tuning
makes only one target step an epoch (a bug, see PAPERS-CODE-NOTES.md); here every target step
is preceded by the attack's steps, as in Nasr et al.'s Algorithm 1. The released code's
schedule is offered as an option, :func:`one_step_per_epoch` (the audit's
``--adv_target_steps=one_per_epoch``): a data schedule whose epoch is one batch of
``batch_size`` rows drawn without replacement (the first batch of a freshly shuffled loader),
with the inference model's 7 updates before it, their members drawn from all the model's
training rows as the code's ``train_iter`` walks them. The member and reference
batches are drawn at random (with replacement) from the model's own rows, where the code walks
its data loaders; the attack loss is not multiplied by ``strength`` (the code's
``privacy_theta * CE``, which Adam all but cancels). The term couples the batch with the
adversary's state, so DP-SGD refuses it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmia import training
from jaxmia.base import Adversary, Defense, Model, Phase, Schedule
from jaxmia.errors import UserError
from jaxmia.models import mlp
from jaxmia.models.wrap import from_linen

DEFAULT_STRENGTH = 1.0  # theta, the weight of the inference model's gain
ATTACK_STEPS = 7
ATTACK_LR, ATTACK_WEIGHT_DECAY = 1e-3, 5e-4
# How many target steps an epoch takes: one per batch (Nasr et al.'s Algorithm 1, the default)
# or one per epoch (the released code's schedule, :func:`one_step_per_epoch`).
TARGET_STEPS = ("every_batch", "one_per_epoch")


@functools.lru_cache(maxsize=8)
def inference_model(num_classes: int) -> Model:
    """The inference model on [p, one-hot y] (``2 * num_classes`` inputs) -> 2 logits."""
    module = mlp.MLP(2, hidden=(512, 256, 128), dropout=0.2, dropout_layers=2)
    return from_linen(module, (2 * num_classes,), "adv_inference")


def optimizer() -> optax.GradientTransformation:
    """PyTorch ``Adam(lr=1e-3, weight_decay=5e-4)``, as the target's own optimizer is built."""
    return training.make_optimizer(training.TrainConfig(
        optimizer="adam", lr=ATTACK_LR, weight_decay=ATTACK_WEIGHT_DECAY))


def inputs(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The inference model's input: [softmax(logits), one-hot(labels)]."""
    c = logits.shape[-1]
    return jnp.concatenate([jax.nn.softmax(logits), jax.nn.one_hot(labels, c, dtype=logits.dtype)],
                           axis=-1)


def init(key: jax.Array, num_classes: int) -> dict:
    params, model_state = inference_model(num_classes).init(key)
    return {"params": params, "model_state": model_state, "opt_state": optimizer().init(params)}


def attack_loss(params, model_state, member_x, reference_x, key):
    """Mean cross-entropy of the inference model (train mode) on members (label 1) and
    references (label 0), one batch of each."""
    model = inference_model(member_x.shape[-1] // 2)
    x = jnp.concatenate([member_x, reference_x])
    y = jnp.concatenate([jnp.ones(len(member_x), jnp.int32), jnp.zeros(len(reference_x),
                                                                       jnp.int32)])
    logits, _ = model.apply(params, model_state, x, train=True, key=key)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def train(state: dict, member_logits, member_labels, reference_logits, reference_labels, key):
    """``steps`` Adam updates of the inference model, update i on member batch i and reference
    batch i."""
    tx = optimizer()

    def one(state, batch):
        m_logits, m_labels, r_logits, r_labels, i = batch
        grads = jax.grad(attack_loss)(state["params"], state["model_state"],
                                      inputs(m_logits, m_labels), inputs(r_logits, r_labels),
                                      jax.random.fold_in(key, i))
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates),
                "model_state": state["model_state"], "opt_state": opt_state}, None

    steps = jnp.arange(member_logits.shape[0])
    state, _ = jax.lax.scan(one, state, (member_logits, member_labels, reference_logits,
                                         reference_labels, steps))
    return state


def member_loss(state: dict, logits, labels, weight) -> jax.Array:
    """The inference model's (eval mode) cross-entropy on the batch's real rows as members:
    low where it recognizes them."""
    model = inference_model(logits.shape[-1])
    out, _ = model.apply(state["params"], state["model_state"], inputs(logits, labels),
                         train=False)
    ce = optax.softmax_cross_entropy_with_integer_labels(out, jnp.ones(len(labels), jnp.int32))
    return jnp.sum(weight * ce) / jnp.maximum(jnp.sum(weight), 1.0)


def make(strength: float = DEFAULT_STRENGTH, steps: int = ATTACK_STEPS) -> Defense:
    """ADV with weight ``strength`` (theta) on the inference model's loss and ``steps`` inference
    updates before each target step."""
    if not strength > 0:
        raise UserError(f"--defense_strength (ADV's theta) must be > 0, got {strength}")
    if steps < 1:
        raise UserError(f"ADV needs at least one inference step per target step, got {steps}")

    def term(logits, labels, weight, epoch, state):
        del epoch  # The same every epoch.
        return -strength * member_loss(state, logits, labels, weight)

    return Defense(penalty=term, per_example=False, name="adv",
                   adversary=Adversary(init=init, train=train, steps=steps))


def check_target_steps(target_steps: str) -> None:
    if target_steps not in TARGET_STEPS:
        raise UserError(f"unknown --adv_target_steps '{target_steps}'; choose one of "
                        f"{', '.join(TARGET_STEPS)}")


def one_step_per_epoch(train_lists, batch_size: int, *, defended=None, seed: int = 0,
                       stream: int = 0) -> Schedule:
    """The released code's ADV schedule as a data schedule: every epoch, each defended model
    trains on one batch of ``batch_size`` of its rows (all of them when it has fewer), drawn
    without replacement, so a fit takes one target step an epoch.

    Args:
      train_lists: each model's training rows (pool indices), as the fit's data holds them.
      batch_size: the fit's batch size.
      defended: optional bool ``[K]``; an undefended model trains on all its rows every epoch
        (a non-adaptive shadow). None: all models are defended.
      seed, stream: model k's batch of epoch e is drawn by ``numpy`` from the seed sequence
        ``(seed, stream, k, e)``; give each fit of a run its own ``stream``.
    """
    if batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {batch_size}")
    train_lists = [np.asarray(r) for r in train_lists]
    num_models = len(train_lists)
    defended = (np.ones(num_models, bool) if defended is None else np.asarray(defended, bool))
    if defended.shape != (num_models,):
        raise ValueError(f"defended needs one flag per model ({num_models}), got shape "
                         f"{defended.shape}")

    def rows(epoch: int):
        out = []
        for k, r in enumerate(train_lists):
            if not defended[k] or len(r) <= batch_size:
                out.append(r)
                continue
            rng = np.random.default_rng((seed, stream, k, epoch))
            out.append(r[np.sort(rng.choice(len(r), size=batch_size, replace=False))])
        return out

    capacity = max([min(len(r), batch_size) if d else len(r)
                    for r, d in zip(train_lists, defended)] + [1])
    return Schedule(name="adv_one_per_epoch", phases=(Phase(rows=rows, capacity=capacity),))
