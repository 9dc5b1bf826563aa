"""DP-SGD's gradient: Poisson-sampled logical batches, clipped per example, summed over
micro-batches, noised, averaged; any optax optimizer then takes it (DP-SGD, DP-Adam).

One logical step (Abadi et al. 2016, with Poisson sampling as the accounting assumes): every
training row of a model joins the step independently with probability ``q = batch_size / n``;
the sampled rows are padded with weight-0 rows to a multiple of the physical batch and processed
in physical batches (micro-batching, so memory depends on the physical batch only); each
example's gradient is clipped to ``clip_norm`` (:mod:`jaxmia.clipping`); the clipped sum gets
Gaussian noise of standard deviation ``noise_multiplier * clip_norm`` on every live (unpruned)
weight; and the result is divided by the *expected* batch size ``q n = batch_size``. An empty
step still adds noise and updates.

Guarantees:
  With ``clipping`` in {'vmap', 'ghost'}, one step is the Poisson-subsampled Gaussian mechanism
  with sensitivity ``clip_norm`` and noise multiplier ``noise_multiplier`` under add/remove-one
  adjacency; :mod:`jaxmia.accounting` composes the steps with dp-accounting. With 'microbatch'
  (mia_prune's behaviour) the sensitivity is ``2 * clip_norm`` and the accountant is told so.
  Regularizers that depend only on the params (weight decay, the slimming penalty) are added
  after the noise and cost no privacy. The noise comes from JAX's threefry PRNG by default;
  ``noise_rng='fast'`` uses :mod:`jaxmia.fastrand` (a non-cryptographic hash, like PyTorch's
  default generator that Opacus uses outside its secure mode).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxmia import clipping, fastrand
from jaxmia.errors import UserError

NOISE_RNGS = ("threefry", "fast")


@dataclasses.dataclass(frozen=True)
class DPConfig:
    """DP-SGD settings of one training stage."""

    noise_multiplier: float
    clip_norm: float = 1.0
    clipping: str = "auto"  # clipping.METHODS: 'auto' (= 'ghost'), 'vmap', 'ghost', 'microbatch'
    microbatch_size: int = 64  # 'microbatch': rows per clipped group (mia_prune: batch / 2)
    physical_batch: int | None = None  # rows per forward/backward pass; None: the batch size
    ghost_form: str = "auto"  # clipping.GHOST_FORMS
    noise_rng: str = "threefry"  # NOISE_RNGS

    def validate(self, batch_size: int) -> None:
        if not self.noise_multiplier >= 0:
            raise UserError(f"the noise multiplier must be >= 0, got {self.noise_multiplier}")
        if not self.clip_norm > 0:
            raise UserError(f"--clip_norm must be > 0, got {self.clip_norm}")
        if self.clipping not in clipping.METHODS:
            raise UserError(f"unknown --dp_clipping '{self.clipping}'; choose one of "
                            f"{', '.join(clipping.METHODS)}")
        if self.ghost_form not in clipping.GHOST_FORMS:
            raise UserError(f"unknown --dp_ghost_form '{self.ghost_form}'; choose one of "
                            f"{', '.join(clipping.GHOST_FORMS)}")
        if self.noise_rng not in NOISE_RNGS:
            raise UserError(f"unknown --dp_noise_rng '{self.noise_rng}'; choose one of "
                            f"{', '.join(NOISE_RNGS)}")
        physical = self.physical(batch_size)
        if physical < 1:
            raise UserError(f"--physical_batch must be >= 1, got {physical}")
        if self.clipping == "microbatch" and (self.microbatch_size < 1
                                              or physical % self.microbatch_size):
            raise UserError(f"--dp_microbatch ({self.microbatch_size}) must be >= 1 and divide "
                            f"the physical batch ({physical})")

    def physical(self, batch_size: int) -> int:
        return batch_size if self.physical_batch is None else self.physical_batch

    @property
    def sensitivity_factor(self) -> float:
        """How many clip norms one example can move the clipped sum by (2 for micro-batches)."""
        return 2.0 if self.clipping == "microbatch" and self.microbatch_size > 1 else 1.0

    def divisor(self, batch_size: int) -> float:
        """The clipped, noised sum is divided by this: the expected number of summed terms."""
        if self.clipping == "microbatch":
            return batch_size / self.microbatch_size
        return float(batch_size)


def sampling_rate(batch_size: int, n: int | jax.Array):
    """Poisson sampling probability of one row: ``batch_size / n`` (1 when n is smaller); ``n``
    may be a traced count (the training plan) or a Python int (the accountant)."""
    if isinstance(n, int):  # in float64, for the accountant
        return min(1.0, batch_size / max(n, 1))
    return jnp.minimum(1.0, batch_size / jnp.maximum(n, 1))


def gaussian_noise(key, params, masks, std: float, rng: str = "threefry"):
    """Independent N(0, std^2) noise on every live weight (zero where ``masks`` is 0)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    draw = jax.random.normal if rng == "threefry" else fastrand.normal
    noise = [std * draw(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)]
    return jax.tree.map(jnp.multiply, jax.tree.unflatten(treedef, noise), masks)


def make_gradient(model, loss_of, predicted_class, dp: DPConfig, batch_size: int,
                  pruned: frozenset = frozenset()):
    """Returns ``grad(params, masks, model_state, x, y, weight, key) -> (grads, metrics)``:
    the privatized mean gradient of one logical batch ``x [L]`` (``L`` a multiple of the
    physical batch; weight-0 rows are padding), and ``loss_sum``/``correct``/``n`` metrics."""
    clip = clipping.make(model, loss_of, predicted_class, dp.clipping, clip_norm=dp.clip_norm,
                         group_size=dp.microbatch_size, ghost_form=dp.ghost_form, pruned=pruned)
    physical = dp.physical(batch_size)
    std = dp.noise_multiplier * dp.clip_norm
    divisor = dp.divisor(batch_size)

    def grad(params, masks, model_state, x, y, weight, key):
        num_micro = x.shape[0] // physical
        if num_micro * physical != x.shape[0]:
            raise ValueError(f"logical batch {x.shape[0]} is not a multiple of {physical}")
        clip_key, noise_key = jax.random.split(key)
        total = None
        # A Python loop, not lax.scan: XLA:CPU runs convolutions in loop bodies ~20x slower.
        for j in range(num_micro):
            rows = slice(j * physical, (j + 1) * physical)
            out = clip(params, masks, model_state, x[rows], y[rows], weight[rows],
                       jax.random.fold_in(clip_key, j))
            part = (out.grad_sum, out.loss_sum, out.correct)
            total = part if total is None else jax.tree.map(jnp.add, total, part)
        grad_sum, loss_sum, correct = total
        noise = gaussian_noise(noise_key, params, masks, std, dp.noise_rng)
        grads = jax.tree.map(lambda g, z: (g + z) / divisor, grad_sum, noise)
        return grads, {"loss_sum": loss_sum, "correct": correct, "n": jnp.sum(weight)}

    return grad
