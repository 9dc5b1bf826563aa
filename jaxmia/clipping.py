"""Per-example gradient clipping for DP-SGD: the vmap path, the ghost-norm path, micro-batches.

Every method returns the same thing for one physical batch: the sum over examples (or groups) of
their gradients, each scaled to L2 norm at most ``clip_norm``, plus the per-example norms. Padded
rows (weight 0) contribute nothing. Gradients are taken with respect to the unmasked params of
``model.apply(params * masks, ...)``, so pruned weights get zero gradient and do not count in a
norm.

- ``'vmap'``: ``vmap(grad)`` over examples, each example a batch of one (its own dropout key).
  Memory grows with batch x parameters.
- ``'ghost'``: per-example norms without per-example gradients (Li et al. 2022, "Large language
  models can be strong differentially private learners"; the book-keeping of Bu et al. 2023,
  "Differentially private optimization on large model at small cost"). One batched forward pass
  records each layer's input ``a`` and, through a zero "tap" added to the layer's output, one
  backward pass gives the output gradients ``g`` of the summed loss. For a dense layer with
  ``a [B, T, d]``, ``g [B, T, p]``: ``||grad_W L_i||^2 = <a_i a_i^T, g_i g_i^T>`` (the Gram form,
  cost ``B T^2 (d + p)``) or ``||a_i^T g_i||^2`` (the direct form, cost ``B T d p``), chosen per
  layer by cost (``ghost_form='auto'``) or forced; for ``T = 1`` it is ``|a_i|^2 |g_i|^2``.
  Convolutions use the same forms on their unfolded patches, embeddings a Gram form over equal
  token ids, LayerNorm/GroupNorm their per-example scale and bias gradients. The clipped sum is
  then ``a^T (c * g)`` per layer from the same ``a`` and ``g`` (no second backward pass). Pruned
  layers (named in ``pruned``) use masked forms: for ``T = 1``, ``(a_i^2)^T M (g_i^2)``; for
  ``T > 1`` the direct form times the mask (the Gram form cannot see a mask).
- ``'microbatch'``: mia_prune's DP (pyvacy): the *mean* gradient of each group of
  ``group_size`` consecutive rows is clipped, not each example's. ``group_size = 1`` is per-example
  clipping. Under add/remove-one adjacency one example can move a group's clipped mean by up to
  ``2 C``, which the accounting in :mod:`jaxmia.accounting` takes into account.

Guarantees:
  For every method, each summed term (example or group) has L2 norm <= ``clip_norm`` (up to
  float rounding), and a row with weight 0 contributes exactly zero.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxmia import pruning
from jaxmia.base import Model
from jaxmia.errors import UserError

METHODS = ("auto", "vmap", "ghost", "microbatch")
GHOST_FORMS = ("auto", "gram", "direct")
_TINY = 1e-12


def tree_sq_norms(grads, batch_axis: int = 0):
    """Squared L2 norm of each slice along ``batch_axis`` of a tree of stacked gradients."""
    return sum(jnp.sum(jnp.square(g.reshape(g.shape[batch_axis], -1)), axis=1)
               for g in jax.tree.leaves(grads))


def clip_factors(norms, weight, clip_norm: float):
    """``weight * min(1, C / norm)``: the factor each per-example gradient is multiplied by."""
    return weight * jnp.minimum(1.0, clip_norm / jnp.maximum(norms, _TINY))


def weighted_sum(grads, factors):
    """``sum_i factors[i] * grads[i]`` over the leading axis of every leaf."""
    return jax.tree.map(lambda g: jnp.tensordot(factors, g, axes=1), grads)


@dataclasses.dataclass(frozen=True)
class Clipped:
    """What a clipping method returns for one physical batch."""

    grad_sum: object  # tree like params: sum of clipped per-example (or per-group) gradients
    norms: jax.Array  # [B] (or [groups]) norms before clipping
    loss_sum: jax.Array  # sum of weighted per-example losses
    correct: jax.Array  # count of weighted correct predictions


jax.tree_util.register_dataclass(Clipped, data_fields=["grad_sum", "norms", "loss_sum", "correct"],
                                 meta_fields=[])


def make(model: Model, loss_of: Callable, predicted_class: Callable, method: str, *,
         clip_norm: float, group_size: int = 1, ghost_form: str = "auto",
         pruned: frozenset = frozenset()):
    """Returns ``clip(params, masks, model_state, x, y, weight, key) -> Clipped``.

    Args:
      model: the architecture; must not carry BatchNorm statistics.
      loss_of: per-example loss ``(logits [B, C], y [B]) -> [B]``.
      predicted_class: ``logits -> class`` (for the accuracy count).
      method: 'vmap', 'ghost' or 'microbatch' (see the module docstring); 'auto' is 'ghost'
        when every parameter sits in a layer ghost clipping knows, else 'vmap'.
      clip_norm: the clipping bound C.
      group_size: rows per clipped group for 'microbatch'.
      ghost_form: 'auto' (cheaper of Gram and direct per layer), 'gram' or 'direct'.
      pruned: paths (tuples of module names) of layers whose masks have zeros; needed by 'ghost'.
    """
    check_model(model)
    if method not in METHODS:
        raise UserError(f"unknown clipping method '{method}'; choose one of {', '.join(METHODS)}")
    if not clip_norm > 0:
        raise UserError(f"the clip norm must be > 0, got {clip_norm}")
    if method in ("auto", "ghost") and ghost_form not in GHOST_FORMS:
        raise UserError(f"unknown ghost form '{ghost_form}'; choose one of "
                        f"{', '.join(GHOST_FORMS)}")
    size = group_size if method == "microbatch" else 1
    if size < 1:
        raise UserError(f"the micro-batch size must be >= 1, got {size}")
    grouped = _make_grouped(model, loss_of, predicted_class, clip_norm, size)
    if method in ("vmap", "microbatch"):
        return grouped
    ghost = _make_ghost(model, loss_of, predicted_class, clip_norm, ghost_form, pruned)
    if method == "ghost":
        return ghost

    def auto(params, masks, model_state, x, *rest):
        try:  # at trace time: can ghost clipping handle every layer of this model?
            _discover(model, params, model_state, x)
        except UserError:
            return grouped(params, masks, model_state, x, *rest)
        return ghost(params, masks, model_state, x, *rest)

    return auto


def check_model(model: Model) -> None:
    if model.has_batchnorm:
        raise UserError(f"DP-SGD needs per-example gradients, but {model.name} has BatchNorm, "
                        "whose batch statistics mix the examples of a batch; build it with "
                        "--norm=group (GroupNorm) instead")


# ---------------------------------------------------------------------------------------------
# The vmap path (and mia_prune's micro-batches): gradients of groups, clipped and summed.


def _make_grouped(model, loss_of, predicted_class, clip_norm, size):
    def group_loss(params, masks, model_state, x, y, w, key):
        logits, _ = model.apply(pruning.apply_masks(params, masks), model_state, x, train=True,
                                key=key)
        losses = loss_of(logits, y)
        mean = jnp.sum(w * losses) / jnp.maximum(jnp.sum(w), 1.0)
        correct = jnp.sum(w * (predicted_class(logits) == y))
        return mean, (jnp.sum(w * losses), correct)

    grad_fn = jax.grad(group_loss, has_aux=True)

    def clip(params, masks, model_state, x, y, weight, key):
        b = x.shape[0]
        if b % size:
            raise UserError(f"the physical batch ({b}) must be a multiple of the micro-batch "
                            f"size ({size})")
        groups = b // size
        xs = x.reshape((groups, size) + x.shape[1:])
        ys = y.reshape((groups, size) + y.shape[1:])
        ws = weight.reshape(groups, size)
        keys = jax.random.split(key, groups)
        grads, (loss_sums, correct) = jax.vmap(grad_fn, in_axes=(None, None, None, 0, 0, 0, 0))(
            params, masks, model_state, xs, ys, ws, keys)
        norms = jnp.sqrt(tree_sq_norms(grads))
        active = (jnp.sum(ws, axis=1) > 0).astype(norms.dtype)
        factors = clip_factors(norms, active, clip_norm)
        return Clipped(weighted_sum(grads, factors), norms, jnp.sum(loss_sums), jnp.sum(correct))

    return clip


# ---------------------------------------------------------------------------------------------
# The ghost path.

_SUPPORTED = (nn.Dense, nn.Conv, nn.Embed, nn.LayerNorm, nn.GroupNorm)


@dataclasses.dataclass(frozen=True)
class _Layer:
    path: tuple
    kind: str  # 'dense' | 'conv' | 'embed' | 'layernorm' | 'groupnorm'
    out_shape: tuple
    config: tuple  # kind-specific static settings (hashable)


def _layer_of(module, out_shape) -> _Layer:
    path = tuple(module.path)
    shape = tuple(out_shape)
    if isinstance(module, nn.Dense):
        return _Layer(path, "dense", shape, ())
    if isinstance(module, nn.Conv):
        if module.feature_group_count != 1 or module.padding in ("CIRCULAR", "CAUSAL", "REFLECT"):
            raise UserError(f"ghost clipping supports plain convolutions only; layer "
                            f"{'/'.join(path)} is grouped or uses {module.padding!r} padding: "
                            "use --dp_clipping=vmap")
        nd = len(module.kernel_size)

        def tup(v, default=1):
            if v is None:
                return (default,) * nd
            return (v,) * nd if isinstance(v, int) else tuple(v)

        padding = module.padding
        if isinstance(padding, int):
            padding = ((padding, padding),) * nd
        elif not isinstance(padding, str):
            padding = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
        return _Layer(path, "conv", shape, (tuple(module.kernel_size), tup(module.strides),
                                            padding, tup(module.input_dilation),
                                            tup(module.kernel_dilation)))
    if isinstance(module, nn.Embed):
        return _Layer(path, "embed", shape, ())
    if isinstance(module, nn.LayerNorm):
        if module.reduction_axes != -1 or module.feature_axes != -1:
            raise UserError(f"ghost clipping supports LayerNorm over the last axis only (layer "
                            f"{'/'.join(path)}); use --dp_clipping=vmap")
        return _Layer(path, "layernorm", shape, (module.epsilon, module.use_fast_variance))
    return _Layer(path, "groupnorm", shape, (module.num_groups, module.group_size,
                                             module.epsilon))


def _subtree(tree, path):
    for name in path:
        tree = tree[name]
    return tree


def _discover(model: Model, params, model_state, x) -> tuple[_Layer, ...]:
    """The supported layers of ``model`` in call order, with their output shapes."""
    found = []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and isinstance(context.module, _SUPPORTED):
            found.append(_layer_of(context.module, out.shape))
        return out

    def run(params, x):
        with nn.intercept_methods(interceptor):
            return model.apply(params, model_state, x, train=True, key=jax.random.key(0))[0]

    jax.eval_shape(run, params, x)
    paths = [layer.path for layer in found]
    if len(set(paths)) != len(paths):
        twice = sorted({"/".join(p) for p in paths if paths.count(p) > 1})
        raise UserError(f"ghost clipping needs each layer called once, but {', '.join(twice)} "
                        "is called more than once (shared weights); use --dp_clipping=vmap")
    covered = set()
    for layer in found:
        sub = _subtree(params, layer.path)
        covered.update(layer.path + (name,) for name in sub)
    missing = []
    for keypath, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = tuple(k.key for k in keypath)
        if names not in covered:
            missing.append("/".join(names))
    if missing:
        raise UserError(f"ghost clipping does not know the layer(s) holding {', '.join(missing)} "
                        "(supported: Dense, Conv, Embed, LayerNorm, GroupNorm); use "
                        "--dp_clipping=vmap")
    return tuple(found)


def _flat(a):
    """``[B, ..., d] -> [B, T, d]``."""
    return a.reshape(a.shape[0], -1, a.shape[-1])


def _conv_patches(x, layer: _Layer):
    kernel_size, strides, padding, lhs_dil, rhs_dil = layer.config
    nd = len(kernel_size)
    spec = "N" + "HWD"[:nd] + "C"
    patches = jax.lax.conv_general_dilated_patches(
        x, kernel_size, strides, padding, lhs_dilation=lhs_dil, rhs_dilation=rhs_dil,
        dimension_numbers=(spec, "HWD"[:nd] + "IO", spec),
        precision=jax.lax.Precision.HIGHEST)
    return _flat(patches)  # features ordered (C_in, *kernel_size)


def _kernel_to_matrix(kernel):
    """Conv kernel ``[*k, I, O]`` -> ``[I * prod(k), O]`` in the patches' feature order."""
    nd = kernel.ndim - 2
    perm = (nd,) + tuple(range(nd)) + (nd + 1,)
    return kernel.transpose(perm).reshape(-1, kernel.shape[-1])


