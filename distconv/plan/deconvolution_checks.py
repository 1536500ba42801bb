"""Deconvolution arguments checked: the PSF, iterations, halo, regularisation.

Each check raises the one-line error the CLI prints, so the API and the command refuse the same
things with the same words.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

from distconv.errors import DistconvError
from distconv.plan.arguments import check_weights

__all__ = [
    "HALO_WORDS",
    "MAX_ITERATIONS",
    "check_balance",
    "check_filter_epsilon",
    "check_iterations",
    "check_psf",
    "check_reg",
    "check_requested_halo",
]

# More iterations than this is a typo (or a job of months): refused.
MAX_ITERATIONS = 10_000
HALO_WORDS = ("auto", "exact")


def check_psf(psf, image_shape: Sequence[int]) -> np.ndarray:
    """Return the PSF as float64, refusing what cannot be a point spread function here.

    Parameters
    ----------
    psf : array_like
        Real, finite, non-negative, not all zero, with the image's number of dimensions and no
        larger than the image on any axis.
    image_shape : sequence of int

    Returns
    -------
    numpy.ndarray

    Raises
    ------
    DistconvError
        Naming what is wrong.
    """
    array = check_weights(psf).astype(np.float64)  # real, non-empty, finite
    ndim = len(image_shape)
    if array.ndim > ndim:
        raise DistconvError(
            f"the PSF has {array.ndim} dimensions, more than the {ndim}-D image "
            f"(PSF shape {array.shape}, image shape {tuple(image_shape)})"
        )
    if array.ndim < ndim:
        raise DistconvError(
            f"the PSF has {array.ndim} dimensions and the image {ndim}; give the PSF "
            f"the image's dimensions (size 1 on axes it does not blur, e.g. psf[None])"
        )
    if np.any(array < 0):
        raise DistconvError(
            f"the PSF has negative values (min {array.min():.3g}); a PSF is non-negative "
            "(clip it at 0, e.g. after background subtraction)"
        )
    if not np.any(array > 0):
        raise DistconvError("the PSF is all zeros")
    for axis, (size, extent) in enumerate(zip(array.shape, image_shape)):
        if size > extent:
            raise DistconvError(
                f"the PSF is larger than the image on axis {axis} ({size} > {extent}); "
                "are IMAGE and PSF swapped?"
            )
    return array


def check_reg(reg, ndim: int) -> np.ndarray | None:
    """A Wiener regularisation operator (impulse response): None, or a finite real array of the
    image's ``ndim`` (scikit-image's ``reg``; the default is the Laplacian)."""
    if reg is None:
        return None
    array = check_weights(reg)
    if array.ndim != ndim:
        raise DistconvError(f"reg has {array.ndim} dimensions; the image has {ndim}")
    return array


def check_iterations(iterations) -> int:
    """Iterations: an integer from 1 to :data:`MAX_ITERATIONS`.

    Raises
    ------
    DistconvError
    """
    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral):
        if not (isinstance(iterations, numbers.Real) and float(iterations).is_integer()):
            raise DistconvError(f"iterations must be a whole number, got {iterations!r}")
    count = int(iterations)
    if count < 1:
        raise DistconvError(f"iterations must be at least 1, got {count}")
    if count > MAX_ITERATIONS:
        raise DistconvError(
            f"{count} iterations is more than the {MAX_ITERATIONS} distconv runs; "
            "Richardson-Lucy converges in tens to hundreds"
        )
    return count


def check_filter_epsilon(value) -> float | None:
    """``filter_epsilon``: None or 0 (off, as scikit-image's ``if filter_epsilon:``), or a finite
    positive number."""
    if value is None or value == 0:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DistconvError(f"filter_epsilon must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise DistconvError(f"filter_epsilon must be finite and positive, got {value!r}")
    return number


def check_balance(value) -> float:
    """Wiener's ``balance`` (the regularisation weight): a finite number >= 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DistconvError(f"balance must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise DistconvError(f"balance must be finite and at least 0, got {value!r}")
    return number


def check_requested_halo(halo) -> str | int:
    """``halo``: "auto", "exact", or a whole number of pixels >= 0 (also as a string)."""
    if isinstance(halo, str):
        text = halo.strip().lower()
        if text in HALO_WORDS:
            return text
        if text.isdigit():
            return int(text)
        raise DistconvError(f"halo must be 'auto', 'exact' or a number of pixels, got {halo!r}")
    if isinstance(halo, bool) or not isinstance(halo, numbers.Integral) or halo < 0:
        raise DistconvError(f"halo must be 'auto', 'exact' or pixels >= 0, got {halo!r}")
    return int(halo)
