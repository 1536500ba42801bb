"""The former home of :func:`matmul` and :func:`multiply`, kept so ``distconv.ops.linalg`` imports
still work; they live in :mod:`distconv.ops.matmul` and :mod:`distconv.ops.multiply`."""

from distconv.ops.matmul import matmul
from distconv.ops.multiply import multiply

__all__ = ["matmul", "multiply"]
