"""The valid part of a correlation, as slices: one definition for the engines that crop.

A haloed block of ``n`` samples correlated with ``k`` taps has ``n - k + 1`` valid samples. Two
ways of computing it leave them at different places:

* a same-size correlation with zero padding (``scipy.ndimage``/``cupyx.scipy.ndimage`` with
  ``mode="constant"``) centres the kernel, so the valid samples start at ``k // 2``
  (:func:`valid_crop`, :func:`valid_crop_axis`);
* a circular correlation of length ``L >= n`` (FFT overlap-save) is exact at ``k - 1 .. n - 1``
  (:func:`circular_valid`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["circular_valid", "valid_crop", "valid_crop_axis"]


def valid_crop(block_shape: Sequence[int], weights_shape: Sequence[int]) -> tuple[slice, ...]:
    """Slices cutting the valid part out of a same-size, zero-padded correlation.

    Parameters
    ----------
    block_shape : sequence of int
        Shape of the haloed block (and of the same-size correlation).
    weights_shape : sequence of int
        Shape of the kernel, same length.

    Returns
    -------
    tuple of slice
        ``block_shape[i] - weights_shape[i] + 1`` samples per axis, starting at
        ``weights_shape[i] // 2``.
    """
    return tuple(slice(w // 2, w // 2 + b - w + 1) for b, w in zip(block_shape, weights_shape))


def valid_crop_axis(shape: Sequence[int], axis: int, size: int) -> tuple[slice, ...]:
    """:func:`valid_crop` for a 1-D kernel of ``size`` taps along ``axis`` (a separable pass).

    Parameters
    ----------
    shape : sequence of int
        Shape of the same-size correlation.
    axis : int
        The filtered axis.
    size : int
        Number of taps.

    Returns
    -------
    tuple of slice
        Every sample on the other axes, the valid ones on ``axis``.
    """
    crop = [slice(None)] * len(shape)
    crop[axis] = slice(size // 2, size // 2 + shape[axis] - size + 1)
    return tuple(crop)


def circular_valid(
    block_shape: Sequence[int], weights_shape: Sequence[int], axes: Iterable[int]
) -> tuple[slice, ...]:
    """Slices keeping, on ``axes``, the samples where a circular correlation is exact.

    Parameters
    ----------
    block_shape : sequence of int
        Shape of the haloed block (the circular correlation may be longer; it is cut to the
        block's length on ``axes``).
    weights_shape : sequence of int
        Shape of the kernel, same length.
    axes : iterable of int
        Axes to crop; the others are kept whole.

    Returns
    -------
    tuple of slice
        ``weights_shape[a] - 1 .. block_shape[a] - 1`` on each axis ``a`` of ``axes``.
    """
    index = [slice(None)] * len(block_shape)
    for axis in axes:
        index[axis] = slice(weights_shape[axis] - 1, block_shape[axis])
    return tuple(index)
