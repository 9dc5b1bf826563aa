"""The training loop, written once: an ensemble of K models trained together.

Every model of an audit (target and shadows) is one slice of a params pytree with a leading model
axis. The single-model ``train_step`` is mapped over that axis: in the 'fused' mode one jitted call
runs a whole epoch (``vmap`` over models of a ``lax.scan`` over batches); 'looped' is the same
with ``lax.map`` over models (faster on XLA:CPU for dense models); in the 'stepwise' mode, which
XLA:CPU needs for conv models, one jitted call a batch (see ``TrainConfig.ensemble_mode``). With
a device mesh each device runs its own block of models (:mod:`jaxmia.sharding`).
Each model has its own data subset
(an index matrix padded to a fixed shape plus a count, so no recompiles), its own random key and
its own early-stopping state. A single model is the K = 1 case of the same code, which is what
makes "K together == each alone" an exact property (tested).

Defaults are mia_prune's: Adam, lr 1e-3, weight decay 5e-4 (PyTorch-style L2 added to the
gradient), batch 128, early stopping on dev accuracy (stop once more than ``patience`` = 5
consecutive epochs fail to improve; keep the best parameters). Orbax checkpoints every
``checkpoint_every`` epochs make a killed run resume to the same result.

With ``TrainConfig.dp`` the same loop runs DP-SGD (:mod:`jaxmia.dp`): batches become
Poisson samples padded to whole physical batches, and the step's gradient is clipped per example
and noised.

A data schedule (``fit(..., schedule=)``, :class:`jaxmia.base.Schedule`: WeMem's RSW/RMR) runs
each epoch as passes over rows it chooses, through the same epoch function.

The last batch of an epoch is padded to the fixed batch size; padded rows carry zero loss
weight, and BatchNorm's batch statistics skip them (``Model.apply``'s ``rows``), so a model
trains as on PyTorch's shorter last batch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxmia import clipping, pruning, sharding
from jaxmia import dp as dp_lib
from jaxmia.base import Defense, Masks, Model, ModelState, Params, Schedule
from jaxmia.dp import DPConfig
from jaxmia.errors import UserError

Regularizer = Callable[[Params], jax.Array]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training stage (pretraining or fine-tuning)."""

    epochs: int = 50
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 5e-4
    optimizer: str = "adam"  # 'adam' or 'sgd' (momentum 0.9)
    patience: int | None = 5  # None: no early stopping (the best-on-dev params are still kept).
    keep: str = "best"  # 'best': each model's best-on-dev params; 'last': its final params.
    lr_milestones: tuple[int, ...] = ()  # epochs at which the lr is multiplied by lr_gamma
    lr_gamma: float = 0.1  # (PyTorch MultiStepLR).
    checkpoint_every: int = 1  # epochs between orbax checkpoints (when a directory is given).
    eval_batch_size: int = 1024
    # How the ensemble runs: 'fused' (one jitted call an epoch: vmap over models, lax.scan over
    # batches), 'looped' (one jitted call an epoch: lax.map over models, one model after another,
    # a stopped model skipped), 'stepwise' (one jitted call a batch from a host loop, the models
    # unrolled inside it), or 'auto': on CPU 'stepwise' for conv models and 'looped' otherwise, on
    # accelerators 'fused'. XLA:CPU runs convolutions inside loop bodies (scan, lax.map) about 20x
    # slower than at top level (jax-ml/jax#12868), vmapped convolutions become slow grouped
    # convolutions, and vmapped dense layers become batched matmuls ~20% slower than one model's;
    # the numbers are in BUILD_NOTES.md. All modes draw the same keys and batches and give the
    # same result (to float rounding).
    ensemble_mode: str = "auto"
    # 'cross_entropy' (logits [B, C], integer labels) or 'sigmoid_mse' (one logit z [B, 1],
    # labels {0, 1}, loss (sigmoid(z) - y)^2: the GRIP paper's attack model).
    loss: str = "cross_entropy"
    # DP-SGD (jaxmia.dp): Poisson-sampled batches of ``batch_size`` expected rows, per-example
    # clipping and noise. None: ordinary training.
    dp: DPConfig | None = None


MODES = ("auto", "fused", "looped", "stepwise")