def _matrix_to_kernel(matrix, kernel_shape):
    nd = len(kernel_shape) - 2
    moved = matrix.reshape((kernel_shape[nd],) + tuple(kernel_shape[:nd]) + (kernel_shape[-1],))
    return moved.transpose(tuple(range(1, nd + 1)) + (0, nd + 1))


def _matmul_terms(a, g, mask, form):
    """Per-example ``||M * (a_i^T g_i)||^2`` for ``a [B, T, d]``, ``g [B, T, p]`` (``mask`` None
    when the layer is unpruned), and the per-example gradients ``[B, d, p]`` when the direct
    form formed them (so the clipped sum is a cheap weighted sum of them), else None."""
    t, d, p = a.shape[1], a.shape[2], g.shape[2]
    if t == 1:
        a2, g2 = jnp.square(a[:, 0]), jnp.square(g[:, 0])
        if mask is None:
            return jnp.sum(a2, 1) * jnp.sum(g2, 1), None
        return jnp.einsum("bd,dp,bp->b", a2, mask, g2), None
    if form == "auto":
        form = "gram" if mask is None and t * t * (d + p) < t * d * p else "direct"
    if form == "gram" and mask is None:
        return jnp.sum(jnp.einsum("btd,bsd->bts", a, a) * jnp.einsum("btp,bsp->bts", g, g),
                       axis=(1, 2)), None
    per_example = jnp.einsum("btd,btp->bdp", a, g)
    if mask is not None:
        per_example = per_example * mask
    return jnp.sum(jnp.square(per_example), axis=(1, 2)), per_example


