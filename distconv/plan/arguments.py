"""scipy.ndimage-style arguments checked and normalised: modes, methods, axes, origins, dtypes.

Each check raises the one-line error the CLI prints, so the API and the CLI refuse the same
things with the same words. The error is also the builtin scipy.ndimage raises for the same
mistake (see distconv/errors.py): RuntimeError for an unknown mode or an origin sequence of the
wrong length, TypeError for a float origin or an unknown dtype name, ValueError for an origin
outside the kernel or a repeated axis.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np

from distconv.errors import (
    DistconvError,
    DistconvRuntimeError,
    DistconvTypeError,
    WeightsRankError,
)

__all__ = [
    "CANONICAL_MODE",
    "METHODS",
    "MODES",
    "check_output_dtype",
    "check_weights",
    "check_weights_fit",
    "compute_dtype_for",
    "normalize_axes",
    "normalize_method",
    "normalize_mode",
    "normalize_origins",
    "output_dtype_for",
]


# scipy.ndimage mode → numpy.pad mode. For filters the grid-* names mean the same as their plain
# counterparts (they differ only for interpolation).
MODES: dict[str, str] = {
    "reflect": "symmetric",
    "grid-mirror": "symmetric",
    "mirror": "reflect",
    "nearest": "edge",
    "constant": "constant",
    "grid-constant": "constant",
    "wrap": "wrap",
    "grid-wrap": "wrap",
}


CANONICAL_MODE = {"grid-mirror": "reflect", "grid-constant": "constant", "grid-wrap": "wrap"}


METHODS = ("auto", "direct", "fft", "separable")


def normalize_mode(mode: str) -> str:
    """A scipy.ndimage boundary mode (one of :data:`MODES`) by its canonical name.

    Parameters
    ----------
    mode : str
        One of :data:`MODES`.

    Returns
    -------
    str
        The plain name for a ``grid-*`` alias, else ``mode``.

    Raises
    ------
    DistconvRuntimeError
        An unknown mode, or a sequence of modes (scipy.ndimage raises RuntimeError for both).
    """
    if not isinstance(mode, str):
        raise DistconvRuntimeError(
            f"mode must be one name, got {mode!r}; choose one of: {', '.join(MODES)}"
        )
    if mode not in MODES:
        raise DistconvRuntimeError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    return CANONICAL_MODE.get(mode, mode)


def normalize_method(method: str) -> str:
    """A correlation method, checked to be one of :data:`METHODS`."""
    return _one_of(method, METHODS, "method")


def _one_of(value: str, choices, what: str) -> str:
    if value not in choices:
        raise DistconvError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
    return value


def compute_dtype_for(dtype: np.dtype) -> np.dtype:
    """The compute dtype for an input of ``dtype``; refuses complex or non-numeric input.

    Raises
    ------
    DistconvRuntimeError
        Complex or non-numeric input (scipy.ndimage's RuntimeError for unsupported array types).
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        raise DistconvRuntimeError(
            f"complex input ({dtype}) is not supported; filter the real and "
            "imaginary parts separately"
        )
    if dtype.kind not in "biuf":
        raise DistconvRuntimeError(f"input dtype {dtype} is not numeric")
    if dtype == np.float64 or (dtype.kind in "iu" and dtype.itemsize == 8):
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def check_weights(weights) -> np.ndarray:
    """Return weights as a float64 array, refusing what cannot be a filter kernel.

    Raises
    ------
    DistconvError
        Non-real, empty or non-finite weights.
    WeightsRankError
        0-d weights (their rank cannot match any input's).
    """
    array = np.asarray(weights)
    if array.dtype.kind not in "biuf":
        raise DistconvError(f"weights must be real numbers, got dtype {array.dtype}")
    if array.size == 0:
        raise DistconvError(f"weights are empty (shape {array.shape})")
    if array.ndim == 0:
        raise WeightsRankError("weights must have at least one dimension")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise DistconvError("weights contain NaN or infinity")
    return array


def normalize_axes(axes, weights_ndim: int, input_ndim: int) -> tuple[int, ...]:
    """The input axes (non-negative) that the weights' axes filter, in the weights' order.

    Parameters
    ----------
    axes : int, sequence of int or None
        None: every input axis (the weights must have the input's ``ndim``).
    weights_ndim, input_ndim : int

    Returns
    -------
    tuple of int
        Non-negative axes.

    Raises
    ------
    DistconvError
        Out-of-range or repeated axes (a ValueError, as scipy.ndimage's).
    DistconvTypeError
        An axis that is not an integer.
    WeightsRankError
        Weights whose rank differs from the input's (no ``axes``) or from ``len(axes)``.
    """
    if axes is None:
        if weights_ndim != input_ndim:
            raise WeightsRankError(
                f"weights have {weights_ndim} dimension(s) but the input has {input_ndim}; "
                f"pass axes= (--axes) to name the {weights_ndim} input axes to filter"
            )
        return tuple(range(input_ndim))
    if isinstance(axes, (int, np.integer)):
        axes = (int(axes),)
    normalized = []
    for axis in axes:
        axis = _integer(axis, "axis")
        if not -input_ndim <= axis < input_ndim:
            raise DistconvError(f"axis {axis} is out of range for a {input_ndim}-D input")
        normalized.append(axis % input_ndim)
    if len(set(normalized)) != len(normalized):
        raise DistconvError(f"axes {tuple(axes)} repeat an axis")
    if len(normalized) != weights_ndim:
        raise WeightsRankError(
            f"axes {tuple(axes)} name {len(normalized)} axis/axes but the weights have "
            f"{weights_ndim} dimension(s)"
        )
    return tuple(normalized)


def normalize_origins(origin, shape: Sequence[int]) -> tuple[int, ...]:
    """Origins (ints) per weights axis, checked against scipy.ndimage's allowed range.

    Parameters
    ----------
    origin : int or sequence of int
        One origin for every axis, or one per weights axis.
    shape : sequence of int
        The weights' shape.

    Returns
    -------
    tuple of int

    Raises
    ------
    DistconvError
        An origin outside the kernel (a ValueError, as scipy.ndimage's).
    DistconvTypeError
        An origin that is not an integer: a float (even 1.0), complex, bool or string.
    DistconvRuntimeError
        A sequence of origins whose length is not the weights' rank.
    """
    if isinstance(origin, (str, bytes)) or not np.iterable(origin):  # scipy's test for one
        origins = [origin] * len(shape)
    else:
        origins = list(origin)
        if len(origins) != len(shape):
            raise DistconvRuntimeError(
                f"origin has {len(origins)} value(s) but the weights have {len(shape)} axes"
            )
    result = []
    for value, size in zip(origins, shape):
        value = _integer(value, "origin")
        if not -(size // 2) <= value <= (size - 1) // 2:
            raise DistconvError(
                f"invalid origin {value} for a kernel of size {size}: "
                f"must be between {-(size // 2)} and {(size - 1) // 2}"
            )
        result.append(value)
    return tuple(result)


def _integer(value, what: str) -> int:
    """An integer argument as scipy.ndimage takes it: ints and NumPy integers, nothing else."""
    if isinstance(value, (bool, np.bool_)):
        raise DistconvTypeError(f"{what} {value!r} is not an integer")
    try:
        return operator.index(value)
    except TypeError:
        raise DistconvTypeError(f"{what} {value!r} is not an integer") from None


def output_dtype_for(dtype, input_dtype) -> np.dtype:
    """The output dtype, as scipy.ndimage's: ``dtype`` when given, else the input's dtype.

    Parameters
    ----------
    dtype : dtype-like or None
        The requested output dtype (scipy.ndimage's ``output``).
    input_dtype : dtype-like
        The input's dtype.

    Returns
    -------
    numpy.dtype

    Raises
    ------
    DistconvTypeError, DistconvRuntimeError
        As :func:`check_output_dtype`.
    """
    out = check_output_dtype(dtype)
    return np.dtype(input_dtype) if out is None else out


def check_output_dtype(dtype) -> np.dtype | None:
    """Refuse an output a filter cannot write: an array, an unknown name, complex, not numeric.

    Results are lazy, so ``output`` names a dtype; scipy.ndimage's other form (an array to
    fill) is refused with a hint.

    Parameters
    ----------
    dtype : dtype-like, optional
        The requested output dtype; None asks for the default (the input's dtype).

    Returns
    -------
    numpy.dtype or None
        The dtype (bool, integer or float), or None when none was requested.

    Raises
    ------
    DistconvTypeError
        An array instead of a dtype, or an unknown dtype name (scipy.ndimage's TypeError).
    DistconvRuntimeError
        A dtype that is not bool, integer or float (scipy.ndimage's RuntimeError).
    """
    if dtype is None:
        return None
    if not isinstance(dtype, (np.dtype, type, str)) and (
        hasattr(dtype, "__array__") or hasattr(dtype, "__array_function__")
    ):
        raise DistconvTypeError(
            f"output must be a dtype or its name, not {type(dtype).__name__}: distconv's "
            "results are lazy dask arrays; pass output=array.dtype, then dc.save(result, path) "
            "or array[...] = result.compute()"
        )
    try:
        out = np.dtype(dtype)
    except (TypeError, ValueError):
        raise DistconvTypeError(f"unknown dtype {dtype!r}") from None
    if out.kind not in "biuf":
        raise DistconvRuntimeError(
            f"output dtype {out} is not supported; use a bool, integer or float type"
        )
    return out


def check_weights_fit(
    weights_shape: Sequence[int],
    input_shape: Sequence[int],
    axes: int | Sequence[int] | None = None,
) -> None:
    """Refuse weights larger than the input on a filtered axis (often INPUT and WEIGHTS swapped).

    The ``distconv`` command applies this rule; :func:`plan_correlation` does not, because
    scipy.ndimage (and so :func:`distconv.convolve`) accepts such weights and extends the input
    by its boundary mode. On the command line it is a mistake, and the halo would make every
    chunk the whole axis.

    ``axes`` are the input axes the weights' axes filter (default: all, in order); when their
    count does not match the weights nothing is checked here (the planner reports that). The
    error names the first axis, as given, on which the weights are larger than the input.
    """
    ndim = len(input_shape)
    if axes is None:
        filtered = list(range(ndim))
    elif isinstance(axes, (int, np.integer)):
        filtered = [int(axes)]
    else:
        filtered = [int(axis) for axis in axes]
    if len(weights_shape) != len(filtered):
        return
    for axis, size in zip(filtered, weights_shape):
        if -ndim <= axis < ndim and size > input_shape[axis]:
            raise DistconvError(
                f"the weights are larger than the input on axis {axis} "
                f"({size} > {input_shape[axis]}); are INPUT and WEIGHTS "
                "swapped?"
            )
