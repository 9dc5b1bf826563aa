"""Defense registry: ``REGISTRY[name](strength=..., **options)`` returns a
:class:`jaxmia.base.Defense`, a loss term (or a whole objective) the one training loop uses
(``training.fit(..., defense=...)``). DP-SGD is not here: it changes how the gradient is formed
(``training.TrainConfig.dp``), not the loss."""

from jaxmia.defenses import adv, label_smoothing, ppb, relaxloss

REGISTRY = {"ppb": ppb.make, "adv": adv.make, "relaxloss": relaxloss.make,
            "label_smoothing": label_smoothing.make}
# Each defense's default strength (its paper's), used when none is given: PPB's lambda, ADV's
# theta, RelaxLoss's alpha, label smoothing's epsilon.
DEFAULT_STRENGTH = {"ppb": ppb.DEFAULT_STRENGTH, "adv": adv.DEFAULT_STRENGTH,
                    "relaxloss": relaxloss.DEFAULT_STRENGTH,
                    "label_smoothing": label_smoothing.DEFAULT_STRENGTH}
# Where each defense trains by default, as the paper that brought it: 'finetune' only while the
# pruned models are fine-tuned (PPB, and ADV as the pruning paper's baseline); 'all' from
# scratch, fine-tuning included.
DEFAULT_STAGES = {"ppb": "finetune", "adv": "finetune", "relaxloss": "all",
                  "label_smoothing": "all"}
STAGES = ("all", "finetune")