def _normalized(x, layer: _Layer):
    """The normalized input x_hat of a LayerNorm or GroupNorm (what its scale multiplies)."""
    x = x.astype(jnp.float32)
    if layer.kind == "layernorm":
        eps, _ = layer.config
        mean = jnp.mean(x, -1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + eps)
    num_groups, group_size, eps = layer.config
    channels = x.shape[-1]
    groups = num_groups if num_groups is not None else channels // group_size
    grouped = x.reshape(x.shape[:-1] + (groups, channels // groups))
    axes = tuple(range(1, grouped.ndim - 2)) + (grouped.ndim - 1,)
    mean = jnp.mean(grouped, axes, keepdims=True)
    var = jnp.mean(jnp.square(grouped - mean), axes, keepdims=True)
    return ((grouped - mean) * jax.lax.rsqrt(var + eps)).reshape(x.shape)


def _layer_terms(layer: _Layer, a, g, p, m, pruned: bool, form: str):
    """Per-example squared norm ``[B]`` of this layer's params, and a function of the clip
    factors ``c [B]`` giving the clipped sum of its gradients (a dict like its params)."""
    b = g.shape[0]
    mask = m if pruned else None
    if layer.kind in ("dense", "conv"):
        kernel_mask = m["kernel"] if pruned else None
        if layer.kind == "conv":
            a3 = _conv_patches(a, layer)
            kmask = None if kernel_mask is None else _kernel_to_matrix(kernel_mask)
        else:
            a3, kmask = _flat(a), kernel_mask
        g3 = _flat(g)
        sq, per_example = _matmul_terms(a3, g3, kmask, form)
        has_bias = "bias" in p
        if has_bias:
            gb = jnp.sum(g3, 1)
            if pruned:
                gb = gb * m["bias"]
            sq = sq + jnp.sum(jnp.square(gb), 1)

        def clipped(c):
            if per_example is not None:  # already masked
                w = jnp.tensordot(c, per_example, axes=1)
            else:
                w = jnp.einsum("btd,btp,b->dp", a3, g3, c)
                if kmask is not None:
                    w = w * kmask
            out = {"kernel": w if layer.kind == "dense" else _matrix_to_kernel(
                w, p["kernel"].shape)}
            if has_bias:
                out["bias"] = jnp.einsum("bp,b->p", gb, c)
            return out

        return sq, clipped
    if layer.kind == "embed":
        ids = a.reshape(b, -1)
        g3 = _flat(g)
        gm = g3 * m["embedding"][ids] if pruned else g3
        same = (ids[:, :, None] == ids[:, None, :]).astype(g3.dtype)
        sq = jnp.einsum("bts,btd,bsd->b", same, gm, g3)

        def clipped(c):
            table = jnp.zeros_like(p["embedding"]).at[ids.reshape(-1)].add(
                (gm * c[:, None, None]).reshape(-1, g3.shape[-1]))
            return {"embedding": table}

        return sq, clipped
    # LayerNorm / GroupNorm: per-example gradients are as small as the layer; form them.
    xhat = _normalized(a, layer).reshape(b, -1, g.shape[-1])
    g3 = g.reshape(b, -1, g.shape[-1])
    per_example = {}
    if "scale" in p:
        per_example["scale"] = jnp.sum(g3 * xhat, 1)
    if "bias" in p:
        per_example["bias"] = jnp.sum(g3, 1)
    if mask is not None:
        per_example = {k: v * mask[k] for k, v in per_example.items()}
    sq = tree_sq_norms(per_example)
    return sq, lambda c: weighted_sum(per_example, c)


def _set(tree: dict, path: tuple, value):
    node = tree
    for name in path[:-1]:
        node = node.setdefault(name, {})
    node[path[-1]] = value


def _make_ghost(model, loss_of, predicted_class, clip_norm, form, pruned):
    def clip(params, masks, model_state, x, y, weight, key):
        layers = _discover(model, params, model_state, x)
        masked = pruning.apply_masks(params, masks)
        taps = {layer.path: jnp.zeros(layer.out_shape, jnp.float32) for layer in layers}

        def total_loss(taps):
            inputs = {}

            def interceptor(next_fun, args, kwargs, context):
                out = next_fun(*args, **kwargs)
                path = tuple(context.module.path)
                if context.method_name == "__call__" and path in taps:
                    inputs[path] = args[0]
                    out = out + taps[path].astype(out.dtype)
                return out

            with nn.intercept_methods(interceptor):
                logits, _ = model.apply(masked, model_state, x, train=True, key=key)
            losses = loss_of(logits, y)
            correct = jnp.sum(weight * (predicted_class(logits) == y))
            return jnp.sum(weight * losses), (inputs, correct)

        (loss_sum, (inputs, correct)), out_grads = jax.value_and_grad(total_loss, has_aux=True)(
            taps)
        sq = jnp.zeros(x.shape[0], jnp.float32)
        makers = []
        for layer in layers:
            s, maker = _layer_terms(layer, inputs[layer.path], out_grads[layer.path],
                                    _subtree(params, layer.path), _subtree(masks, layer.path),
                                    layer.path in pruned, form)
            sq = sq + s
            makers.append((layer.path, maker))
        norms = jnp.sqrt(jnp.maximum(sq, 0.0))
        # Padded rows have zero output gradients (weight 0), hence zero contribution.
        factors = clip_factors(norms, jnp.ones_like(norms), clip_norm)
        grad_sum: dict = {}
        for path, maker in makers:
            for name, value in maker(factors).items():
                _set(grad_sum, path + (name,), value)
        grad_sum = jax.tree.map(lambda ref, g: g.astype(ref.dtype),
                                params, _like(params, grad_sum))
        return Clipped(grad_sum, norms, loss_sum, correct)

    return clip


def _like(ref, tree):
    """``tree`` (nested dicts) restructured to ``ref``'s container types."""
    return jax.tree.unflatten(jax.tree.structure(ref), [
        _subtree(tree, tuple(k.key for k in kp))
        for kp, _ in jax.tree_util.tree_flatten_with_path(ref)[0]])


def pruned_layers(masks) -> frozenset:
    """Paths of the layers (parent dicts of leaves) whose masks hold a zero in any model."""
    return frozenset(path[:-1] for path in pruning.masked_paths(masks))
