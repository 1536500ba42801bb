"""Re-exports :func:`matmul` and :func:`multiply` from their modules, for older imports."""

from distconv.ops.matmul import matmul
from distconv.ops.multiply import multiply

__all__ = ["matmul", "multiply"]
