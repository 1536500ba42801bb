"""Planning before any graph exists: pure, cheap choices a graph builder in :mod:`distconv.ops` follows.

:mod:`.correlation` resolves scipy.ndimage-style arguments into a :class:`CorrelationPlan`.
Nothing here starts or asks a cluster at import time.
"""

from distconv.plan.correlation import (
    CANONICAL_MODE,
    METHOD_OPS,
    METHODS,
    MODES,
    SEPARABLE_RTOL,
    CorrelationPlan,
    check_weights,
    compute_dtype_for,
    method_costs,
    normalize_axes,
    normalize_method,
    normalize_mode,
    normalize_origins,
    output_dtype_for,
    plan_correlation,
    rank_one_factors,
)

__all__ = [
    "CANONICAL_MODE",
    "METHODS",
    "METHOD_OPS",
    "MODES",
    "SEPARABLE_RTOL",
    "CorrelationPlan",
    "check_weights",
    "compute_dtype_for",
    "method_costs",
    "normalize_axes",
    "normalize_method",
    "normalize_mode",
    "normalize_origins",
    "output_dtype_for",
    "plan_correlation",
    "rank_one_factors",
]
