"""The discriminators of "Sparsity can improve privacy of neural networks" (Gonon et al. 2023).

Input: the one-hot class, the prediction (probability vector) and the sensitivity feature
(per-class, computed with m = 5, eps = 1e-3 in their setting). Perceptrons with 1 hidden layer of
30 units (``sparsity_mlp1``), 2 hidden layers of 30 (``sparsity_mlp2``) and 3 hidden layers of 100
(``sparsity_mlp3``), ReLU, trained with Adam for 80 epochs; the learning rate is chosen in
{1e-2, 1e-3, 1e-4} by balanced accuracy on a held-out fifth of the shadow rows (the paper reports
the best rate; choosing it on the shadows keeps the target unseen). Score: member logit minus
non-member logit.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from jaxmia import metrics, training
from jaxmia.attacks import classifier
from jaxmia.attacks.base import Attack, Features
from jaxmia.models import mlp

HIDDEN = {"sparsity_mlp1": (30,), "sparsity_mlp2": (30, 30), "sparsity_mlp3": (100, 100, 100)}
LEARNING_RATES = (1e-2, 1e-3, 1e-4)
TRAIN = training.TrainConfig(epochs=80, batch_size=128, lr=1e-3, weight_decay=0.0,
                             optimizer="adam", patience=None, keep="last")


def attack_inputs(f: Features) -> np.ndarray:
    return np.concatenate([classifier.onehot(f), np.asarray(f["probs"], np.float32),
                           np.asarray(f["sensitivity"], np.float32)], axis=-1)


def make(name: str, seed: int = 0, config: training.TrainConfig = TRAIN,
         learning_rates=LEARNING_RATES, epochs: int | None = None) -> Attack:
    config = classifier.with_epochs(config, epochs)
    def fit(shadow: Features, is_member: np.ndarray):
        x, y = attack_inputs(shadow), np.asarray(is_member, bool)
        order = np.random.default_rng(seed).permutation(len(x))
        held, kept = order[: len(x) // 5], order[len(x) // 5:]
        best = None
        for lr in learning_rates:
            module = mlp.MLP(2, hidden=HIDDEN[name], dropout=0.0)
            state = classifier.train(module, x[kept], y[kept], dataclasses.replace(config, lr=lr),
                                     seed, f"attack_{name}_lr{lr:g}")
            acc = metrics.balanced_accuracy(classifier.margin(state, x[held]) >= 0, y[held])
            if best is None or acc > best[0]:
                best = (acc, state)
        return best[1]

    def score(state, target: Features) -> np.ndarray:
        return classifier.margin(state, attack_inputs(target))

    return Attack(fit=fit, score=score, name=name)


REGISTRY = {name: functools.partial(make, name) for name in HIDDEN}
