"""jaxmia: membership-inference audits of pruned and private networks in JAX/Flax.

The submodules are the API (see ../shared/STYLE.md): ``jaxmia.data``, ``jaxmia.models``,
``jaxmia.pruning``, ``jaxmia.training``, ``jaxmia.features``, ``jaxmia.attacks``,
``jaxmia.metrics`` and ``jaxmia.audit``.
"""

from jaxmia import base, errors  # noqa: F401
