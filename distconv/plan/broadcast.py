"""NumPy's broadcasting and dtype rules for the products, raising NumPy's own error messages."""

from __future__ import annotations

from numbers import Number

import numpy as np

from distconv.errors import DistconvError

__all__ = ["broadcast_shape", "is_scalar", "raise_numpy_error", "scalar_as", "scalar_result_dtype"]


def is_scalar(value) -> bool:
    """Whether ``value`` is a scalar operand (a Python or NumPy number, or a 0-d array).

    Parameters
    ----------
    value : object
        An operand as the caller passed it.

    Returns
    -------
    bool
    """
    return isinstance(value, (Number, np.generic)) or (
        isinstance(value, np.ndarray) and value.ndim == 0
    )


def scalar_result_dtype(dtype: np.dtype, scalar) -> np.dtype:
    """The dtype NumPy gives ``array * scalar`` for an array of ``dtype``.

    Parameters
    ----------
    dtype : numpy.dtype
        The array operand's dtype.
    scalar : number, numpy.generic or 0-d numpy.ndarray
        The scalar operand.

    Returns
    -------
    numpy.dtype
    """
    # Python scalars are "weak" in NumPy 2 (int8 array * 3 stays int8); NumPy scalars are not.
    value = (
        scalar
        if isinstance(scalar, np.generic) or not isinstance(scalar, np.ndarray)
        else scalar.dtype
    )
    return np.result_type(dtype, value)


def scalar_as(scalar, dtype: np.dtype) -> np.ndarray:
    """``scalar`` as a 0-d array of ``dtype``.

    Parameters
    ----------
    scalar : number, numpy.generic or 0-d numpy.ndarray
    dtype : numpy.dtype
        The result dtype (from :func:`scalar_result_dtype`).

    Returns
    -------
    numpy.ndarray

    Raises
    ------
    DistconvError
        A value out of range for an integer ``dtype``, with NumPy's message.
    """
    try:
        return np.asarray(scalar, dtype=dtype)
    except OverflowError as exc:  # NumPy refuses int8 array * 1000 the same way
        raise DistconvError(str(exc)) from None


def broadcast_shape(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape :func:`numpy.multiply` gives operands of these shapes (tuples of int).

    Shapes that do not broadcast raise :class:`DistconvError` with NumPy's message.
    """
    try:
        return np.broadcast_shapes(a_shape, b_shape)
    except ValueError:
        raise_numpy_error(np.multiply, a_shape, b_shape)


def raise_numpy_error(ufunc, a_shape: tuple[int, ...], b_shape: tuple[int, ...]):
    """Raise NumPy's own message for shapes it refuses (checked on zero-stride stand-ins).

    Parameters
    ----------
    ufunc : callable
        The NumPy function whose message to give (:func:`numpy.multiply`, :func:`numpy.matmul`).
    a_shape, b_shape : tuple of int
        The refused shapes.

    Raises
    ------
    DistconvError
        Always: NumPy's message, or a generic one if NumPy accepts the shapes after all.
    """
    stand_in = np.empty((), dtype=np.float64)
    try:
        ufunc(np.broadcast_to(stand_in, a_shape), np.broadcast_to(stand_in, b_shape))
    except ValueError as exc:
        raise DistconvError(str(exc).strip()) from None
    raise DistconvError(f"{ufunc.__name__}: shapes {a_shape} and {b_shape} are not compatible")
