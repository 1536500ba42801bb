"""Plans made before any graph exists: pure, cheap choices that the graph builders follow.

:mod:`.correlation` resolves scipy.ndimage-style arguments into a :class:`CorrelationPlan`;
:mod:`.matmul` chooses a matrix product's blocks under a memory budget (:class:`MatmulPlan`).
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
from distconv.plan.matmul import (
    SAFETY_FRACTION,
    MatmulPlan,
    Resources,
    matmul_result_shape,
    plan_matmul,
)

__all__ = [
    "CANONICAL_MODE",
    "METHODS",
    "METHOD_OPS",
    "MODES",
    "SAFETY_FRACTION",
    "SEPARABLE_RTOL",
    "CorrelationPlan",
    "MatmulPlan",
    "Resources",
    "check_weights",
    "compute_dtype_for",
    "matmul_result_shape",
    "method_costs",
    "normalize_axes",
    "normalize_method",
    "normalize_mode",
    "normalize_origins",
    "output_dtype_for",
    "plan_correlation",
    "plan_matmul",
    "rank_one_factors",
]
