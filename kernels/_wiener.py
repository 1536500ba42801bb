"""The Wiener–Hunt filter's transfer function for one block shape, on the host (NumPy).

The formula and conventions of :func:`skimage.restoration.wiener` (Orieux et al. 2010): the
PSF's transfer function is the real FFT of the PSF zero-padded to the block and rolled so that
its sample ``k // 2`` sits at the origin; the regulariser defaults to the discrete Laplacian,
and only the real part of its transfer function is used, as scikit-image does. The engines
multiply a block's real FFT by this filter and transform back (circular over the block).
"""

from __future__ import annotations

import numpy as np
import scipy.fft

__all__ = ["laplacian", "transfer_function", "wiener_transfer"]


def transfer_function(impulse: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Real FFT of ``impulse`` zero-padded to ``shape``, its sample ``k // 2`` at the origin."""
    padded = np.zeros(shape, dtype=np.float64)
    padded[tuple(slice(0, k) for k in impulse.shape)] = impulse
    padded = np.roll(padded, [-(k // 2) for k in impulse.shape], axis=tuple(range(padded.ndim)))
    return scipy.fft.rfftn(padded)


def laplacian(ndim: int) -> np.ndarray:
    """The discrete Laplacian's impulse response: ``2 * ndim`` at the centre, -1 beside it."""
    impulse = np.zeros((3,) * ndim)
    for axis in range(ndim):
        index = [1] * ndim
        for side in (0, 2):
            index[axis] = side
            impulse[tuple(index)] = -1.0
    impulse[(1,) * ndim] = 2.0 * ndim
    return impulse


def wiener_transfer(
    psf: np.ndarray, reg: np.ndarray | None, balance: float, shape: tuple[int, ...], dtype
) -> np.ndarray:
    """``conj(H) / (|H|² + balance |Re R|²)`` for blocks of ``shape``, as complex64/complex128.

    Parameters
    ----------
    psf : numpy.ndarray
        The PSF (impulse response), the block's ``ndim``.
    reg : numpy.ndarray or None
        The regulariser's impulse response (None: the Laplacian).
    balance : float
        Weight of the regulariser.
    shape : tuple of int
        The block's shape.
    dtype : dtype
        The block's real dtype (float32 gives complex64).

    Returns
    -------
    numpy.ndarray
        Shape ``shape[:-1] + (shape[-1] // 2 + 1,)``.
    """
    psf = np.asarray(psf, dtype=np.float64)
    h = transfer_function(psf, shape)
    r = transfer_function(laplacian(psf.ndim) if reg is None else np.asarray(reg), shape).real
    filt = np.conj(h) / (np.abs(h) ** 2 + balance * r**2)
    return filt.astype(np.complex128 if np.dtype(dtype) == np.float64 else np.complex64)
