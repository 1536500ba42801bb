"""CuPy engine: direct (cupyx.scipy.ndimage), FFT overlap-save (cupy.fft), separable 1-D passes.

The GPU twin of :mod:`distconv.kernels.scipy`: same per-chunk contract, same algorithms, same
crops, so the two engines agree to rounding. Blocks normally arrive as CuPy arrays (the graph
keeps chunks on the device) and CuPy arrays are returned, computed on the block's device. A NumPy
block is copied to the current device and the result copied back as NumPy, so the engine also
works on host chunks (at the price of two transfers per chunk). Weights may come as NumPy: their
device copy, and the FFT spectrum of the flipped weights, are cached per process and per device.

Importing this module imports CuPy but creates no CUDA context and touches no device.

Verification status: written on a machine without a GPU. There, only the import (CuPy 14.2 with
no driver) and the module's own logic (crops, caches, NumPy/CuPy placement, run against a
throwaway NumPy-backed stand-in for CuPy) could be checked; every operation is exercised against
scipy.ndimage (float64) by ``tests/test_engine_gpu.py``, which runs only where a CUDA device is
present.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import cupy
import numpy as np
import scipy.fft
from cupyx.scipy import ndimage

from distconv.kernels._cache import KeyedCache
from distconv.kernels._crop import circular_valid, valid_crop, valid_crop_axis
from distconv.kernels._wiener import wiener_transfer
from distconv.kernels.registry import CORRELATE_OPS, LINALG_OPS

__all__ = [*CORRELATE_OPS, "device_info", "map_chunk", *LINALG_OPS, "usable", "wiener_filter"]


def correlate_direct(block, weights):
    """Valid correlation of a padded block with ``cupyx.scipy.ndimage.correlate``."""
    with _placement(block) as (x, back):
        w = _device_array(weights, x.dtype)
        full = ndimage.correlate(x, w, mode="constant")
        # A contiguous copy of the valid part lets the haloed full-size result be freed now.
        return back(cupy.ascontiguousarray(full[valid_crop(x.shape, w.shape)]))


def correlate_separable(block, factors):
    """Valid correlation with a rank-1 kernel given as one 1-D factor per axis (or ``None``)."""
    with _placement(block) as (out, back):
        for axis, factor in enumerate(factors):
            if factor is None:
                continue
            factor = _device_array(factor, out.dtype)
            out = ndimage.correlate1d(out, factor, axis=axis, mode="constant")
            out = out[valid_crop_axis(out.shape, axis, factor.shape[0])]
        return back(cupy.ascontiguousarray(out))


def correlate_fft(block, weights):
    """Valid correlation by FFT overlap-save on the haloed block (cuFFT via ``cupy.fft``).

    A circular convolution of length ``L >= n`` is exact at indices ``k-1 .. n-1``, so the block
    is only padded to a fast length (``scipy.fft.next_fast_len``), not to ``n + k - 1``.
    """
    with _placement(block) as (x, back):
        axes = tuple(i for i, size in enumerate(np.shape(weights)) if size > 1)
        if not axes:
            return back(x * _device_array(weights, x.dtype).reshape(()))
        lengths = tuple(scipy.fft.next_fast_len(x.shape[a], real=True) for a in axes)
        spectrum = cupy.fft.rfftn(x, s=lengths, axes=axes)
        spectrum *= _weights_spectrum(weights, x.dtype, lengths, axes)
        full = cupy.fft.irfftn(spectrum, s=lengths, axes=axes)
        del spectrum
        crop = circular_valid(x.shape, np.shape(weights), axes)
        return back(cupy.ascontiguousarray(full[crop], dtype=x.dtype))


def wiener_filter(block, psf, balance, reg=None):
    """Wiener–Hunt deconvolution of a whole block, circular over it (cuFFT via ``cupy.fft``).

    The filter is computed on the host (:mod:`distconv.kernels._wiener`) once per block shape
    and kept on each device.
    """
    with _placement(block) as (x, back):
        psf_host, reg_host = np.asarray(cupy.asnumpy(psf)), reg
        if reg_host is not None:
            reg_host = np.asarray(cupy.asnumpy(reg_host))
        key = (cupy.cuda.Device().id, psf_host.tobytes(), psf_host.shape, float(balance))
        key += (None if reg_host is None else (reg_host.tobytes(), reg_host.shape),)
        key += (x.shape, x.dtype.str)

        def compute():
            return cupy.asarray(wiener_transfer(psf_host, reg_host, balance, x.shape, x.dtype))

        filt = _WIENER.get(key, compute)
        spectrum = cupy.fft.rfftn(x)
        spectrum *= filt
        out = cupy.fft.irfftn(spectrum, s=x.shape)
        return back(cupy.ascontiguousarray(out, dtype=x.dtype))


def matmul(a, b):
    """``cupy.matmul`` on one pair of blocks (cuBLAS)."""
    with _placement(a, b) as (a, b, back):
        return back(cupy.matmul(a, b))


def multiply(a, b):
    """``cupy.multiply`` on one pair of blocks."""
    with _placement(a, b) as (a, b, back):
        return back(cupy.multiply(a, b))


def usable() -> bool:
    """Whether CuPy sees a CUDA device (it is installed, so a driver may still be missing)."""
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # CUDARuntimeError without a driver or device
        return False


def device_info() -> str:
    """One line for ``distconv engines``: the GPUs CuPy sees (or why there are none)."""
    runtime = cupy.cuda.runtime
    try:
        count = runtime.getDeviceCount()
        version = runtime.runtimeGetVersion()
    except runtime.CUDARuntimeError as error:
        return f"no CUDA device ({error}); CuPy {cupy.__version__}"
    if count == 0:
        return f"no CUDA device (getDeviceCount() == 0); CuPy {cupy.__version__}"
    names = []
    for index in range(count):
        props = runtime.getDeviceProperties(index)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        memory = props["totalGlobalMem"] / 2**30
        names.append(f"{index}: {name} ({memory:.0f} GiB, sm {props['major']}.{props['minor']})")
    return (
        f"{'; '.join(names)} (CuPy {cupy.__version__}, "
        f"CUDA runtime {version // 1000}.{version % 1000 // 10})"
    )


def map_chunk(fn, kwargs: dict, *blocks):
    """Run a user's CuPy function (``distconv.map_chunks``) on the blocks' device.

    CuPy blocks are used where they are; NumPy blocks are copied to the current device and the
    result is copied back, as for every operation of this engine.
    """
    with _placement(*blocks) as (*placed, back):
        return back(cupy.asarray(fn(*placed, **kwargs)))


# --------------------------------------------------------------------------------------------
# Placement and per-device caches
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _placement(*arrays) -> Iterator[tuple]:
    """Yield the arrays as CuPy arrays on one device, plus ``back`` for the result.

    The device is that of the first CuPy operand (else the current one) and is current inside
    the block. ``back`` returns CuPy if any operand was CuPy, else copies the result to NumPy.
    """
    on_device = [a for a in arrays if isinstance(a, cupy.ndarray)]
    device = on_device[0].device if on_device else cupy.cuda.Device()
    with device:
        placed = []
        for a in arrays:
            if isinstance(a, cupy.ndarray) and a.device.id != device.id:
                a = a.copy()  # CuPy copies onto the current (first operand's) device
            placed.append(cupy.asarray(a))

        def back(out):
            return out if on_device else cupy.asnumpy(out)

        yield (*placed, back)


# Weights (and 1-D factors) are small and identical for every chunk: one device copy each.
_ARRAYS: KeyedCache = KeyedCache(maxsize=32, policy="lru")
# Spectra are as large as a chunk's spectrum; edge chunks have other FFT lengths, hence several.
_SPECTRA: KeyedCache = KeyedCache(maxsize=8, policy="lru")
# Wiener filters per block shape and device.
_WIENER: KeyedCache = KeyedCache(maxsize=8, policy="lru")


def _device_array(array, dtype):
    """``array`` as a CuPy array of ``dtype`` on the current device, cached for host input."""
    if isinstance(array, cupy.ndarray):
        if array.device.id != cupy.cuda.Device().id:
            array = array.copy()  # onto the current device
        return array.astype(dtype, copy=False)
    host = np.ascontiguousarray(array, dtype=dtype)
    key = (cupy.cuda.Device().id, host.dtype.str, host.shape, host.tobytes())
    return _ARRAYS.get(key, lambda: cupy.asarray(host))


def _weights_spectrum(weights, dtype, lengths, axes):
    """rfftn of the weights flipped on the filtered axes, cached per device."""
    host = np.ascontiguousarray(cupy.asnumpy(weights), dtype=dtype)
    key = (cupy.cuda.Device().id, host.dtype.str, host.shape, host.tobytes(), lengths, axes)

    def compute():
        flipped = host[
            tuple(slice(None, None, -1) if a in axes else slice(None) for a in range(host.ndim))
        ]
        return cupy.fft.rfftn(cupy.asarray(flipped), s=lengths, axes=axes)

    return _SPECTRA.get(key, compute)
