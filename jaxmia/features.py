"""Per-example attack features from a model's logits, jitted; leading axes (models, examples)
broadcast, so one call serves a whole ensemble.

Definitions (Song & Mittal 2021, "Systematic evaluation of privacy risks of ML models"):
- ``confidence``: p_y, the true-class probability.
- ``top1``: max_c p_c.
- ``loss``: cross-entropy -log p_y.
- ``entropy``: -sum_c p_c log p_c.
- ``modified_entropy``: -(1 - p_y) log p_y - sum_{c != y} p_c log(1 - p_c).
- ``logit_scaled``: log p_y - log sum_{y' != y} p_y' (LiRA's statistic), computed from the logits
  as z_y - logsumexp_{y' != y} z_y', which stays finite when p_y rounds to 1 in float32.
- ``sorted_probs``: the probabilities in descending order (``[..., :k]`` is the top-k vector).
Logs of probabilities are taken of values clipped at 1e-30, as Song & Mittal's code does.

``sensitivity`` / ``ensemble_sensitivity``: the pruning paper's prediction sensitivity.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxmia import fastrand, pruning, sharding, training
from jaxmia.errors import UserError
from jaxmia.models import mlp

TINY = 1e-30
NOISE = ("auto", "fast", "shared", "threefry", "projected")


def resolve_noise(noise: str, model_name: str) -> str:
    """'auto' -> 'projected' for the MLP (same law, ~1.7x faster: BUILD_NOTES.md), else 'fast'."""
    if noise not in NOISE:
        raise UserError(f"unknown --sensitivity_noise '{noise}'; choose one of {', '.join(NOISE)}")
    if noise == "auto":
        return "projected" if model_name == "mlp" else "fast"
    if noise == "projected" and model_name != "mlp":
        raise UserError(f"--sensitivity_noise=projected needs the mlp model (its first layer is "
                        f"dense), not {model_name}; use fast")
    return noise


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
        "logit_scaled": logit_scaled(logits, labels),
        "sorted_probs": -jnp.sort(-probs, axis=-1),
    }


def logit_scaled(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """log p_y - log sum_{y' != y} p_y' = z_y - logsumexp_{y' != y} z_y' (float32, stable)."""
    z = logits.astype(jnp.float32)
    onehot = jax.nn.one_hot(labels, z.shape[-1], dtype=bool)
    z_y = jnp.sum(jnp.where(onehot, z, 0.0), axis=-1)
    return z_y - jax.nn.logsumexp(jnp.where(onehot, -jnp.inf, z), axis=-1)


def sensitivity(logits_fn, x: jax.Array, key: jax.Array, num_samples: int = 10,
                epsilon: float = 1e-3, noise: str = "fast", offset=0, with_logits: bool = False,
                perturb=None):
    """Prediction sensitivity as mia_prune's ``predict_target_sensitivity`` computes it.

    p = softmax(f(x)); for m = ``num_samples`` Gaussian directions u ~ N(0, I) in the (normalized)
    input space, sens = mean_m |softmax(f(x + eps u)) - p| / eps, one value per class. All m
    perturbed copies of the batch go through ``logits_fn`` in one call. "Sparsity can improve
    privacy" uses m = 5, eps = 1e-3.

    Args:
      logits_fn: eval-mode logits of a batch, ``[B, ...] -> [B, C]``.
      x: inputs ``[B, ...]``.
      key: PRNG key of the perturbations.
      num_samples: m.
      epsilon: perturbation size.
      noise: 'fast' (default): independent N(0, 1) draws per example and copy from
        :mod:`jaxmia.fastrand`, example ``offset + b`` drawing from ``fold_in(key, offset + b)``,
        so chunking does not change the result and no counter wraps however many rows there are.
        'shared': the same m directions for every example (draws m * D normals instead of
        B * m * D; each example's feature has the same distribution, but the examples' noises
        are no longer independent of each other). 'threefry': JAX's default generator (slow on
        CPU), folded with ``offset``. 'projected' (MLP only, through
        :func:`sensitivity_projected`).
      offset: the global row index of ``x[0]`` (for chunked calls).
      with_logits: also return the unperturbed logits (computed anyway), so that the other
        features need no second forward pass.
      perturb: for inputs that take no noise (token ids), ``(shape, perturbed_fn)``: u has
        per-example ``shape`` and the perturbed logits are ``perturbed_fn(x_copies, eps * u)``
        (a model's ``Model.perturb`` with its params bound; ``x_copies`` is ``x`` with each row
        repeated m times). None: ``logits_fn(x + eps * u)``.

    Returns:
      ``[B, C]`` sensitivities (float32), and the ``[B, C]`` logits with ``with_logits``.
    """
    if noise not in NOISE or noise in ("projected", "auto"):
        raise ValueError(f"unknown noise '{noise}' here; choose one of fast, shared, threefry "
                         "(projected: sensitivity_projected)")
    b = x.shape[0]
    if perturb is None:
        shape, dtype = x.shape[1:], x.dtype
        perturbed_fn = lambda copies, delta: logits_fn(copies + delta)  # noqa: E731
    else:
        (shape, perturbed_fn), dtype = perturb, jnp.float32
    shape = tuple(shape)
    if noise == "fast":
        u = row_normals(key, b, offset, (num_samples,) + shape, dtype)
    elif noise == "shared":
        u = jnp.broadcast_to(fastrand.normal(key, (1, num_samples) + shape, dtype),
                             (b, num_samples) + shape)
    else:
        u = jax.random.normal(jax.random.fold_in(key, offset), (b, num_samples) + shape, dtype)
    logits = logits_fn(x)
    copies = jnp.repeat(x, num_samples, axis=0)
    perturbed = perturbed_fn(copies, (epsilon * u).reshape((b * num_samples,) + shape))
    return _finite_difference(logits, perturbed, num_samples, epsilon, with_logits)


def row_normals(key: jax.Array, num_rows: int, offset, shape, dtype=jnp.float32) -> jax.Array:
    """``[num_rows, *shape]`` standard normals from :mod:`jaxmia.fastrand`, row ``i`` drawn from
    ``fold_in(key, offset + i)`` (so a row's draws depend on its global index only)."""
    rows = jnp.asarray(offset, jnp.uint32) + jnp.arange(num_rows, dtype=jnp.uint32)
    return jax.vmap(lambda r: fastrand.normal(jax.random.fold_in(key, r), shape, dtype))(rows)


def _finite_difference(logits, perturbed_logits, num_samples, epsilon, with_logits):
    """mean over copies of |softmax(perturbed) - softmax(clean)| / eps (and the clean logits)."""
    p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    q = jax.nn.softmax(perturbed_logits.astype(jnp.float32), axis=-1)
    q = q.reshape((p.shape[0], num_samples) + p.shape[1:])
    sens = jnp.mean(jnp.abs(q - p[:, None]), axis=1) / epsilon
    return (sens, logits) if with_logits else sens


def sensitivity_projected(kernel: jax.Array, bias: jax.Array, rest_fn, x: jax.Array,
                          key: jax.Array, num_samples: int = 10, epsilon: float = 1e-3,
                          offset=0, scale=None, with_logits: bool = False):
    """The same sensitivity for a model whose first layer is dense, ``f(x) = g(x W + b)``, drawing
    the noise where it lands instead of in the input space.

    For u ~ N(0, I_D), W^T u ~ N(0, W^T W) exactly, so ``f(x + eps u)`` has the same
    distribution as ``g(x W + b + eps S z)`` with z ~ N(0, I_H) and ``S S^T = W^T W`` (S from an
    eigendecomposition, so pruned, rank-deficient W is fine). The feature's distribution is
    unchanged (tested against the input-space version); each example and copy still gets its own
    independent draw. The cost per copy falls from D to H normals and from a D x H to an H x H
    product (600 -> 256 inputs on the benchmark MLP).

    Args:
      kernel, bias: the first layer ``[D, H]``, ``[H]`` (masked).
      rest_fn: logits from the first pre-activation, ``[N, H] -> [N, C]``.
      x: inputs ``[B, D]`` (or ``[B, ...]`` flattened to D).
      key, num_samples, epsilon, offset, with_logits: as :func:`sensitivity` (noise 'fast').
      scale: :func:`projection_scale` of ``kernel`` (computed here when None; pass it to do the
        eigendecomposition once for many chunks).
    """
    b = x.shape[0]
    z0 = x.reshape(b, -1) @ kernel + bias
    hidden = kernel.shape[1]
    scale = projection_scale(kernel) if scale is None else scale
    z = row_normals(key, b, offset, (num_samples, hidden), z0.dtype)
    perturbed = (z0[:, None] + epsilon * (z @ scale.T)).reshape(b * num_samples, hidden)
    return _finite_difference(rest_fn(z0), rest_fn(perturbed), num_samples, epsilon,
                              with_logits)


def projection_scale(kernel: jax.Array) -> jax.Array:
    """S with S S^T = W^T W for a first-layer kernel W ``[D, H]`` (from an eigendecomposition, so
    a pruned, rank-deficient W is fine)."""
    lam, vecs = jnp.linalg.eigh(kernel.T @ kernel)
    return vecs * jnp.sqrt(jnp.maximum(lam, 0.0))[None, :]


@functools.lru_cache(maxsize=16)
def _ensemble_fn(model, mode: str, num_samples: int, epsilon: float, noise: str, mesh):
    def one(params, state, masks, rows, key, scale, offset, x_all):
        live = pruning.apply_masks(params, masks)
        if noise == "projected":
            kernel, bias = mlp.first_layer(live)
            return sensitivity_projected(kernel, bias,
                                         lambda z: mlp.from_first_preactivation(live, z),
                                         x_all[rows], key, num_samples, epsilon, offset, scale,
                                         with_logits=True)
        perturb = None
        if model.perturb is not None:
            shape, apply_perturbed = model.perturb
            perturb = (shape, lambda x, delta: apply_perturbed(live, state, x, delta))
        return sensitivity(lambda x: model.apply(live, state, x, train=False)[0], x_all[rows],
                           key, num_samples, epsilon, noise, offset, with_logits=True,
                           perturb=perturb)

    axes = (0, 0, 0, 0, 0, 0, None, None)
    mapped = (training.unrolled_models(one, axes) if mode == "stepwise"
              else jax.vmap(one, in_axes=axes))
    return jax.jit(sharding.over_models(mapped, mesh, axes))


def ensemble_sensitivity(model, params, model_state, masks, x_all, idx, key: jax.Array, *,
                         num_samples: int = 10, epsilon: float = 1e-3, noise: str = "auto",
                         chunk: int | None = None, mode: str = "auto", mesh=None,
                         return_logits: bool = False):
    """Sensitivity of every model of an ensemble on its own rows: ``idx [K, n] -> [K, n, C]``.

    One jitted call per chunk of rows computes all K models (vmapped, or unrolled for conv models
    on CPU; see ``training.TrainConfig.ensemble_mode``); ``chunk`` rows at a time bound the memory
    to ``K * chunk * num_samples`` perturbed inputs (default: ~2^22 input values per model, a
    few MB that stay in cache: on the benchmark's MLP 512-row chunks ran 1.3x faster than
    2048-row ones, see BUILD_NOTES.md).
    Model k draws from ``fold_in(key, k)``, and with the default noise its result does not
    depend on ``chunk``. With a ``mesh`` each device computes its share of the models.
    ``return_logits``: also return the unperturbed logits ``[K, n, C]`` of the same pass (what
    the other features are computed from).
    """
    noise = resolve_noise(noise, model.name)
    mode = training.resolve_ensemble_mode(mode, params)
    num_models, n = idx.shape
    dim = math.prod(model.perturb[0] if model.perturb is not None else x_all.shape[1:])
    chunk = chunk or max(1, min(n, 2**22 // (num_samples * dim)))
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(num_models))
    fn = _ensemble_fn(model, mode, num_samples, float(epsilon), noise, mesh)
    scales = None  # the projection of every model, computed once for all chunks
    if noise == "projected":
        scales = _projection_scales(pruning.apply_masks(params, masks))
    num_chunks = -(-n // chunk)
    padded = jnp.pad(jnp.asarray(idx), ((0, 0), (0, num_chunks * chunk - n)))
    out = [sharding.call(fn, mesh, (0, 0, 0, 0, 0, 0, None, None), params, model_state, masks,
                         padded[:, c * chunk:(c + 1) * chunk], keys, scales,
                         jnp.uint32(c * chunk), x_all)
           for c in range(num_chunks)]
    sens, logits = (jnp.concatenate(parts, axis=1)[:, :n] for parts in zip(*out))
    return (sens, logits) if return_logits else sens


@jax.jit
def _projection_scales(live_params):
    return jax.vmap(lambda p: projection_scale(mlp.first_layer(p)[0]))(live_params)
