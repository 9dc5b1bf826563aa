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

import dataclasses
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
    return np.concatenate([p, onehot(f)], axis=-1)


def onehot(f: Features) -> np.ndarray:
    """The one-hot true labels ``[n, C]`` (float32) of a feature dict."""
    return np.eye(f["probs"].shape[-1], dtype=np.float32)[np.asarray(f["labels"])]


def train(module, x: np.ndarray, y: np.ndarray, config: training.TrainConfig, seed: int,
          name: str):
    """Trains the Flax ``module`` on attack inputs ``x`` and membership labels ``y`` through the
    library's training loop; returns the state ``predict`` takes."""
    model = from_linen(module, x.shape[1:], name)
    init_key, train_key = jax.random.split(jax.random.key(seed))
    params, state = training.init_ensemble(model, init_key[None])
    everything = np.arange(len(x))
    # keep='last' and no patience: the dev set selects nothing, so one row stands in for it.
    data = training.make_ensemble_data(np.asarray(x, np.float32), np.asarray(y, np.int32),
                                       [everything], [everything[:1]])
    res = training.fit(model, params, state, pruning.ones_like(params), data, config,
                       train_key[None], stage=name)
    return model, res


def predict(trained, x: np.ndarray) -> np.ndarray:
    """Eval-mode logits ``[n, outputs]`` (float64) of a model from :func:`train`."""
    model, res = trained
    x = jax.numpy.asarray(x, jax.numpy.float32)
    idx = jax.numpy.arange(len(x))[None]
    logits = training.predict_logits(model, res.params, res.model_state, res.masks, x, idx)
    return np.asarray(logits[0], np.float64)


def with_epochs(config: training.TrainConfig, epochs: int | None) -> training.TrainConfig:
    """``config`` with ``epochs`` training epochs (None: unchanged), for quick audits."""
    return config if epochs is None else dataclasses.replace(config, epochs=epochs)


def margin(trained, x: np.ndarray) -> np.ndarray:
    """Score of a two-logit attack model: logit(member) - logit(non-member)."""
    logits = predict(trained, x)
    return logits[:, 1] - logits[:, 0]


def make(kind: str, seed: int = 0, config: training.TrainConfig = TRAIN,
         epochs: int | None = None) -> Attack:
    """A classifier attack on ``kind`` inputs; ``seed`` fixes its init, dropout and shuffling;
    ``epochs`` overrides the paper's epoch count."""
    config = with_epochs(config, epochs)

    def fit(shadow: Features, is_member: np.ndarray):
        module = mlp.MLP(2, hidden=(512, 256, 128), dropout=0.2, dropout_layers=2)
        return train(module, attack_inputs(kind, shadow), is_member, config, seed,
                     f"attack_{kind}")

    def score(state, target: Features) -> np.ndarray:
        return margin(state, attack_inputs(kind, target))

    return Attack(fit=fit, score=score, name=kind)


REGISTRY = {kind: functools.partial(make, kind) for kind in INPUTS}
