"""BlindMI-Diff-W (Hui et al., NDSS 2021): membership by differential comparison, no shadows.

The target's examples are compared, in random batches of ``batch_size`` (20), with a generated
reference set that is surely non-member (``reference`` in the target's features: the target
model's outputs on generated inputs, see :func:`generate_inputs`). Each example's feature vector
is [p_y, the two largest probabilities] (as hyhmia/BlindMI's Diff-W uses). Starting with the
whole batch on the member side, an example moves to the non-member side when that raises the
maximum mean discrepancy (unbiased MMD^2, Gaussian kernel summed over 19 bandwidths 1e-6 ... 1e6) between
the sides; moves repeat (both ways) until none helps. The score is the MMD loss a move to the
other side would cause for a final member (>= 0) and minus the gain for a final non-member, so
the sign is BlindMI's hard label and the magnitude ranks examples for the ROC.

``fit`` does nothing: BlindMI needs no shadow model.
"""

from __future__ import annotations

import numpy as np

from jaxmia.attacks.base import Attack, Features

BANDWIDTHS = 10.0 ** np.linspace(-6, 6, 19)


def _features(f: Features) -> np.ndarray:
    top2 = np.asarray(f["sorted_probs"], np.float64)[:, :2]
    return np.concatenate([np.asarray(f["confidence"], np.float64)[:, None], top2], axis=1)


def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d2 = np.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)
    return sum(np.exp(-d2 / (2 * s * s)) for s in BANDWIDTHS)


def mmd2(k: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 between index masks: ``a``, ``b`` are [..., n] 0/1 weights over the rows of
    the kernel matrix ``k`` (so many candidate splits are scored in one call). The biased form
    (diagonal included) grows as a side shrinks and would pull the greedy search toward
    one-element sides; a side with fewer than 2 rows scores -inf (never chosen)."""
    na, nb = a.sum(-1), b.sum(-1)
    diag = np.diag(k)

    def within(w, n):
        return ((np.einsum("...i,ij,...j->...", w, k, w) - w @ diag)
                / np.maximum(n * (n - 1), 1))

    akb = np.einsum("...i,ij,...j->...", a, k, b) / np.maximum(na * nb, 1)
    value = within(a, na) + within(b, nb) - 2 * akb
    return np.where((na >= 2) & (nb >= 2), value, -np.inf)


def diff_w(target: np.ndarray, reference: np.ndarray, batch_size: int = 20, seed: int = 0,
           max_rounds: int = 50) -> np.ndarray:
    """Scores of every target row (see the module docstring)."""
    rng = np.random.default_rng(seed)
    scores = np.zeros(len(target))
    order = rng.permutation(len(target))
    r = len(reference)
    # Near-equal batches (array_split), so none has a single row (an MMD side needs two).
    for rows in np.array_split(order, max(1, len(target) // batch_size)):
        b = len(rows)
        if b < 2:
            continue  # a one-row target set cannot be compared; its score stays 0
        k = kernel(np.concatenate([target[rows], reference]), np.concatenate([target[rows],
                                                                             reference]))
        member = np.r_[np.ones(b), np.zeros(r)]
        for _ in range(max_rounds):
            base = mmd2(k, member, 1 - member)
            flips = np.tile(member, (b, 1))
            flips[np.arange(b), np.arange(b)] = 1 - flips[np.arange(b), np.arange(b)]
            gain = mmd2(k, flips, 1 - flips) - base  # MMD change if example i switches side
            i = int(np.argmax(gain))
            if gain[i] <= 1e-12:
                break
            member[i] = 1 - member[i]
        base = mmd2(k, member, 1 - member)
        flips = np.tile(member, (b, 1))
        flips[np.arange(b), np.arange(b)] = 1 - flips[np.arange(b), np.arange(b)]
        loss = base - mmd2(k, flips, 1 - flips)  # >= 0 at a local optimum (inf: not movable)
        loss = np.where(np.isfinite(loss), loss, np.nanmax(np.r_[loss[np.isfinite(loss)], 0]))
        # A local optimum can tie (loss 0): keep the sign of the side the example is on.
        scores[rows] = np.where(member[:b] > 0, loss, -np.maximum(loss, 1e-12))
    return scores


def generate_inputs(x_source: np.ndarray, num: int, seed: int) -> np.ndarray:
    """Inputs that are surely non-members: images -> a Sobel edge map of random source images
    (BlindMI's generator); vectors -> every feature drawn independently from its marginal in the
    attacker's own data (so no generated row is a real record)."""
    rng = np.random.default_rng(seed)
    src = np.asarray(x_source, np.float32)
    if src.ndim == 4:
        pick = src[rng.integers(0, len(src), num)]
        gx = np.zeros_like(pick)
        gy = np.zeros_like(pick)
        pad = np.pad(pick, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        sx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
        for i in range(3):
            for j in range(3):
                win = pad[:, i:i + pick.shape[1], j:j + pick.shape[2]]
                gx += sx[i, j] * win
                gy += sx.T[i, j] * win
        return np.sqrt(gx ** 2 + gy ** 2).astype(np.float32)
    flat = src.reshape(len(src), -1)
    cols = rng.integers(0, len(src), (num, flat.shape[1]))
    return flat[cols, np.arange(flat.shape[1])].reshape((num,) + src.shape[1:])


def make(seed: int = 0, batch_size: int = 20) -> Attack:
    def fit(shadow: Features, is_member: np.ndarray):
        del shadow, is_member  # Unused: BlindMI needs no shadow models.
        return None

    def score(state, target: Features) -> np.ndarray:
        del state  # Unused.
        return diff_w(_features(target), _features(target["reference"]), batch_size, seed)

    return Attack(fit=fit, score=score, name="blindmi")


REGISTRY = {"blindmi": make}
