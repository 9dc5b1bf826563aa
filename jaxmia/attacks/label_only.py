"""Label-only attacks (Choquette-Choo et al., ICML 2021) for image models: the attacker sees only
the predicted label, and members are the examples whose label survives perturbation. (Text
models get the same three features from edits of their token ids: ``label_only_text``.)

Features (one per example, higher = more member-like), computed by :func:`query_features` from a
``predict_labels`` function:
- ``label_aug``: fraction of augmented copies still classified correctly; the copies are the
  rotations by +-``rotation`` degrees and the translations by ``shift`` pixels in 8 directions
  (zero fill), plus the original.
- ``label_noise``: fraction of ``noise_draws`` copies with N(0, sigma^2) input noise still
  classified correctly.
- ``label_boundary``: the distance to the decision boundary estimated with a query-efficient
  black-box search: along ``directions`` random unit directions, a bisection of
  ``search_steps`` queries finds the smallest radius (up to ``max_radius``) at which the label
  changes; the feature is the smallest such radius, 0 when the example is already misclassified.
Each attack is a global threshold on its feature chosen on the shadows (as the threshold attacks).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from jaxmia.attacks import threshold

FEATURES = ("label_aug", "label_noise", "label_boundary")


def augmentations(x: np.ndarray, rotation: float = 8.0, shift: int = 2) -> list[np.ndarray]:
    """The original plus the rotated and translated copies of images ``[n, H, W, C]``."""
    out = [x]
    for angle in (-rotation, rotation):
        out.append(ndimage.rotate(x, angle, axes=(1, 2), reshape=False, order=1, mode="constant"))
    for dy in (-shift, 0, shift):
        for dx in (-shift, 0, shift):
            if dx == dy == 0:
                continue
            moved = np.zeros_like(x)
            h, w = x.shape[1:3]
            moved[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
                x[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
            out.append(moved)
    return out


def query_features(predict_labels, x: np.ndarray, y: np.ndarray, seed: int, *,
                   sigma: float = 0.5, noise_draws: int = 20, directions: int = 8,
                   search_steps: int = 10, max_radius: float | None = None) -> dict:
    """The three label-only features of inputs ``x`` with labels ``y`` (module docstring).

    ``predict_labels(batch) -> labels`` is the only access to the model. ``max_radius`` defaults
    to sqrt(input dimension), a perturbation as large as a unit-variance input.
    """
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float32)
    y = np.asarray(y)
    n, dim = len(x), int(np.prod(x.shape[1:]))
    aug = augmentations(x)
    aug_correct = np.stack([predict_labels(a) == y for a in aug])
    noisy = np.stack([predict_labels(x + sigma * rng.standard_normal(x.shape, np.float32)) == y
                      for _ in range(noise_draws)])
    max_radius = float(np.sqrt(dim)) if max_radius is None else max_radius
    correct = predict_labels(x) == y
    best = np.full(n, max_radius)
    for _ in range(directions):
        u = rng.standard_normal(x.shape).astype(np.float32)
        u /= np.linalg.norm(u.reshape(n, -1), axis=1).reshape((n,) + (1,) * (x.ndim - 1))
        lo, hi = np.zeros(n), np.full(n, max_radius)
        flips = predict_labels(x + hi.reshape((n,) + (1,) * (x.ndim - 1)) * u) != y
        hi = np.where(flips, hi, np.inf)
        for _ in range(search_steps):
            mid = np.where(np.isfinite(hi), (lo + hi) / 2, max_radius)
            changed = predict_labels(x + mid.reshape((n,) + (1,) * (x.ndim - 1)) * u) != y
            hi = np.where(np.isfinite(hi) & changed, mid, hi)
            lo = np.where(np.isfinite(hi) & ~changed, mid, lo)
        best = np.minimum(best, np.where(np.isfinite(hi), hi, max_radius))
    return {"label_aug": aug_correct.mean(0), "label_noise": noisy.mean(0),
            "label_boundary": np.where(correct, best, 0.0)}


REGISTRY = {name: functools.partial(threshold.make_global, name) for name in FEATURES}
