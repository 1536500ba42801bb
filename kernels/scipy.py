"""SciPy/NumPy engine: direct (scipy.ndimage), FFT overlap-save, separable 1-D passes.

Every function follows the per-chunk contract in :mod:`distconv.kernels`: the block arrives padded
for its halo and the *valid* part of the correlation is returned.

The FFTs are scipy.fft's (pocketfft), or ducc0's where the ``fft`` extra installed it: the same
author's successor library, about 25 % faster on a 2k² float32 chunk here (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from threading import Lock

import numpy as np
import scipy
import scipy.fft
from scipy import ndimage

# Cost model for method="auto" (distconv.plan.method_costs): seconds per output pixel plus seconds
# per unit of work (direct: nonzero taps x pixels; separable: sum of 1-D taps x pixels; fft:
# 2 x padded samples x log2(padded samples)). Fitted on 1024x1024 float32 blocks on the 2-core
# CI machine (kernels 3..31); FFT already wins from 5x5 on, direct only for tiny kernels.
# With ducc0 the same FFT passes take about two thirds of scipy.fft's time (20 vs 30 ms per
# 2078² float32 chunk, benchmarks/RESULTS.md).
_DUCC0_INSTALLED = importlib.util.find_spec("ducc0") is not None
FFT_COST_SCIPY = 7.0e-10
FFT_COST_DUCC0 = 0.67 * FFT_COST_SCIPY
COST = {"direct": (9.7e-9, 1.5e-9),
        "fft": (0.0, FFT_COST_DUCC0 if _DUCC0_INSTALLED else FFT_COST_SCIPY),
        "separable": (1.2e-8, 9.0e-10)}


def correlate_direct(block: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Valid correlation of a padded block with ``scipy.ndimage.correlate``."""
    full = ndimage.correlate(block, weights, mode="constant")
    return full[_valid_crop(block.shape, weights.shape)]


