"""Shared fixtures: random data (never zeros), the engines installed here, tolerances per method."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("DASK_DISTCONV__PROGRESS", "False")

from distconv import kernels
from distconv.plan import METHOD_OPS


def engines_under_test() -> list[str]:
    """Installed engines, or the comma list in DISTCONV_TEST_ENGINES to narrow a run on purpose."""
    chosen = os.environ.get("DISTCONV_TEST_ENGINES")
    installed = kernels.installed_engines()
    return [e for e in chosen.split(",") if e in installed] if chosen else installed


def cpu_engines_for(method: str, ndim: int = 2, dtype=np.float64) -> list[str]:
    """Engines under test on the CPU that implement ``method`` for this rank and dtype."""
    op = METHOD_OPS[method]
    found = []
    for name in engines_under_test():
        spec = kernels.ENGINES[name]
        if spec.device == "cpu" and op in spec.ops and kernels.supports(name, op, ndim, dtype):
            found.append(name)
    return found


def engine_method_params(ndim: int = 2, dtype=np.float64):
    """pytest params of (engine, method) for every installed CPU engine and its methods."""
    return [
        pytest.param(engine, method, id=f"{engine}-{method}")
        for method in METHOD_OPS
        for engine in cpu_engines_for(method, ndim, dtype)
    ]


def tolerance(x: np.ndarray, weights: np.ndarray, compute_dtype) -> float:
    """Absolute tolerance: float64 ≈ 1e-10, float32 ≈ 1e-5 of the largest possible output."""
    scale = float(np.abs(weights).sum() * max(np.abs(x).max(), 1.0))
    return scale * (1e-10 if np.dtype(compute_dtype) == np.float64 else 1e-5)


def random_weights(rng: np.random.Generator, shape, separable: bool) -> np.ndarray:
    """Signed random weights; rank-1 (outer product) when the separable method is tested."""
    if not separable:
        return rng.standard_normal(shape)
    out = rng.standard_normal(shape[0])
    for size in shape[1:]:
        out = np.multiply.outer(out, rng.standard_normal(size))
    return out


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261122)