def _cross_entropy(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def _sigmoid_mse(logits, y):
    return jnp.square(jax.nn.sigmoid(logits[..., 0]) - y)


def predicted_class(logits):
    """The class a model predicts: argmax, or ``z >= 0`` for a one-logit (sigmoid) model."""
    if logits.shape[-1] == 1:
        return (logits[..., 0] >= 0).astype(jnp.int32)
    return jnp.argmax(logits, -1)


LOSSES = {"cross_entropy": _cross_entropy, "sigmoid_mse": _sigmoid_mse}


def resolve_ensemble_mode(mode: str, params: Params) -> str:
    """'auto' -> on CPU 'stepwise' for models with conv kernels, else 'looped'; elsewhere
    'fused'. (Inference has no 'looped' layout: it runs 'fused' and 'looped' alike.)"""
    if mode not in MODES:
        raise UserError(f"unknown ensemble mode '{mode}'; choose one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    if jax.default_backend() != "cpu":
        return "fused"
    has_conv = any(leaf.ndim == 5 for leaf in jax.tree.leaves(params))  # [K, H, W, I, O]
    return "stepwise" if has_conv else "looped"


def unrolled_models(fn, in_axes):
    """Like ``jax.vmap(fn, in_axes)`` over the leading model axis, but as a Python loop traced
    into one program (no batching of convolutions, no loop body): for XLA:CPU."""

    def mapped(*args):
        num = next(jax.tree.leaves(a)[0].shape[0] for a, ax in zip(args, in_axes) if ax == 0)
        outs = [fn(*[jax.tree.map(lambda v: v[k], a) if ax == 0 else a
                     for a, ax in zip(args, in_axes)]) for k in range(num)]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    return mapped


def looped_models(fn, in_axes):
    """Like ``jax.vmap(fn, in_axes)`` over the leading model axis, but a ``lax.map``: one model
    after another inside one program, each running ``fn``'s unbatched code (for XLA:CPU, where
    that beats the batched matmuls of a vmap)."""

    def mapped(*args):
        def one(own):
            own = iter(own)
            return fn(*[next(own) if axis == 0 else a for a, axis in zip(args, in_axes)])

        return jax.lax.map(one, tuple(a for a, axis in zip(args, in_axes) if axis == 0))

    return mapped


def check_rates(lr: float, weight_decay: float) -> None:
    """Refuses a learning rate that is not a finite number > 0 or a weight decay that is not a
    finite number >= 0 (the CLI's --lr, --weight_decay)."""
    if not (math.isfinite(lr) and lr > 0):
        raise UserError(f"--lr must be a finite number > 0, got {lr}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise UserError(f"--weight_decay must be a finite number >= 0, got {weight_decay}")


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int = 1) -> optax.GradientTransformation:
    """PyTorch ``Adam(weight_decay=wd)`` / ``SGD(momentum=.9, weight_decay=wd)`` semantics, with
    ``MultiStepLR``-style decay at ``cfg.lr_milestones`` (epochs of ``steps_per_epoch`` steps)."""
    lr = cfg.lr
    if cfg.lr_milestones:
        lr = optax.piecewise_constant_schedule(
            cfg.lr, {int(m) * steps_per_epoch: cfg.lr_gamma for m in cfg.lr_milestones})
    if cfg.optimizer == "adam":
        base = optax.adam(lr)
    elif cfg.optimizer == "sgd":
        base = optax.sgd(lr, momentum=0.9)
    else:
        raise UserError(f"unknown optimizer '{cfg.optimizer}'; choose adam or sgd")
    return optax.chain(optax.add_decayed_weights(cfg.weight_decay), base)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """One model's training state (leaves get a leading model axis in an ensemble)."""

    step: jax.Array
    params: Params
    masks: Masks
    model_state: ModelState
    opt_state: optax.OptState
    defense_state: object = None  # a defense's adversary (ADV's inference model), or None
    defended: jax.Array | None = None  # bool: whether the defense trains this model (None: yes)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class EarlyStopState:
    """Per-model early stopping: the best params on dev and the count of epochs without gain."""

    best_acc: jax.Array
    best_epoch: jax.Array
    best_params: Params
    best_model_state: ModelState
    bad_epochs: jax.Array
    done: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class EnsembleData:
    """The pool on device plus per-model index matrices (padded) and counts."""

    x: jax.Array
    y: jax.Array
    train_idx: jax.Array  # int32 [K, n_max]
    train_n: jax.Array  # int32 [K]
    dev_idx: jax.Array  # int32 [K, d_max]
    dev_n: jax.Array  # int32 [K]
    # A data schedule's pass trains on some of each model's rows (``train_idx``); an
    # adversary still draws its members from all of them (None: ``train_idx`` is all of them).
    member_idx: jax.Array | None = None  # int32 [K, n_max]
    member_n: jax.Array | None = None  # int32 [K]

    @property
    def num_models(self) -> int:
        return int(self.train_idx.shape[0])


def epoch_steps(data: EnsembleData, batch_size: int) -> int:
    """Steps every model takes in one epoch: ``ceil(n_max / batch_size)`` (also with DP, where
    each step is a Poisson sample of expected size ``batch_size``)."""
    return -(-int(data.train_idx.shape[1]) // batch_size)


def pad_indices(index_lists, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stacks index arrays of different lengths into ``[K, width]`` (default: the longest;
    padded with 0) and counts."""
    n = np.asarray([len(a) for a in index_lists], np.int32)
    if width is None:
        width = max(int(n.max()), 1)
    elif int(n.max()) > width:
        raise ValueError(f"an index list of {int(n.max())} rows does not fit width {width}")
    out = np.zeros((len(index_lists), width), np.int32)
    for k, a in enumerate(index_lists):
        out[k, : len(a)] = a
    return out, n


def make_ensemble_data(x, y, train_lists, dev_lists) -> EnsembleData:
    train_idx, train_n = pad_indices(train_lists)
    dev_idx, dev_n = pad_indices(dev_lists)
    return EnsembleData(jnp.asarray(x), jnp.asarray(y, jnp.int32), jnp.asarray(train_idx),
                        jnp.asarray(train_n), jnp.asarray(dev_idx), jnp.asarray(dev_n))


def _zero_metrics(fn, *args):
    """Zeros shaped like the metrics (second output) of ``fn(*args)``, for a skipped branch."""
    return jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), jax.eval_shape(fn, *args)[1])


def make_train_step(model: Model, tx: optax.GradientTransformation,
                    regularizer: Regularizer | None = None, loss: str = "cross_entropy",
                    dp: DPConfig | None = None, batch_size: int | None = None,
                    masked: frozenset | None = None, defense: Defense | None = None):
    """Returns the pure single-model ``step(state, x, y, weight, key, live=None, epoch=0,
    adversary_batches=None) -> (state, metrics)``.

    ``weight`` is 1 for real rows and 0 for padding. Without ``dp`` the gradient is that of the
    weighted mean of ``loss`` (a ``LOSSES`` name) plus ``regularizer(params)``, and a batch with no
    real rows leaves the state unchanged. With ``dp`` (DP-SGD, :mod:`jaxmia.dp`) the batch is a
    Poisson-sampled logical batch of ``batch_size`` expected rows, its gradient is clipped per
    example, noised and divided by ``batch_size``; the step is taken even when no row was sampled
    (a noise-only step). ``masked`` (:func:`jaxmia.pruning.masked_paths` of the concrete masks)
    names the param leaves whose masks have zeros: only those are multiplied by their masks, in
    the forward pass and after each update (so pruned weights stay exactly zero); None: every
    leaf (safe for any masks; DP's ghost clipping then assumes no pruned layers). ``live`` (a
    bool) overrides whether the step happens (an early-stopped model takes none); a step that
    does not happen is skipped with ``lax.cond`` (a select of both branches under ``vmap``).
    ``defense`` (:mod:`jaxmia.defenses`) adds its loss term ``penalty(logits, y, weight, epoch,
    state.defense_state)`` (``epoch``: the int32 epoch of the fit, 0 first), or replaces the loss
    with it (``defense.replaces_loss``); DP-SGD takes none (a term that couples examples cannot
    be clipped per example). A defense with an ``adversary`` (ADV) first updates it in
    ``state.defense_state`` on ``adversary_batches`` = (inputs ``[2, steps, B, ...]``, labels
    ``[2, steps, B]``), members then references, and its term sees the updated state.
    """

    if loss not in LOSSES:
        raise UserError(f"unknown loss '{loss}'; choose one of {', '.join(LOSSES)}")
    if dp is not None and defense is not None:
        raise UserError(f"the {defense.name} defense cannot be combined with DP-SGD: "
                        + ("it couples the examples of a batch, which per-example clipping "
                           "cannot bound" if not defense.per_example else
                           "DP-SGD's clipped gradient takes no extra loss term")
                        + "; use one defense at a time")
    if defense is not None and defense.replaces_loss and loss != "cross_entropy":
        raise UserError(f"the {defense.name} defense replaces the cross-entropy loss; it cannot "
                        f"train with loss='{loss}'")
    loss_of = LOSSES[loss]

    adversary = None if defense is None else defense.adversary

    def adversary_update(state: TrainState, batches, key):
        """The adversary's updates on the target's eval-mode logits of its batches."""
        bx, by = batches
        flat = bx.reshape((-1,) + bx.shape[3:])
        logits, _ = model.apply(pruning.apply_masks(state.params, state.masks, masked),
                                state.model_state, flat, train=False)
        logits = jax.lax.stop_gradient(logits).reshape(by.shape + logits.shape[-1:])
        return adversary.train(state.defense_state, logits[0], by[0], logits[1], by[1], key)

    def loss_fn(params, state, x, y, weight, key, epoch):
        logits, new_model_state = model.apply(pruning.apply_masks(params, state.masks, masked),
                                              state.model_state, x, train=True, key=key,
                                              rows=weight > 0)
        per_example = loss_of(logits, y)
        n = jnp.sum(weight)
        total = jnp.sum(weight * per_example) / jnp.maximum(n, 1.0)
        if defense is not None:
            term = defense.penalty(logits, y, weight, epoch, state.defense_state)
            defended = term if defense.replaces_loss else total + term
            total = (defended if state.defended is None
                     else jnp.where(state.defended, defended, total))
        if regularizer is not None:
            total = total + regularizer(params)
        correct = jnp.sum(weight * (predicted_class(logits) == y))
        return total, (new_model_state, {"loss_sum": total * n, "correct": correct, "n": n})

    if dp is not None:
        pruned = frozenset() if masked is None else frozenset(p[:-1] for p in masked)
        dp_grad = dp_lib.make_gradient(model, loss_of, predicted_class, dp, batch_size, pruned)

    def gradient(state: TrainState, x, y, weight, key, epoch):
        if dp is None:
            grads, (model_state, metrics) = jax.grad(loss_fn, has_aux=True)(
                state.params, state, x, y, weight, key, epoch)
            return grads, model_state, metrics
        grads, metrics = dp_grad(state.params, state.masks, state.model_state, x, y, weight,
                                 key)
        if regularizer is not None:  # a function of the params only: no privacy cost
            grads = jax.tree.map(jnp.add, grads, jax.grad(regularizer)(state.params))
        return grads, state.model_state, metrics

    def take(state: TrainState, x, y, weight, key, epoch, batches):
        if adversary is not None:
            # Its own key, derived: the target's dropout draws stay those of a step without it.
            state = dataclasses.replace(state, defense_state=adversary_update(
                state, batches, jax.random.fold_in(key, 1)))
        grads, model_state, metrics = gradient(state, x, y, weight, key, epoch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = pruning.apply_masks(optax.apply_updates(state.params, updates), state.masks,
                                     masked)
        return TrainState(step=state.step + 1, params=params, masks=state.masks,
                          model_state=model_state, opt_state=opt_state,
                          defense_state=state.defense_state, defended=state.defended), metrics

    def skip(state: TrainState, x, y, weight, key, epoch, batches):
        return state, _zero_metrics(take, state, x, y, weight, key, epoch, batches)

    def step(state: TrainState, x, y, weight, key, live=None, epoch=0, adversary_batches=None):
        if live is None:
            live = jnp.sum(weight) > 0
        if (adversary is None) != (adversary_batches is None):
            raise ValueError("adversary_batches go with a defense that has an adversary, only")
        # A cond, not a select of the new and old state: on one model it skips the step's work
        # and copies nothing (a whole-state select cost ~15% of an MLP step on XLA:CPU).
        return jax.lax.cond(live, take, skip, state, x, y, weight, key, jnp.int32(epoch),
                            adversary_batches)

    return step


def _epoch_order(key, n_valid, n_max):
    """A random order of positions with the ``n_valid`` real ones first."""
    priority = jax.random.uniform(key, (n_max,))
    priority = jnp.where(jnp.arange(n_max) < n_valid, priority, 2.0)
    return jnp.argsort(priority)


def _shuffle_plan(done, idx, n, key, batch_size):
    """One model's epoch without replacement: row positions, weights and liveness of every
    batch, and its step key."""
    n_max = idx.shape[0]
    num_batches = -(-n_max // batch_size)
    order_key, step_key = jax.random.split(key)
    order = _epoch_order(order_key, n, n_max)
    order = jnp.pad(order, (0, num_batches * batch_size - n_max), constant_values=n_max)
    valid = ((order < n) & ~done).reshape(num_batches, batch_size)
    rows = idx[jnp.minimum(order, n_max - 1)]
    return (rows.reshape(num_batches, batch_size), valid.astype(jnp.float32),
            jnp.any(valid, axis=1), step_key)


def _adversary_plan(idx, n, dev_idx, dev_n, key, batches, batch_size, steps):
    """One model's adversary batches for each of the ``batches`` steps of its epoch:
    ``[batches, 2, steps, batch_size]`` row indices, members drawn with replacement from its
    training rows ``idx[:n]``, references from its dev rows (the epoch key's own derivation: the
    shuffle's are unchanged)."""
    member_key, reference_key = jax.random.split(jax.random.fold_in(key, 1))
    shape = (batches, steps, batch_size)
    members = idx[jax.random.randint(member_key, shape, 0, jnp.maximum(n, 1))]
    references = dev_idx[jax.random.randint(reference_key, shape, 0, jnp.maximum(dev_n, 1))]
    return jnp.stack([members, references], axis=1)


def _poisson_chosen(done, n, n_max, key, batch_size):
    """Poisson sampling of one model's epoch: ``[steps, n_max]`` membership of each row in each
    logical batch (rate ``batch_size / n``; nothing once the model has stopped)."""
    steps = -(-n_max // batch_size)
    q = dp_lib.sampling_rate(batch_size, n)
    u = jax.random.uniform(jax.random.split(key)[0], (steps, n_max))
    return (u < q) & (jnp.arange(n_max) < n)[None, :] & ~done


def _poisson_plan(done, idx, n, key, batch_size, capacity):
    """Rows of each Poisson-sampled logical batch, first ``capacity`` positions (padded)."""
    n_max = idx.shape[0]
    chosen = _poisson_chosen(done, n, n_max, key, batch_size)
    if capacity > n_max:
        chosen = jnp.pad(chosen, ((0, 0), (0, capacity - n_max)))
    order = jnp.argsort(~chosen, axis=1, stable=True)[:, :capacity]
    valid = jnp.take_along_axis(chosen, order, axis=1)
    rows = idx[jnp.minimum(order, n_max - 1)]
    live = jnp.broadcast_to(~done, (order.shape[0],))
    return rows, valid.astype(jnp.float32), live, jax.random.split(key)[1]


def make_epoch_fn(model: Model, tx, batch_size: int, regularizer: Regularizer | None = None,
                  mode: str = "fused", loss: str = "cross_entropy", dp: DPConfig | None = None,
                  masked: frozenset | None = None, mesh=None, defense: Defense | None = None):
    """Returns the ensemble epoch ``(states, es, data, keys, number=0) -> (states, metrics)``
    (``number``: the epoch's index in the fit, handed to a defense's term).

    Model k draws its batches with ``keys[k]`` and takes ``ceil(n_max / batch_size)`` steps; a
    model that has stopped early takes none. Without ``dp`` it shuffles its rows into batches
    (padding rows carry no weight). With ``dp`` each step is a Poisson-sampled logical batch,
    padded to a multiple of the physical batch; that multiple is the epoch's largest over steps
    and models, read on the host, so shapes change (and the step recompiles) only when it does.
    ``mode`` is 'fused', 'looped' or 'stepwise' (see ``TrainConfig.ensemble_mode``); all
    compute the same thing. With a ``mesh`` (the models already padded and sharded over it, as
    ``fit`` does) each device runs its own block of models (:func:`jaxmia.sharding.over_models`).
    """
    step = make_train_step(model, tx, regularizer, loss, dp=dp, batch_size=batch_size,
                           masked=masked, defense=defense)

    adversary = None if defense is None else defense.adversary

    # ``rows``: a batch's row indices, or with an adversary the pair (those, its member and
    # reference rows ``[2, steps, B]``).
    def batch_step(state, rows, w, live, step_key, j, epoch, x_all, y_all):
        batches = None
        if adversary is not None:
            rows, extra = rows
            batches = (x_all[extra], y_all[extra])
        return step(state, x_all[rows], y_all[rows], w, jax.random.fold_in(step_key, j), live,
                    epoch, batches)

    def run_one(state, rows, w, live, step_key, epoch, x_all, y_all):
        def body(state, j):
            return batch_step(state, jax.tree.map(lambda r: r[j], rows), w[j], live[j],
                              step_key, j, epoch, x_all, y_all)

        def run(state):
            state, metrics = jax.lax.scan(body, state, jnp.arange(w.shape[0]))
            return state, jax.tree.map(jnp.sum, metrics)

        def skip(state):  # a stopped model: no step (in 'looped' mode, no computation either)
            return state, _zero_metrics(run, state)

        return jax.lax.cond(jnp.any(live), run, skip, state)

    if dp is None:
        plan_all = jax.jit(jax.vmap(functools.partial(_shuffle_plan, batch_size=batch_size)))
        if adversary is not None:
            adversary_all = jax.jit(
                jax.vmap(functools.partial(_adversary_plan, batch_size=batch_size,
                                           steps=adversary.steps),
                         in_axes=(0, 0, 0, 0, 0, None)), static_argnums=5)

        def plan(es, data, keys):
            rows, w, live, step_keys = plan_all(es.done, data.train_idx, data.train_n, keys)
            if adversary is not None:
                members = ((data.train_idx, data.train_n) if data.member_idx is None
                           else (data.member_idx, data.member_n))
                rows = (rows, adversary_all(*members, data.dev_idx, data.dev_n, keys,
                                            int(w.shape[1])))
            return rows, w, live, step_keys
    else:
        physical = dp.physical(batch_size)
        counts_all = jax.jit(jax.vmap(lambda done, n, key, n_max: _poisson_chosen(
            done, n, n_max, key, batch_size).sum(1), in_axes=(0, 0, 0, None)),
            static_argnums=3)
        plans = {}

        def plan(es, data, keys):
            n_max = int(data.train_idx.shape[1])
            most = int(jnp.max(counts_all(es.done, data.train_n, keys, n_max)))
            capacity = physical * max(1, -(-most // physical))
            if capacity not in plans:
                plans[capacity] = jax.jit(jax.vmap(functools.partial(
                    _poisson_plan, batch_size=batch_size, capacity=capacity)))
            return plans[capacity](es.done, data.train_idx, data.train_n, keys)

    if mode in ("fused", "looped"):
        axes = (0, 0, 0, 0, 0, None, None, None)
        mapped = (jax.vmap(run_one, in_axes=axes) if mode == "fused"
                  else looped_models(run_one, axes))
        run_all = jax.jit(sharding.over_models(mapped, mesh, axes))

        def epoch(states, es, data: EnsembleData, keys, number=0):
            rows, w, live, step_keys = plan(es, data, keys)
            return run_all(states, rows, w, live, step_keys, jnp.int32(number), data.x, data.y)

        return epoch

    axes = (0, 0, 0, 0, 0, None, None, None, None)
    step_all = jax.jit(sharding.over_models(unrolled_models(batch_step, axes), mesh, axes))

    def epoch(states, es, data: EnsembleData, keys, number=0):
        rows, w, live, step_keys = plan(es, data, keys)
        totals = None
        for j in range(w.shape[1]):
            states, m = step_all(states, jax.tree.map(lambda r: r[:, j], rows), w[:, j],
                                 live[:, j], step_keys,
                                 jnp.int32(j), jnp.int32(number), data.x, data.y)
            totals = m if totals is None else jax.tree.map(jnp.add, totals, m)
        return states, totals

    return epoch


@functools.lru_cache(maxsize=32)
def _predict_fn(model: Model, mode: str, chunk: int, mesh, transform):
    """Jitted ``(params, state, masks, idx [K, m*chunk], x_all) -> logits [K, m*chunk, C]``
    ('fused': one call, ``lax.map`` over chunks of a vmap over models) or the same for one chunk
    ('stepwise': models unrolled, called chunk by chunk); per device with a mesh."""
    axes = (0, 0, 0, 0, None)

    def one(p, s, m, rows, x_all):
        x = x_all[rows] if transform is None else transform(x_all[rows])
        return model.apply(pruning.apply_masks(p, m), s, x, train=False)[0]

    if mode != "stepwise":
        def all_chunks(params, model_state, masks, idx, x_all):
            k = idx.shape[0]
            chunks = idx.reshape(k, -1, chunk).transpose(1, 0, 2)
            logits = jax.lax.map(lambda c: jax.vmap(one, in_axes=axes)(
                params, model_state, masks, c, x_all), chunks)
            return logits.transpose(1, 0, 2, 3).reshape(k, idx.shape[1], -1)
        return jax.jit(sharding.over_models(all_chunks, mesh, axes))
    return jax.jit(sharding.over_models(unrolled_models(one, axes), mesh, axes))


def predict_logits(model: Model, params, model_state, masks, x_all, idx, chunk: int = 1024,
                   mode: str = "auto", mesh=None, transform=None):
    """Eval-mode logits of every model on its own rows: ``idx [K, n] -> [K, n, C]``.

    Rows go in chunks of ``chunk`` so large sets stay within memory; ``mode`` as in
    ``TrainConfig.ensemble_mode``; with a ``mesh`` each device computes its share of the models.
    ``transform`` (a jax function of a batch of inputs, e.g. a flipped or shifted view; pass the
    same object each time, it keys the compiled function) is applied to the rows first.
    """
    mode = resolve_ensemble_mode(mode, params)
    n = idx.shape[1]
    chunk = max(1, min(chunk, n))
    num_chunks = -(-n // chunk)
    padded = jnp.pad(jnp.asarray(idx), ((0, 0), (0, num_chunks * chunk - n)))
    fn = _predict_fn(model, mode, chunk, mesh, transform)
    args = (params, model_state, masks)
    if mode != "stepwise":
        logits = sharding.call(fn, mesh, (0, 0, 0, 0, None), *args, padded, x_all)
    else:
        logits = jnp.concatenate([
            sharding.call(fn, mesh, (0, 0, 0, 0, None), *args,
                          padded[:, c * chunk:(c + 1) * chunk], x_all)
            for c in range(num_chunks)], axis=1)
    return logits[:, :n]


def accuracy(logits, y, n):
    """Per-model accuracy over the first ``n[k]`` rows: logits [K, m, C], y [K, m]."""
    valid = jnp.arange(y.shape[1])[None, :] < n[:, None]
    correct = (predicted_class(logits) == y) & valid
    return correct.sum(1) / jnp.maximum(n, 1)


def _early_stop_update(es: EarlyStopState, states: TrainState, dev_acc, epoch, patience):
    improved = (dev_acc > es.best_acc) & ~es.done
    bad = jnp.where(improved, 0, es.bad_epochs + jnp.where(es.done, 0, 1))
    done = es.done | ((bad > patience) if patience is not None else False)
    return EarlyStopState(
        best_acc=jnp.where(improved, dev_acc, es.best_acc),
        best_epoch=jnp.where(improved, epoch, es.best_epoch),
        best_params=_select_models(improved, states.params, es.best_params),
        best_model_state=_select_models(improved, states.model_state, es.best_model_state),
        bad_epochs=bad, done=done)


def _select_models(pred, new, old):
    """Per-model select: ``pred`` [K] broadcast against leaves [K, ...]."""
    return jax.tree.map(lambda a, b: jnp.where(pred.reshape((-1,) + (1,) * (a.ndim - 1)), a, b),
                        new, old)


@dataclasses.dataclass(frozen=True)
class FitResult:
    params: Params  # best-on-dev params, leading model axis
    model_state: ModelState
    masks: Masks
    best_epoch: np.ndarray
    best_dev_acc: np.ndarray
    epochs_run: int
    steps: np.ndarray | None = None  # [K] optimizer steps each model took (DP accounting)
    # Every model's state after its last epoch (params, optimizer and adversary states), for
    # a later fit to continue from (``fit(..., start=)``); only with ``fit(return_last=True)``.
    last: TrainState | None = None
    # Every model's params after ``keep_epoch`` epochs (late rewinding's target); only with
    # ``fit(keep_epoch=)``.
    kept_params: Params | None = None


class Checkpointer:
    """Orbax checkpoints of one training stage; ``restore`` returns None when there are none."""

    def __init__(self, directory: str | None, every: int):
        self.manager = None
        if directory is not None:
            import orbax.checkpoint as ocp

            self._ocp = ocp
            self.manager = ocp.CheckpointManager(
                os.path.abspath(directory),
                options=ocp.CheckpointManagerOptions(max_to_keep=1, save_interval_steps=every,
                                                     enable_async_checkpointing=False))

    def restore(self, target):
        if self.manager is None or self.manager.latest_step() is None:
            return None
        step = self.manager.latest_step()
        try:
            return self.manager.restore(step, args=self._ocp.args.StandardRestore(target))
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"the checkpoint in {self.manager.directory} does not fit this run "
                            f"(model or data differ: {str(e).splitlines()[0][:120]}); pass a "
                            "fresh --workdir or delete that folder") from None

    def save(self, epoch: int, tree, force: bool = False):
        if self.manager is not None and self.manager.latest_step() != epoch:
            self.manager.save(epoch, args=self._ocp.args.StandardSave(tree), force=force)
            self.manager.wait_until_finished()

    def close(self):
        if self.manager is not None:
            self.manager.close()


@functools.lru_cache(maxsize=16)
def _compiled(model: Model, cfg: TrainConfig, regularizer: Regularizer | None,
              steps_per_epoch: int, masked: frozenset, mesh, defense: Defense | None = None):
    """The optimizer-state init, epoch and evaluation functions, built (and so compiled) once
    per (model, config, regularizer, steps, masked leaves, defense); ``cfg.ensemble_mode`` is
    already resolved."""
    tx = make_optimizer(cfg, steps_per_epoch)
    init_opt = jax.jit(jax.vmap(tx.init))
    epoch_fn = make_epoch_fn(model, tx, cfg.batch_size, regularizer, cfg.ensemble_mode, cfg.loss,
                             cfg.dp, masked, mesh, defense)
    update = jax.jit(_early_stop_update, static_argnums=(4,))

    def evaluate(states, es, epoch, data):
        logits = predict_logits(model, states.params, states.model_state, states.masks, data.x,
                                data.dev_idx, cfg.eval_batch_size, cfg.ensemble_mode, mesh)
        dev_acc = _dev_accuracy(logits, data)
        return dev_acc, update(es, states, dev_acc, jnp.int32(epoch), cfg.patience)

    return init_opt, epoch_fn, evaluate


# Epoch e of model k draws with fold_in(keys[k], e): one compiled call for all models.
_epoch_keys = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))


@jax.jit
def _dev_accuracy(logits, data: EnsembleData):
    return accuracy(logits, data.y[data.dev_idx], data.dev_n)


def fit(model: Model, params: Params, model_state: ModelState, masks: Masks,
        data: EnsembleData, cfg: TrainConfig, keys: jax.Array, *,
        regularizer: Regularizer | None = None, checkpoint_dir: str | None = None,
        metrics_path: str | None = None, stage: str = "train",
        stop_after: int | None = None, mesh=None, defense: Defense | None = None,
        defended: np.ndarray | None = None, schedule: Schedule | None = None,
        start: TrainState | None = None, return_last: bool = False,
        keep_epoch: int | None = None) -> FitResult:
    """Trains an ensemble (leading model axis on params, model_state, masks and keys).

    Args:
      model: the architecture.
      params, model_state, masks: initial values, each with a leading model axis K.
      data: the pool and per-model train/dev index matrices.
      cfg: hyper-parameters; a fresh optimizer is made from it.
      keys: typed PRNG keys ``[K]``; epoch ``e`` of model ``k`` uses ``fold_in(keys[k], e)``.
      regularizer: optional extra loss term of the params (e.g. ``pruning.slim_penalty``).
      defense: optional loss-term defense (:mod:`jaxmia.defenses`), for every model of the fit.
      defended: optional bool ``[K]``: the models the defense trains (the others train without
        it, e.g. non-adaptive shadows); None: all of them.
      schedule: optional data schedule (:class:`jaxmia.base.Schedule`, WeMem's RSW/RMR): each
        epoch runs its phases in order, each a shuffled pass over the rows it names instead of
        ``data.train_idx``; a phase with its own weight decay keeps its own optimizer state.
        Not with DP-SGD (its accounting assumes uniform sampling) or lr milestones.
      checkpoint_dir: orbax directory for this stage; training resumes from its latest epoch.
      metrics_path: JSONL file; one line per epoch.
      stage: name written in metrics lines and the progress bar.
      stop_after: stop (as if killed) after this many epochs of this call; for resume tests.
      mesh: a 1-D ``'model'`` mesh (:func:`jaxmia.sharding.model_mesh`): the models are split
        over its devices (padded to a multiple of its size with stopped copies); None: one device.
      start: optional ``FitResult.last`` of an earlier fit of the same models, optimizer and
        defense to continue from: its optimizer and adversary states carry over (the
        ``params``, ``model_state`` and ``masks`` given here are the ones trained; IMP's next
        round passes the carried params, pruned further); step counts restart at 0.
      return_last: also return every model's state after its last epoch (``FitResult.last``,
        what ``start`` takes); off by default, as it holds a second copy of the params and the
        optimizer state.
      keep_epoch: also return every model's params after this many epochs, 0 for the params
        given (``FitResult.kept_params``, what IMP's rewinding resets to); checkpointed with the
        fit, so a resumed fit returns the same. A model stopped early keeps its last params,
        which no later epoch would have changed.

    Returns:
      FitResult with each model's best-on-dev params (``cfg.keep='best'``) or final params.
    """
    if cfg.keep not in ("best", "last"):
        raise UserError(f"unknown keep='{cfg.keep}'; choose best or last")
    if keep_epoch is not None and not 0 <= keep_epoch <= cfg.epochs:
        raise UserError(f"the params to keep must be those after one of the fit's epochs (0, "
                        f"the start, to {cfg.epochs}), got epoch {keep_epoch}")
    masked = pruning.masked_paths(masks)  # static: the step multiplies only these by masks
    if defended is not None:
        if defense is None:
            raise UserError("defended needs a defense: it names the models a defense trains")
        defended = jnp.asarray(defended, bool)
        if defended.shape != (data.num_models,):
            raise UserError(f"defended needs one flag per model ({data.num_models}), got shape "
                            f"{defended.shape}")
    if cfg.dp is not None:
        cfg.dp.validate(cfg.batch_size)
        clipping.check_model(model)
    if schedule is not None and cfg.dp is not None:
        raise UserError(f"the {schedule.name} data schedule cannot be combined with DP-SGD: its "
                        "privacy accounting assumes every row is sampled at the same rate in "
                        "every step; use one defense at a time")
    if schedule is not None and cfg.lr_milestones:
        raise UserError(f"the {schedule.name} data schedule changes the steps of an epoch, which "
                        "lr milestones count; train it without lr milestones")
    num_models = data.num_models
    if mesh is not None:
        padded = sharding.padded_size(num_models, mesh)
        params, model_state, masks, keys = (sharding.pad(t, num_models, padded)
                                            for t in (params, model_state, masks, keys))
        if defended is not None:
            defended = sharding.pad(defended, num_models, padded)
        data = EnsembleData(*sharding.replicate((data.x, data.y), mesh), *sharding.pad(
            (data.train_idx, data.train_n, data.dev_idx, data.dev_n), num_models, padded))
    steps_per_epoch = epoch_steps(data, cfg.batch_size)
    # Epoch count and checkpoint interval do not change the compiled code.
    mode = resolve_ensemble_mode(cfg.ensemble_mode, params)
    stage_cfg = dataclasses.replace(cfg, epochs=0, checkpoint_every=1, ensemble_mode=mode,
                                    keep="best")
    init_opt, epoch_fn, evaluate = _compiled(model, stage_cfg, regularizer, steps_per_epoch,
                                             masked, mesh, defense)
    if schedule is None:
        opt_state = init_opt(params)
    else:
        passes = [_compiled(model, stage_cfg if phase.weight_decay is None else
                            dataclasses.replace(stage_cfg, weight_decay=phase.weight_decay),
                            regularizer, -(-max(phase.capacity, 1) // cfg.batch_size), masked,
                            mesh, defense) for phase in schedule.phases]
        opt_state = tuple(p[0](params) for p in passes)
        opt_state = opt_state[0] if len(passes) == 1 else opt_state
    defense_state = _adversary_init(model, defense, params, model_state, data, keys, num_models)
    if start is not None:
        if mesh is not None:
            start = sharding.pad(start, num_models, int(data.train_idx.shape[0]))
        for name, fresh, carried in (("optimizer", opt_state, start.opt_state),
                                     ("adversary", defense_state, start.defense_state)):
            if (jax.tree.structure(fresh) != jax.tree.structure(carried) or any(
                    a.shape != b.shape for a, b in zip(jax.tree.leaves(fresh),
                                                       jax.tree.leaves(carried)))):
                raise UserError(f"the state to continue from holds another {name} state than "
                                "this fit's; continue only a fit of the same models, optimizer, "
                                "defense and schedule")
        opt_state, defense_state = start.opt_state, start.defense_state
    states = TrainState(step=jnp.zeros((data.num_models,), jnp.int32), params=params, masks=masks,
                        model_state=model_state, opt_state=opt_state,
                        defense_state=defense_state, defended=defended)
    es = EarlyStopState(
        best_acc=jnp.full((data.num_models,), -1.0, jnp.float32),
        best_epoch=jnp.full((data.num_models,), -1, jnp.int32),
        best_params=params, best_model_state=model_state,
        bad_epochs=jnp.zeros((data.num_models,), jnp.int32),
        done=jnp.arange(data.num_models) >= num_models)  # padding models never train
    if mesh is not None:
        states, es, keys = sharding.shard_models((states, es, keys), mesh)
        data = dataclasses.replace(data, **dict(zip(
            ("train_idx", "train_n", "dev_idx", "dev_n"), sharding.shard_models(
                (data.train_idx, data.train_n, data.dev_idx, data.dev_n), mesh))))
    # Until epoch ``keep_epoch`` is done, the params to keep are the current ones.
    kept = states.params if keep_epoch is not None else None
    ckpt = Checkpointer(checkpoint_dir, cfg.checkpoint_every)
    start = 0
    restored = ckpt.restore(_snapshot(states, es, 0, kept))
    if restored is not None:
        states, es, start = restored["states"], restored["es"], int(restored["epoch"])
        kept = restored.get("kept")

    bar = tqdm(range(start, cfg.epochs), desc=stage, file=sys.stderr, leave=False,
               initial=start, total=cfg.epochs)
    epochs_run = start
    for epoch in bar:
        if bool(jnp.all(es.done)):
            break
        epoch_keys = _epoch_keys(keys, jnp.int32(epoch))
        if schedule is None:
            states, m = epoch_fn(states, es, data, epoch_keys, epoch)
        else:
            states, m = _scheduled_epoch(schedule, [p[1] for p in passes], states, es, data,
                                         epoch_keys, epoch, num_models, mesh)
        dev_acc, es = evaluate(states, es, epoch, data)
        epochs_run = epoch + 1
        if epochs_run == keep_epoch:
            kept = states.params
        real = slice(0, num_models)  # without the padding models of a mesh
        m, host_acc, done = sharding.to_host((m, dev_acc, es.done))
        n = np.maximum(m["n"][real], 1)
        line = {"stage": stage, "epoch": epoch,
                "train/loss": _rounded(m["loss_sum"][real] / n),
                "train/acc": _rounded(m["correct"][real] / n),
                "dev/acc": _rounded(host_acc[real]),
                "stopped": done[real].tolist()}
        if metrics_path and jax.process_index() == 0:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(line) + "\n")
        bar.set_postfix(dev_acc=f"{float(np.mean(line['dev/acc'])):.3f}")
        ckpt.save(epochs_run, _snapshot(states, es, epochs_run, kept))
        if stop_after is not None and epochs_run - start >= stop_after:
            ckpt.close()
            raise KeyboardInterrupt(f"stopped after epoch {epoch} (stop_after={stop_after})")
    if keep_epoch is not None and epochs_run < keep_epoch:
        kept = states.params  # every model stopped early: later epochs would not change them
    ckpt.save(epochs_run, _snapshot(states, es, epochs_run, kept), force=True)
    ckpt.close()
    bar.close()
    states, es, masks, kept = sharding.unpad((states, es, masks, kept), num_models)
    if jax.process_count() > 1:  # multi-host: every process gets every model
        states, es, masks, kept = jax.tree.map(jnp.asarray,
                                               sharding.to_host((states, es, masks, kept)))
    if cfg.keep == "last":
        return FitResult(params=states.params, model_state=states.model_state, masks=masks,
                         best_epoch=np.full(num_models, epochs_run - 1),
                         best_dev_acc=np.asarray(es.best_acc), epochs_run=epochs_run,
                         steps=np.asarray(states.step), last=states if return_last else None,
                         kept_params=kept)
    # With DP, the best-on-dev choice looks at the whole trajectory, so ``steps`` (all steps
    # taken, not those up to the best epoch) is what the privacy accounting must count.
    return FitResult(params=es.best_params, model_state=es.best_model_state, masks=masks,
                     best_epoch=np.asarray(es.best_epoch), best_dev_acc=np.asarray(es.best_acc),
                     epochs_run=epochs_run, steps=np.asarray(states.step),
                     last=states if return_last else None, kept_params=kept)


def _scheduled_epoch(schedule: Schedule, epoch_fns, states: TrainState, es, data: EnsembleData,
                     keys, epoch: int, num_models: int, mesh):
    """One epoch of a data schedule: its phases in order, each an epoch function's pass over
    the phase's rows with the phase's optimizer state. The last phase draws with the epoch's
    keys, an earlier phase p with their fold-in of ``p + 2`` (1 is the adversary's)."""
    several = len(schedule.phases) > 1
    opt_states = states.opt_state
    totals = None
    for p, (phase, epoch_fn) in enumerate(zip(schedule.phases, epoch_fns)):
        rows = phase.rows(epoch)
        if len(rows) != num_models:
            raise ValueError(f"phase {p} of the {schedule.name} schedule gives rows for "
                             f"{len(rows)} models, not {num_models}")
        idx, n = (jnp.asarray(a) for a in pad_indices(rows, max(phase.capacity, 1)))
        if mesh is not None:
            idx, n = sharding.shard_models(
                sharding.pad((idx, n), num_models, int(data.train_idx.shape[0])), mesh)
        phase_keys = keys if p == len(schedule.phases) - 1 else _epoch_keys(keys,
                                                                            jnp.int32(p + 2))
        if several:
            states = dataclasses.replace(states, opt_state=opt_states[p])
        phase_data = dataclasses.replace(data, train_idx=idx, train_n=n,
                                         member_idx=data.train_idx, member_n=data.train_n)
        states, m = epoch_fn(states, es, phase_data, phase_keys, epoch)
        if several:
            opt_states = opt_states[:p] + (states.opt_state,) + opt_states[p + 1:]
        totals = m if totals is None else jax.tree.map(jnp.add, totals, m)
    if several:
        states = dataclasses.replace(states, opt_state=opt_states)
    return states, totals


def _adversary_init(model: Model, defense: Defense | None, params, model_state,
                    data: EnsembleData, keys, num_models: int):
    """Each model's adversary state (None without one), from its own key (a split of the
    model's key; its epochs' keys are fold-ins)."""
    if defense is None or defense.adversary is None:
        return None
    if int(np.min(np.asarray(data.dev_n)[:num_models])) < 1:
        raise UserError(f"the {defense.name} defense trains its adversary on each model's dev "
                        "rows as non-members; every model needs at least one dev row")
    one = jax.tree.map(lambda a: a[0], (params, model_state))
    logits = jax.eval_shape(lambda p, s: model.apply(p, s, data.x[:1], train=False)[0], *one)
    init_keys = jax.vmap(lambda k: jax.random.split(k)[1])(keys)
    return jax.jit(jax.vmap(defense.adversary.init, in_axes=(0, None)),
                   static_argnums=1)(init_keys, int(logits.shape[-1]))


def _snapshot(states: TrainState, es: EarlyStopState, epochs_done: int, kept=None) -> dict:
    """What a checkpoint holds: everything the next epoch depends on (keys derive from it),
    and ``fit(keep_epoch=)``'s params."""
    snap = {"states": states, "es": es, "epoch": np.asarray(epochs_done, np.int32)}
    return snap if kept is None else {**snap, "kept": kept}


def _rounded(values) -> list[float]:
    return [round(float(v), 5) for v in np.asarray(values)]


def init_ensemble(model: Model, keys: jax.Array):
    """``vmap(model.init)`` over typed keys ``[K]``: params and state with a leading model axis."""
    return jax.jit(jax.vmap(model.init))(keys)

