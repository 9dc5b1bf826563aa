"""Attack registry: ``REGISTRY[name](seed=...)`` returns an :class:`Attack`."""

from jaxmia.attacks import classifier, threshold
from jaxmia.attacks.base import Attack, Features  # noqa: F401

REGISTRY = {**threshold.REGISTRY, **classifier.REGISTRY}
# The threshold attacks every audit runs (the pruning paper's Table 3 set).
AUDIT_DEFAULT = ("confidence", "entropy", "modified_entropy", "top1", "loss")
