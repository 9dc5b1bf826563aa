"""The neural-network attack of the GRIP paper (Appendix D).

Two branches: the probability vector through 1024 -> 512 -> 64, the one-hot true label through
512 -> 64; their concatenation through 512 -> 256 -> 128 -> 64 -> 1 with a sigmoid output, ReLU
everywhere else. Trained with the mean squared error between sigmoid output and membership, Adam
(lr 1e-3, x0.1 at epoch 30), 300 epochs, batch 128 (the batch size is not given; mia_prune's is
used), the last epoch kept. Score: the pre-sigmoid logit (>= 0: member).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxmia import training
from jaxmia.attacks import classifier
from jaxmia.attacks.base import Attack, Features
from jaxmia.models import layers

TRAIN = training.TrainConfig(epochs=300, batch_size=128, lr=1e-3, weight_decay=0.0,
                             optimizer="adam", patience=None, keep="last", lr_milestones=(30,),
                             loss="sigmoid_mse")


class GripNN(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool):
        del train  # Unused: no dropout or norm layers.
        probs, onehot = x[:, : self.num_classes], x[:, self.num_classes:]
        a = probs
        for width in (1024, 512, 64):
            a = nn.relu(layers.dense(width)(a))
        b = onehot
        for width in (512, 64):
            b = nn.relu(layers.dense(width)(b))
        h = nn.relu(layers.dense(512)(jnp.concatenate([a, b], axis=-1)))
        for width in (256, 128, 64):
            h = nn.relu(layers.dense(width)(h))
        return layers.dense(1)(h)


def make(seed: int = 0, config: training.TrainConfig = TRAIN,
         epochs: int | None = None) -> Attack:
    config = classifier.with_epochs(config, epochs)
    def fit(shadow: Features, is_member: np.ndarray):
        module = GripNN(num_classes=shadow["probs"].shape[-1])
        return classifier.train(module, classifier.attack_inputs("nncls", shadow), is_member,
                                config, seed, "attack_grip_nn")

    def score(state, target: Features) -> np.ndarray:
        return classifier.predict(state, classifier.attack_inputs("nncls", target))[:, 0]

    return Attack(fit=fit, score=score, name="grip_nn")


REGISTRY = {"grip_nn": make}
