"""Defense registry: ``REGISTRY[name](strength=..., **options)`` returns a
:class:`jaxmia.base.Defense`, a loss term (or a whole objective) the one training loop uses
(``training.fit(..., defense=...)``). DP-SGD is not here: it changes how the gradient is formed
(``training.TrainConfig.dp``), not the loss."""

from jaxmia.defenses import label_smoothing, ppb, relaxloss

REGISTRY = {"ppb": ppb.make, "relaxloss": relaxloss.make,
            "label_smoothing": label_smoothing.make}
# Each defense's default strength (its paper's), used when none is given: PPB's lambda,
# RelaxLoss's alpha, label smoothing's epsilon.
DEFAULT_STRENGTH = {"ppb": ppb.DEFAULT_STRENGTH, "relaxloss": relaxloss.DEFAULT_STRENGTH,
                    "label_smoothing": label_smoothing.DEFAULT_STRENGTH}
# Where each defense trains by default, as its paper: 'finetune' only while the pruned models
# are fine-tuned (PPB); 'all' from scratch, fine-tuning included.
DEFAULT_STAGES = {"ppb": "finetune", "relaxloss": "all", "label_smoothing": "all"}
STAGES = ("all", "finetune")
