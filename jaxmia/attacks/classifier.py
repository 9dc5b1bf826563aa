"""Neural-network attack classifiers trained on the shadows' outputs (Shokri et al. 2017, as
mia_prune's ``nn_attack`` builds them).

The attack model is mia_prune's ``MIAFC``: input -> 512 -> 256 -> 128 -> 2, ReLU, dropout 0.2
after the first two layers. Training as in their code: SGD (momentum 0.9, lr 1e-3, weight decay
5e-4), batch 128, 100 epochs, lr x0.1 at epochs 50 and 75, cross-entropy, no model selection
(the last epoch's model is used). It runs through the library's one training loop.

Inputs:
- ``nn``: the probability vector p.
- ``top3``: the three largest probabilities, sorted (descending).
- ``nncls``: [p, one-hot true label].
Score: logit(member) - logit(non-member), so ``>= 0`` is the classifier's member decision.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from jaxmia import pruning, training
from jaxmia.attacks.base import Attack, Features
from jaxmia.models import mlp
from jaxmia.models.wrap import from_linen

INPUTS = ("nn", "top3", "nncls")
TRAIN = training.TrainConfig(epochs=100, batch_size=128, lr=1e-3, weight_decay=5e-4,
                             optimizer="sgd", patience=None, keep="last", lr_milestones=(50, 75))


def attack_inputs(kind: str, f: Features) -> np.ndarray:
    p = np.asarray(f["probs"], np.float32)
    if kind == "nn":
        return p
    if kind == "top3":
        return -np.sort(-p, axis=-1)[:, :3]
    onehot = np.eye(p.shape[-1], dtype=np.float32)[np.asarray(f["labels"])]
    return np.concatenate([p, onehot], axis=-1)


def make(kind: str, seed: int = 0, config: training.TrainConfig = TRAIN) -> Attack:
    """A classifier attack on ``kind`` inputs; ``seed`` fixes its init, dropout and shuffling."""

    def fit(shadow: Features, is_member: np.ndarray):
        x = attack_inputs(kind, shadow)
        y = np.asarray(is_member, np.int32)
        model = from_linen(mlp.MLP(2, hidden=(512, 256, 128), dropout=0.2, dropout_layers=2),
                           x.shape[1:], f"attack_{kind}")
        init_key, train_key = jax.random.split(jax.random.key(seed))
        params, state = training.init_ensemble(model, init_key[None])
        everything = np.arange(len(x))
        # keep='last' and no patience: the dev set selects nothing, so one row stands in for it.
        data = training.make_ensemble_data(x, y, [everything], [everything[:1]])
        res = training.fit(model, params, state, pruning.ones_like(params), data, config,
                           train_key[None], stage=f"attack_{kind}")
        return model, res

    def score(state, target: Features) -> np.ndarray:
        model, res = state
        x = jax.numpy.asarray(attack_inputs(kind, target))
        idx = jax.numpy.arange(len(x))[None]
        logits = training.predict_logits(model, res.params, res.model_state, res.masks, x, idx)
        logits = np.asarray(logits[0], np.float64)
        return logits[:, 1] - logits[:, 0]

    return Attack(fit=fit, score=score, name=kind)


REGISTRY = {kind: functools.partial(make, kind) for kind in INPUTS}
