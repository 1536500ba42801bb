"""SciPy/NumPy engine: direct (scipy.ndimage), FFT overlap-save, separable 1-D passes.

Every function follows the per-chunk contract in :mod:`distconv.kernels.registry`: the block
arrives padded for its halo and the *valid* part of the correlation is returned. The engine's cost
model for ``method="auto"`` is in the registry too.

The FFTs are scipy.fft's (pocketfft), or ducc0's where the ``fft`` extra installed it: the same
author's successor library, about 25 % faster on a 2k² float32 chunk here (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import numpy as np
import scipy
import scipy.fft
from scipy import ndimage

from distconv.kernels._cache import KeyedCache
from distconv.kernels._crop import circular_valid, valid_crop, valid_crop_axis
from distconv.kernels._wiener import wiener_transfer
from distconv.kernels.registry import ducc0_installed

__all__ = [
    "correlate_direct",
    "correlate_fft",
    "correlate_separable",
    "device_info",
    "matmul",
    "multiply",
    "use_ducc0",
    "wiener_filter",
]

# Read by use_ducc0() at every call, so that tests can switch the FFT library.
_DUCC0_INSTALLED = ducc0_installed()


def correlate_direct(block: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Valid correlation of a padded block with ``scipy.ndimage.correlate``."""
    full = ndimage.correlate(block, weights, mode="constant")
    return full[valid_crop(block.shape, weights.shape)]


def correlate_separable(block: np.ndarray, factors: list[np.ndarray | None]) -> np.ndarray:
    """Valid correlation with a rank-1 kernel given as one 1-D factor per axis."""
    out = block
    for axis, factor in enumerate(factors):
        if factor is None:
            continue
        out = ndimage.correlate1d(out, factor, axis=axis, mode="constant")
        out = out[valid_crop_axis(out.shape, axis, factor.shape[0])]
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
        spectrum = spectrum[circular_valid(block.shape, weights.shape, (axis,))]
    full = scipy.fft.irfft(spectrum, n=lengths[-1], axis=real_axis)
    return np.ascontiguousarray(
        full[circular_valid(block.shape, weights.shape, (real_axis,))], dtype=block.dtype
    )


def use_ducc0() -> bool:
    """Whether the FFT path runs on ducc0 (installed); tests switch it off for scipy.fft."""
    return _DUCC0_INSTALLED


def _correlate_fft_ducc0(
    block: np.ndarray, weights: np.ndarray, axes: tuple[int, ...], lengths: tuple[int, ...]
) -> np.ndarray:
    """:func:`correlate_fft` with ducc0: the same passes, in place in one spectrum buffer."""
    import ducc0.fft

    *complex_axes, real_axis = axes
    real_dtype = np.float64 if block.dtype == np.float64 else np.float32
    complex_dtype = np.complex128 if real_dtype == np.float64 else np.complex64
    # ducc0 transforms full lengths only: zero-pad the real axis, then the complex axes.
    padded = np.zeros(
        block.shape[:real_axis] + (lengths[-1],) + block.shape[real_axis + 1 :], dtype=real_dtype
    )
    padded[tuple(slice(0, n) for n in block.shape)] = block
    shape = list(block.shape)
    for axis, length in zip(complex_axes, lengths):
        shape[axis] = length
    shape[real_axis] = lengths[-1] // 2 + 1
    spectrum = np.zeros(shape, dtype=complex_dtype)
    filled = tuple(
        slice(0, block.shape[a]) if a in complex_axes else slice(None) for a in range(block.ndim)
    )
    ducc0.fft.r2c(padded, axes=(real_axis,), out=spectrum[filled])
    del padded
    if complex_axes:
        ducc0.fft.c2c(spectrum, axes=complex_axes, forward=True, out=spectrum)
    spectrum *= _weights_spectrum(weights, lengths, axes)
    for axis in reversed(complex_axes):
        ducc0.fft.c2c(spectrum, axes=(axis,), forward=False, inorm=2, out=spectrum)
        spectrum = spectrum[circular_valid(block.shape, weights.shape, (axis,))]
    full = ducc0.fft.c2r(spectrum, axes=(real_axis,), lastsize=lengths[-1], forward=False, inorm=2)
    return np.ascontiguousarray(
        full[circular_valid(block.shape, weights.shape, (real_axis,))], dtype=block.dtype
    )


def wiener_filter(
    block: np.ndarray, psf: np.ndarray, balance: float, reg: np.ndarray | None = None
) -> np.ndarray:
    """Wiener–Hunt deconvolution of a whole block, circular over it, in ``block.dtype``.

    :func:`skimage.restoration.wiener`'s formula (see :mod:`distconv.kernels._wiener`) without
    its clipping; the filter for this block shape is cached per process.
    """
    axes = tuple(range(block.ndim))
    key = (psf.tobytes(), psf.shape, None if reg is None else (reg.tobytes(), reg.shape))
    key += (float(balance), block.shape, block.dtype.str)
    filt = _WIENER.get(key, lambda: wiener_transfer(psf, reg, balance, block.shape, block.dtype))
    if use_ducc0():
        import ducc0.fft

        spectrum = ducc0.fft.r2c(block, axes=axes)
        spectrum *= filt
        out = ducc0.fft.c2r(spectrum, axes=axes, lastsize=block.shape[-1], forward=False, inorm=2)
    else:
        spectrum = scipy.fft.rfftn(block, axes=axes)
        spectrum *= filt
        out = scipy.fft.irfftn(spectrum, s=block.shape, axes=axes)
    return np.ascontiguousarray(out, dtype=block.dtype)


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


# The spectrum of the (flipped) weights is the same for every interior chunk: keep a few per
# worker process, keyed by the weights' bytes and the FFT lengths.
_SPECTRA: KeyedCache = KeyedCache(maxsize=8, policy="lru")
# Wiener filters per block shape (interior, edge and corner tiles), as large as a spectrum.
_WIENER: KeyedCache = KeyedCache(maxsize=8, policy="lru")


def _weights_spectrum(weights: np.ndarray, lengths, axes) -> np.ndarray:
    key = (weights.tobytes(), weights.shape, weights.dtype.str, lengths, axes)

    def compute() -> np.ndarray:
        flipped = weights[
            tuple(slice(None, None, -1) if a in axes else slice(None) for a in range(weights.ndim))
        ]
        return scipy.fft.rfftn(flipped, s=lengths, axes=axes)

    return _SPECTRA.get(key, compute)
