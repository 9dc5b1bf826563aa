"""Pruning with masked-parameter pytrees.

Masks are a pytree of the params' structure with {0., 1.} leaves. The training loss applies them
inside the forward pass (``model.apply(apply_masks(params, masks), ...)``) and the train step
multiplies the updated params by them, so pruned weights stay exactly zero through fine-tuning.

Methods (the semantics of NNI 2.2 as mia_prune calls it; see ../shared/PAPERS-CODE-NOTES.md):
- ``l1_unstructured``: per conv/dense kernel, the ``int(numel * s)`` smallest |w| are removed (every
  weight with |w| <= the k-th smallest, as NNI's LevelPruner does; biases are kept).
- ``l1_unstructured_global``: one threshold over all kernels together.
- ``l1_structured`` / ``l2_structured``: per conv layer with >= 2 filters, the ``int(filters * s)``
  filters of smallest L1 / L2 norm; the mask covers the filter's kernel slice and its bias.
- ``slim``: network slimming, one global threshold on |gamma| over all BatchNorm layers, masking
  gamma and beta (``slim_penalty`` gives the optional L1-on-gamma sparsity-training term).
- ``iterative_magnitude``: N rounds of prune-and-retrain (lottery-ticket style), with optional
  rewinding of the surviving weights to an earlier checkpoint.

All mask functions act on one model's params; ``jax.vmap`` them over an ensemble's model axis.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxmia.base import Masks, Params
from jaxmia.errors import UserError

Path = tuple[str, ...]


def check_sparsity(sparsity: float) -> None:
    if not (0.0 <= sparsity < 1.0) or not np.isfinite(sparsity):
        raise UserError(f"sparsity must be in [0, 1), got {sparsity}; e.g. --sparsity=0.7 "
                        "removes 70% of the weights")


def apply_masks(params: Params, masks: Masks, paths: frozenset | None = None) -> Params:
    """``params * masks``; with ``paths`` (from :func:`masked_paths`) only those leaves are
    multiplied: the other masks are all ones, so the result is the same, without the work."""
    if paths is None:
        return jax.tree.map(jnp.multiply, params, masks)
    return jax.tree_util.tree_map_with_path(
        lambda kp, p, m: p * m if _key_path(kp) in paths else p, params, masks)


def masked_paths(masks: Masks) -> frozenset:
    """Key paths (tuples of dict keys) of the mask leaves that hold a zero in any model: the
    only params that masking changes. Reads the (concrete) masks on the host."""
    return frozenset(_key_path(kp) for kp, leaf in jax.tree_util.tree_flatten_with_path(masks)[0]
                     if not bool(np.all(np.asarray(leaf) == 1)))


def _key_path(keypath) -> Path:
    return tuple(k.key for k in keypath)


def ones_like(params: Params) -> Masks:
    return jax.tree.map(jnp.ones_like, params)


def _flat(tree) -> dict[Path, jax.Array]:
    return traverse_util.flatten_dict(tree)


def _unflat(flat):
    return traverse_util.unflatten_dict(flat)


def is_kernel(path: Path, leaf) -> bool:
    """Conv (4-D) and dense (2-D) weights: what unstructured pruning removes."""
    return path[-1] == "kernel" and leaf.ndim in (2, 4)


def _is_bn_scale(path: Path) -> bool:
    return path[-1] == "scale" and any(p.startswith("BatchNorm") for p in path[-2:])


def _threshold_mask(magnitude: jax.Array, k: int, threshold_from=None) -> jax.Array:
    """1 where magnitude > the k-th smallest value of ``threshold_from`` (NNI's tie rule)."""
    source = magnitude if threshold_from is None else threshold_from
    if k <= 0:
        return jnp.ones_like(magnitude)
    threshold = jnp.sort(source.ravel())[k - 1]
    return (magnitude > threshold).astype(magnitude.dtype)


def l1_unstructured(params: Params, sparsity: float) -> Masks:
    """Per-layer magnitude masks (NNI LevelPruner): in every kernel the ``int(numel*s)`` smallest
    |w| go."""
    check_sparsity(sparsity)
    flat = _flat(params)
    masks = {p: (_threshold_mask(jnp.abs(w), int(w.size * sparsity)) if is_kernel(p, w)
                 else jnp.ones_like(w)) for p, w in flat.items()}
    return _unflat(masks)


def l1_unstructured_global(params: Params, sparsity: float) -> Masks:
    """One magnitude threshold over all kernels: ``int(total * s)`` weights go in all."""
    check_sparsity(sparsity)
    flat = _flat(params)
    kernels = [jnp.abs(w).ravel() for p, w in flat.items() if is_kernel(p, w)]
    pooled = jnp.concatenate(kernels)
    k = int(pooled.size * sparsity)
    masks = {p: (_threshold_mask(jnp.abs(w), k, pooled) if is_kernel(p, w) else jnp.ones_like(w))
             for p, w in flat.items()}
    return _unflat(masks)


def _ln_structured(params: Params, sparsity: float, order: int) -> Masks:
    check_sparsity(sparsity)
    flat = _flat(params)
    masks = {p: jnp.ones_like(w) for p, w in flat.items()}
    for p, w in flat.items():
        if not (p[-1] == "kernel" and w.ndim == 4) or w.shape[-1] < 2:
            continue  # Only conv layers with at least 2 filters, as NNI's filter pruners.
        norms = jnp.sum(jnp.abs(w) ** order, axis=(0, 1, 2))  # One value per output filter.
        keep = _threshold_mask(norms, int(w.shape[-1] * sparsity))
        masks[p] = jnp.broadcast_to(keep, w.shape).astype(w.dtype)
        bias = p[:-1] + ("bias",)
        if bias in flat:
            masks[bias] = keep.astype(flat[bias].dtype)
    return _unflat(masks)


def l1_structured(params: Params, sparsity: float) -> Masks:
    """Filter pruning by L1 norm, per conv layer."""
    return _ln_structured(params, sparsity, 1)


def l2_structured(params: Params, sparsity: float) -> Masks:
    """Filter pruning by L2 norm (squared norms rank the same), per conv layer."""
    return _ln_structured(params, sparsity, 2)


def slim(params: Params, sparsity: float) -> Masks:
    """Network slimming: one global threshold on |gamma| of all BatchNorm layers.

    Raises:
      UserError: the model has no BatchNorm layers (build it with --norm=batch).
    """
    check_sparsity(sparsity)
    flat = _flat(params)
    scales = {p: w for p, w in flat.items() if _is_bn_scale(p)}
    if not scales:
        raise UserError("network slimming needs BatchNorm layers, and this model has none; use "
                        "an image model with --norm=batch or another --pruning method")
    pooled = jnp.concatenate([jnp.abs(w).ravel() for w in scales.values()])
    k = int(pooled.size * sparsity)
    masks = {p: jnp.ones_like(w) for p, w in flat.items()}
    for p, w in scales.items():
        keep = _threshold_mask(jnp.abs(w), k, pooled)
        masks[p] = keep
        masks[p[:-1] + ("bias",)] = keep
    return _unflat(masks)


def slim_penalty(params: Params, strength: float) -> jax.Array:
    """L1 sparsity-training term on BatchNorm scales (Liu et al. 2017): strength * sum |gamma|."""
    scales = [jnp.abs(w).sum() for p, w in _flat(params).items() if _is_bn_scale(p)]
    return strength * sum(scales) if scales else jnp.zeros(())


METHODS: dict[str, Callable[[Params, float], Masks]] = {
    "l1_unstructured": l1_unstructured,
    "l1_unstructured_global": l1_unstructured_global,
    "l1_structured": l1_structured,
    "l2_structured": l2_structured,
    "slim": slim,
}


def check_method(name: str) -> None:
    if name not in METHODS and name != "none":
        raise UserError(f"unknown pruning method '{name}'; choose one of "
                        f"{', '.join(list(METHODS) + ['none'])}")


def check_model(method: str, params: Params, model_name: str) -> None:
    """Refuses, before any training, a method the model gives nothing to prune: a filter pruner
    without conv filters (the MLP, the BERTs; it would silently leave the model dense), network
    slimming without BatchNorm scales. ``params`` may be shapes (``jax.eval_shape`` of the
    model's init)."""
    flat = _flat(params)
    if method == "slim" and not any(_is_bn_scale(p) for p in flat):
        raise UserError(f"network slimming needs BatchNorm, and model '{model_name}' has none; "
                        "use --norm=batch with an image model")
    if method in ("l1_structured", "l2_structured") and not any(
            p[-1] == "kernel" and len(w.shape) == 4 and w.shape[-1] >= 2 for p, w in flat.items()):
        raise UserError(f"{method} removes conv filters, and model '{model_name}' has no conv "
                        "layer; use l1_unstructured (or l1_unstructured_global) with it")


def make_masks(method: str, params: Params, sparsity: float, old_masks: Masks | None = None,
               ensemble: bool = False) -> Masks:
    """Masks of ``method`` at ``sparsity``, combined with ``old_masks`` (already pruned stays
    pruned). With ``ensemble``, params carry a leading model axis and each model is pruned alone."""
    check_method(method)
    if method == "none":
        masks = jax.tree.map(jnp.ones_like, params)
    else:
        fn = jax.vmap(lambda p: METHODS[method](p, sparsity)) if ensemble else (
            lambda p: METHODS[method](p, sparsity))
        masks = jax.jit(fn)(params)
    if old_masks is not None:
        masks = jax.tree.map(jnp.multiply, masks, old_masks)
    return masks


def round_sparsities(sparsity: float, rounds: int) -> list[float]:
    """Cumulative sparsity after each IMP round, removing the same fraction of survivors each
    round: s_r = 1 - (1 - s)^(r / rounds)."""
    check_sparsity(sparsity)
    if rounds < 1:
        raise UserError(f"iterative pruning needs at least 1 round, got {rounds}")
    return [1.0 - (1.0 - sparsity) ** (r / rounds) for r in range(1, rounds + 1)]


def iterative_magnitude(params: Params, sparsity: float, rounds: int,
                        retrain: Callable[[Params, Masks, int], Params],
                        method: str = "l1_unstructured", rewind_params: Params | None = None,
                        ensemble: bool = False) -> tuple[Params, Masks]:
    """Iterative magnitude pruning: ``rounds`` rounds of prune-to-s_r then ``retrain``.

    Args:
      params: trained params (leading model axis if ``ensemble``).
      sparsity: the final sparsity.
      rounds: number of prune-and-retrain rounds.
      retrain: ``retrain(params, masks, round) -> params``; fine-tunes under the masks.
      method: the magnitude criterion of each round.
      rewind_params: if given, the surviving weights are reset to these (an earlier checkpoint,
        Frankle et al.'s rewinding) before each retraining.
      ensemble: params carry a leading model axis.

    Returns:
      (params, masks) after the last round.
    """
    masks = None
    for r, s_r in enumerate(round_sparsities(sparsity, rounds)):
        # Pruned weights are stored as exact zeros, so the criterion ranks them first and the
        # cumulative count of removed weights is int(numel * s_r).
        masks = make_masks(method, params, s_r, masks, ensemble=ensemble)
        start = rewind_params if rewind_params is not None else params
        params = retrain(apply_masks(start, masks), masks, r)
    return params, masks


def report(masks: Masks) -> dict:
    """Achieved sparsity: per prunable layer (kernels and BatchNorm scales), over all kernels
    (``overall``) and over all BatchNorm scales (``overall_bn_scales``, what slimming prunes).

    With a leading model axis the fractions are averaged over models.
    """
    layers, counts = {}, {"kernel": [0, 0], "bn": [0, 0]}
    for p, m in _flat(masks).items():
        m = np.asarray(m)
        kind = "kernel" if p[-1] == "kernel" and m.ndim >= 2 else "bn" if _is_bn_scale(p) else None
        if kind:
            layers["/".join(p)] = float(1.0 - m.mean())
            counts[kind][0] += int((m == 0).sum())
            counts[kind][1] += m.size
    frac = {k: z / t if t else 0.0 for k, (z, t) in counts.items()}
    return {"overall": frac["kernel"], "overall_bn_scales": frac["bn"], "layers": layers}
