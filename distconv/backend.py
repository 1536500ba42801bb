"""Chunk-type dispatch: NumPy or CuPy follows ``type(x._meta)``, as dask-image does.

This is the first of the two dispatch decisions in docs/architecture.md (the engine is the second,
in :mod:`distconv.kernels`). CuPy is registered lazily, so importing distconv never imports it.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

import numpy as np
from dask.utils import Dispatch

array_module = Dispatch("array_module")


@array_module.register(np.ndarray)
def _numpy_module(x) -> ModuleType:
    return np


@array_module.register_lazy("cupy")
def _register_cupy() -> None:
    import cupy

    @array_module.register(cupy.ndarray)
    def _cupy_module(x) -> ModuleType:
        return cupy


def is_gpu_array(x) -> bool:
    """True for CuPy chunks (or a dask array whose meta is CuPy), without importing CuPy."""
    meta = getattr(x, "_meta", x)
    return type(meta).__module__.split(".")[0] == "cupy"


def device_arrays_available() -> bool:
    """Whether CuPy is installed (found, not imported): chunks can then live on the GPU."""
    return importlib.util.find_spec("cupy") is not None


def to_device(x):
    """Move a dask array's chunks to the GPU once (CuPy meta); they stay there until save.

    Without CuPy the chunks stay NumPy: a GPU engine that takes host blocks (numba-cuda, also
    under the CUDA simulator) copies each block to its device and the result back itself.
    """
    if is_gpu_array(x) or not device_arrays_available():
        return x
    import cupy

    return x.map_blocks(cupy.asarray, dtype=x.dtype, meta=cupy.empty((0,) * x.ndim, x.dtype))


def to_numpy(x) -> np.ndarray:
    """Bring a chunk to host memory (a no-op for NumPy chunks)."""
    return x.get() if is_gpu_array(x) else np.asarray(x)


def cast_output(out, dtype: np.dtype):
    """Cast a float result to ``dtype``; integers are rounded and clipped, never wrapped."""
    dtype = np.dtype(dtype)
    if out.dtype == dtype:
        return out
    if dtype.kind in "iu":
        xp = array_module(out)
        info = np.iinfo(dtype)
        # The largest float of out.dtype that still fits: float32(2**31 - 1) rounds up to 2**31.
        hi = np.array(info.max, dtype=out.dtype)
        if int(hi) > info.max:
            hi = np.nextafter(hi, out.dtype.type(0))
        return xp.clip(xp.rint(out), info.min, hi).astype(dtype)
    return out.astype(dtype)