def correlate_separable(block: np.ndarray, factors: list[np.ndarray | None]) -> np.ndarray:
    """Valid correlation with a rank-1 kernel given as one 1-D factor per axis."""
    out = block
    for axis, factor in enumerate(factors):
        if factor is None:
            continue
        out = ndimage.correlate1d(out, factor, axis=axis, mode="constant")
        size = factor.shape[0]
        crop = [slice(None)] * out.ndim
        crop[axis] = slice(size // 2, size // 2 + out.shape[axis] - size + 1)
        out = out[tuple(crop)]
    return np.ascontiguousarray(out)


def correlate_fft(block: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Valid correlation by FFT overlap-save on the haloed block.

    A circular convolution of length ``L >= n`` is exact at indices ``k-1 .. n-1``, so the block
    only needs padding to a fast length, not to ``n + k - 1``.
    """
    axes = tuple(i for i, size in enumerate(weights.shape) if size > 1)
    if not axes:
        return block * weights.reshape(())
    lengths = tuple(scipy.fft.next_fast_len(block.shape[a], real=True) for a in axes)
    if use_ducc0():
        return _correlate_fft_ducc0(block, weights, axes, lengths)
    # rfftn/irfftn one axis at a time (same layout: the real axis last), so that each inverse
    # pass can drop the rows outside the valid window before the next pass transforms them,
    # and the complex passes work in place. About 10 % less FFT time per 2k² chunk.
    *complex_axes, real_axis = axes
    spectrum = scipy.fft.rfft(block, n=lengths[-1], axis=real_axis)
    for axis, length in zip(complex_axes, lengths):
        spectrum = scipy.fft.fft(spectrum, n=length, axis=axis, overwrite_x=True)
    spectrum *= _weights_spectrum(weights, lengths, axes)
    for axis in reversed(complex_axes):
        spectrum = scipy.fft.ifft(spectrum, axis=axis, overwrite_x=True)
        spectrum = spectrum[_valid_along(axis, block, weights)]
    full = scipy.fft.irfft(spectrum, n=lengths[-1], axis=real_axis)
    return np.ascontiguousarray(full[_valid_along(real_axis, block, weights)],
                                dtype=block.dtype)


def use_ducc0() -> bool:
    """Whether the FFT path runs on ducc0 (installed); tests switch it off for scipy.fft."""
    return _DUCC0_INSTALLED



def _correlate_fft_ducc0(block: np.ndarray, weights: np.ndarray, axes: tuple[int, ...],
                         lengths: tuple[int, ...]) -> np.ndarray:
    """:func:`correlate_fft` with ducc0: the same passes, in place in one spectrum buffer."""
    import ducc0.fft

    *complex_axes, real_axis = axes
    real_dtype = np.float64 if block.dtype == np.float64 else np.float32
    complex_dtype = np.complex128 if real_dtype == np.float64 else np.complex64
    # ducc0 transforms full lengths only: zero-pad the real axis, then the complex axes.
    padded = np.zeros(block.shape[:real_axis] + (lengths[-1],) + block.shape[real_axis + 1:],
                      dtype=real_dtype)
    padded[tuple(slice(0, n) for n in block.shape)] = block
    shape = list(block.shape)
    for axis, length in zip(complex_axes, lengths):
        shape[axis] = length
    shape[real_axis] = lengths[-1] // 2 + 1
    spectrum = np.zeros(shape, dtype=complex_dtype)
    filled = tuple(slice(0, block.shape[a]) if a in complex_axes else slice(None)
                   for a in range(block.ndim))
    ducc0.fft.r2c(padded, axes=(real_axis,), out=spectrum[filled])
    del padded
    if complex_axes:
        ducc0.fft.c2c(spectrum, axes=complex_axes, forward=True, out=spectrum)
    spectrum *= _weights_spectrum(weights, lengths, axes)
    for axis in reversed(complex_axes):
        ducc0.fft.c2c(spectrum, axes=(axis,), forward=False, inorm=2, out=spectrum)
        spectrum = spectrum[_valid_along(axis, block, weights)]
    full = ducc0.fft.c2r(spectrum, axes=(real_axis,), lastsize=lengths[-1], forward=False,
                         inorm=2)
    return np.ascontiguousarray(full[_valid_along(real_axis, block, weights)],
                                dtype=block.dtype)


def _valid_along(axis: int, block: np.ndarray, weights: np.ndarray) -> tuple[slice, ...]:
    """Index keeping, on ``axis``, the samples where the circular correlation is exact."""
    index = [slice(None)] * block.ndim
    index[axis] = slice(weights.shape[axis] - 1, block.shape[axis])
    return tuple(index)


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``numpy.matmul`` on one pair of blocks (BLAS)."""
    return np.matmul(a, b)


def multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``numpy.multiply`` on one pair of blocks."""
    return np.multiply(a, b)


def device_info() -> str:
    """One line for ``distconv engines``."""
    fft = "ducc0 FFTs" if use_ducc0() else "scipy.fft FFTs"
    return f"CPU (scipy {scipy.__version__}, numpy {np.__version__}, {fft})"


def _valid_crop(block_shape, weights_shape) -> tuple[slice, ...]:
    return tuple(
        slice(w // 2, w // 2 + b - w + 1) for b, w in zip(block_shape, weights_shape)
    )


# The spectrum of the (flipped) weights is the same for every interior chunk: keep a few per
# worker process, keyed by the weights' bytes and the FFT lengths.
_SPECTRA: OrderedDict = OrderedDict()
_SPECTRA_LOCK = Lock()
_SPECTRA_MAX = 8


def _weights_spectrum(weights: np.ndarray, lengths, axes) -> np.ndarray:
    key = (weights.tobytes(), weights.shape, weights.dtype.str, lengths, axes)
    with _SPECTRA_LOCK:
        if key in _SPECTRA:
            _SPECTRA.move_to_end(key)
            return _SPECTRA[key]
    flipped = weights[tuple(slice(None, None, -1) if a in axes else slice(None)
                            for a in range(weights.ndim))]
    spectrum = scipy.fft.rfftn(flipped, s=lengths, axes=axes)
    with _SPECTRA_LOCK:
        _SPECTRA[key] = spectrum
        while len(_SPECTRA) > _SPECTRA_MAX:
            _SPECTRA.popitem(last=False)
    return spectrum
