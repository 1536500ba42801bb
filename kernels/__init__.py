"""Engines: which library computes one chunk.

Every engine is one module in this package (shipped as ``distconv.kernels.<module>``) holding
only per-chunk functions; :mod:`distconv.kernels.registry` knows everything else about it (its
packages, device, operations, ranks and dtypes, cost model, map_chunks runner) and states the
per-chunk contract. This package re-exports the registry, so ``from distconv import kernels;
kernels.get_op(...)`` works, and imports no engine: ``import distconv`` and planning a job never
import TensorFlow, CuPy or Numba.
"""

from __future__ import annotations

from distconv.kernels.registry import (
    CHUNK_ENGINES,
    CORRELATE_OPS,
    CPU_PREFERENCE,
    ENGINES,
    FLOAT_DTYPES,
    GPU_ENGINES,
    GPU_PREFERENCE,
    LINALG_OPS,
    EngineSpec,
    chunk_runner,
    engine_names,
    get_engine,
    get_op,
    install_hint,
    installed_engines,
    is_gpu_engine,
    is_installed,
    resolve_engine,
    supports,
)

__all__ = [
    "CHUNK_ENGINES",
    "CORRELATE_OPS",
    "CPU_PREFERENCE",
    "ENGINES",
    "FLOAT_DTYPES",
    "GPU_ENGINES",
    "GPU_PREFERENCE",
    "LINALG_OPS",
    "EngineSpec",
    "chunk_runner",
    "engine_names",
    "get_engine",
    "get_op",
    "install_hint",
    "installed_engines",
    "is_gpu_engine",
    "is_installed",
    "resolve_engine",
    "supports",
]
