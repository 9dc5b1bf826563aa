"""Defense registry: ``REGISTRY[name](strength=...)`` returns a :class:`jaxmia.base.Defense`, a
loss term the one training loop adds (``training.fit(..., defense=...)``). DP-SGD is not here:
it changes how the gradient is formed (``training.TrainConfig.dp``), not the loss."""

from jaxmia.defenses import ppb

REGISTRY = {"ppb": ppb.make}
# Each defense's default strength (its paper's), used when none is given.
DEFAULT_STRENGTH = {"ppb": ppb.DEFAULT_STRENGTH}
