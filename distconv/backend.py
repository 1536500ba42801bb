"""Chunk-type dispatch: NumPy or CuPy follows ``type(x._meta)``, as dask-image does.

This is the first of the two dispatch decisions in docs/architecture.md (the engine is the second,
in :mod:`distconv.kernels`). CuPy is registered lazily, so importing distconv never imports it.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType
from typing import Any

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


def upload(block):
    """A host block copied to the GPU; CuPy is imported here, in the task, never in the client."""
    import cupy

    return cupy.asarray(block)


def to_numpy(x) -> np.ndarray:
    """Bring a chunk to host memory (a no-op for NumPy chunks)."""
    return x.get() if is_gpu_array(x) else np.asarray(x)


def cast_output(out, dtype: np.dtype):
    """Cast a float result to the output dtype as scipy.ndimage does, but saturating.

    Integers truncate toward zero (scipy's C cast: 2.7 → 2, -2.7 → -2) and saturate where the
    value does not fit (scipy wraps: 600 in uint8 is 88 there, 255 here); NaN becomes 0. bool
    is ``trunc(value) != 0`` (scipy's for ``|value| < 256``; scipy wraps there too: 256 is
    False). Floats are cast as NumPy casts them.

    ``out`` is a NumPy or CuPy block of results in the compute dtype; the cast block is returned.
    """
    return cast_and_count(out, dtype, count=False)[0]


def cast_and_count(out, dtype: np.dtype, *, count: bool = True) -> tuple[Any, int]:
    """:func:`cast_output`, and how many samples were clipped (saturated, or NaN) on the way.

    Parameters
    ----------
    out : numpy.ndarray or cupy.ndarray
        A block of results in the compute dtype.
    dtype : dtype-like
        The output dtype.
    count : bool
        Count the clipped samples (one more pass over the block); 0 is returned otherwise.

    Returns
    -------
    (array, int)
        The cast block and the number of its samples that did not fit the integer dtype.
    """
    dtype = np.dtype(dtype)
    if out.dtype == dtype:
        return out, 0
    if dtype.kind == "b":  # scipy's cast goes through an integer: 0.5 is False, 1.5 True
        return array_module(out).abs(out) >= 1, 0
    if dtype.kind not in "iu" or out.dtype.kind != "f":
        return out.astype(dtype), 0
    xp = array_module(out)
    lo, hi = integer_bounds(dtype, out.dtype)
    result = xp.trunc(out)
    top = np.iinfo(dtype).max
    # float32 cannot hold int32's maximum (nor float64 int64's): values above the largest float
    # that fits are set to the maximum after the cast.
    over = result > hi if count or int(hi) != top else None
    nan = xp.isnan(result)
    clipped = 0
    if count:
        clipped = int(xp.count_nonzero(over | (result < lo) | nan))
    result[nan] = 0
    xp.clip(result, lo, hi, out=result)
    result = result.astype(dtype)
    if int(hi) != top:
        result[over] = top
    return result, clipped


def integer_bounds(dtype: np.dtype, float_dtype: np.dtype) -> tuple[Any, Any]:
    """The smallest and largest values of ``float_dtype`` that fit the integer ``dtype``.

    float32(2**31 - 1) rounds up to 2**31, which int32 cannot hold: the upper bound is then the
    largest float below it. The lower bounds (0, -2**(n-1)) are exact in every float type.
    """
    info = np.iinfo(dtype)
    lo = np.array(info.min, dtype=float_dtype)
    hi = np.array(info.max, dtype=float_dtype)
    if int(hi) > info.max:
        hi = np.nextafter(hi, float_dtype.type(0))
    return lo[()], hi[()]
