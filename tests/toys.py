"""A toy membership problem where members are made separable: members get confident, correct,
insensitive outputs; non-members flatter, more sensitive ones."""

import jax.numpy as jnp
import numpy as np

from jaxmia import features


def toy_features(n: int = 400, c: int = 4, seed: int = 1, gap: float = 6.0):
    rng = np.random.default_rng(seed)
    member = np.arange(n) < n // 2
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), labels] += np.where(member, gap, 0.5)
    f = {k: np.asarray(v) for k, v in features.extract(jnp.asarray(logits),
                                                        jnp.asarray(labels)).items()}
    f["labels"] = labels
    f["sensitivity"] = np.abs(rng.normal(size=(n, c))) * np.where(member, 0.2, 1.0)[:, None]
    ref_logits = rng.normal(size=(60, c))
    ref = {k: np.asarray(v) for k, v in features.extract(
        jnp.asarray(ref_logits), jnp.asarray(ref_logits.argmax(-1))).items()}
    f["reference"] = ref
    for name, scale in (("label_aug", 1.0), ("label_noise", 1.0), ("label_boundary", 3.0)):
        f[name] = scale * np.clip(np.where(member, 0.8, 0.4) + 0.2 * rng.normal(size=n), 0, 1)
    return f, member
