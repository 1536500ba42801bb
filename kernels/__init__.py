"""Engines: which library computes one chunk.

Every engine is one module in this package (shipped as ``distconv.kernels.<module>``) holding
only per-chunk functions; :mod:`distconv.kernels.registry` knows everything else about it (its
packages, device, operations, ranks and dtypes, cost model, map_chunks runner) and states the
per-chunk contract. This package re-exports the registry's public names, so ``from distconv
import kernels; kernels.get_op(...)`` works, and imports no engine: ``import distconv`` and
planning a job never import TensorFlow, CuPy or Numba.
"""

from __future__ import annotations

from distconv.kernels import registry
from distconv.kernels.registry import *  # noqa: F403  (the names in registry.__all__)

__all__ = list(registry.__all__)
