"""Attack registry: ``REGISTRY[name](seed=...)`` returns an :class:`Attack`.

``lira`` and ``rmia`` are not in it: they score a target against per-example statistics of many
reference models (the membership-matrix protocol of ``experiments/lira.py``), not with a
classifier fit once on shadow features, so they are functions ``scores(target, refs, ref_in)``.
"""

from jaxmia.attacks import (
    blindmi,
    classifier,
    grip_nn,
    label_only,
    label_only_text,
    samia,
    sparsity_nn,
    threshold,
)
from jaxmia.attacks.base import Attack, Features  # noqa: F401

REGISTRY = {**threshold.REGISTRY, **classifier.REGISTRY, **samia.REGISTRY, **grip_nn.REGISTRY,
            **sparsity_nn.REGISTRY, **blindmi.REGISTRY, **label_only.REGISTRY,
            **label_only_text.REGISTRY}
# The threshold attacks every audit runs (the pruning paper's Table 3 set).
THRESHOLD = ("confidence", "entropy", "modified_entropy", "top1", "loss")
# The eight attacks of the pruning paper's code (the 9-minute target of issue #3).
PAPER = THRESHOLD[:3] + ("top1_code", "nn", "top3", "nncls", "samia")
# Everything (the audit's 'all' leaves the label-only attacks out on tabular data and text;
# the text-only label_synonym is asked for by name).
ALL = PAPER + ("top1", "loss", "correctness", "grip_nn") + tuple(sparsity_nn.REGISTRY) + ("blindmi",) + \
    label_only.FEATURES
LABEL_ONLY = label_only.FEATURES + label_only_text.TEXT_ONLY
TEXT_ONLY = label_only_text.TEXT_ONLY
# Attacks that need the sensitivity feature / BlindMI's generated reference set.
NEEDS_SENSITIVITY = ("samia",) + tuple(sparsity_nn.REGISTRY)
NEEDS_REFERENCE = ("blindmi",)
# Attacks that train a classifier (their epoch count can be overridden for quick audits).
CLASSIFIERS = tuple(classifier.REGISTRY) + ("samia", "grip_nn") + tuple(sparsity_nn.REGISTRY)
SETS = {"threshold": THRESHOLD, "paper": PAPER, "all": ALL}
AUDIT_DEFAULT = ALL
