"""Plans made before any graph exists: pure, cheap choices that the graph builders follow.

:mod:`.correlation` resolves scipy.ndimage-style arguments (checked by :mod:`.arguments`) into a
:class:`CorrelationPlan`; :mod:`.matmul` chooses a matrix product's blocks under a memory budget
(:class:`MatmulPlan`). Nothing here starts or asks a cluster at import time.
"""

from distconv.plan import arguments, correlation
from distconv.plan.arguments import *  # noqa: F403 (re-exports arguments.__all__)
from distconv.plan.correlation import *  # noqa: F403 (re-exports correlation.__all__)
from distconv.plan.matmul import (
    SAFETY_FRACTION,
    MatmulPlan,
    Resources,
    matmul_result_shape,
    plan_matmul,
)

__all__ = ["SAFETY_FRACTION", "MatmulPlan", "Resources", "matmul_result_shape", "plan_matmul"]
__all__ += arguments.__all__
__all__ += correlation.__all__
