"""Plans made before any graph exists: pure, cheap choices that the graph builders follow.

:mod:`.correlation` resolves scipy.ndimage-style arguments into a :class:`CorrelationPlan`;
:mod:`.matmul` chooses a matrix product's blocks under a memory budget (:class:`MatmulPlan`).
Nothing here starts or asks a cluster at import time.
"""

from distconv.plan.arguments import (
    CANONICAL_MODE,
    METHODS,
    MODES,
    check_output_dtype,
    check_weights,
    check_weights_fit,
    compute_dtype_for,
    normalize_axes,
    normalize_method,
    normalize_mode,
    normalize_origins,
    output_dtype_for,
)
from distconv.plan.correlation import (
    METHOD_OPS,
    SEPARABLE_RTOL,
    CorrelationPlan,
    method_costs,
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
    "check_output_dtype",
    "check_weights",
    "check_weights_fit",
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
