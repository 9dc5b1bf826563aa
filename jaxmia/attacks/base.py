"""The attack unit: ``fit`` on shadow features and membership, ``score`` a target's examples."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

Features = dict[str, np.ndarray]  # name -> [examples, ...], plus "labels" [examples]


class Attack(NamedTuple):
    """``fit(shadow_features, is_member) -> state``; ``score(state, features) -> [examples]``.

    Scores: higher = member, and ``score >= 0`` is the attack's hard "member" decision.
    """

    fit: Callable[[Features, np.ndarray], Any]
    score: Callable[[Any, Features], np.ndarray]
    name: str
