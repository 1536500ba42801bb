"""scipy.ndimage-style arguments checked and normalised: modes, methods, axes, origins, dtypes.

Each check raises :class:`~distconv.errors.DistconvError` with the one-line error the CLI
prints, so the API and the CLI refuse the same things with the same words.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from distconv.errors import DistconvError

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

    The plain name stands for a ``grid-*`` alias; any other known mode is returned as given.
    """
    return CANONICAL_MODE.get(_one_of(mode, MODES, "mode"), mode)


def normalize_method(method: str) -> str:
    """A correlation method, checked to be one of :data:`METHODS`."""
    return _one_of(method, METHODS, "method")


def _one_of(value: str, choices, what: str) -> str:
    if value not in choices:
        raise DistconvError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
    return value


def compute_dtype_for(dtype: np.dtype) -> np.dtype:
    """The compute dtype for an input of ``dtype``; refuses complex or non-numeric input.

    float64 stays float64 (and 64-bit integers need it); everything else computes in float32.
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        raise DistconvError(
            f"complex input ({dtype}) is not supported; filter the real and "
            "imaginary parts separately"
        )
    if dtype.kind not in "biuf":
        raise DistconvError(f"input dtype {dtype} is not numeric")
    if dtype == np.float64 or (dtype.kind in "iu" and dtype.itemsize == 8):
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def check_weights(weights) -> np.ndarray:
    """Weights (array_like) as a float64 array, refusing what cannot be a filter kernel:
    non-real, empty, 0-d or non-finite weights."""
    array = np.asarray(weights)
    if array.dtype.kind not in "biuf":
        raise DistconvError(f"weights must be real numbers, got dtype {array.dtype}")
    if array.size == 0:
        raise DistconvError(f"weights are empty (shape {array.shape})")
    if array.ndim == 0:
        raise DistconvError("weights must have at least one dimension")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise DistconvError("weights contain NaN or infinity")
    return array


def normalize_axes(axes, weights_ndim: int, input_ndim: int) -> tuple[int, ...]:
    """The input axes (non-negative) that the weights' axes filter, in the weights' order.

    ``axes`` is an int, a sequence of int, or None: every input axis (the weights must then have
    the input's ``ndim``). Refuses out-of-range or repeated axes, or a count that does not match
    the weights.
    """
    if axes is None:
        if weights_ndim != input_ndim:
            raise DistconvError(
                f"weights have {weights_ndim} dimension(s) but the input has {input_ndim}; "
                f"pass axes= (--axes) to name the {weights_ndim} input axes to filter"
            )
        return tuple(range(input_ndim))
    if isinstance(axes, (int, np.integer)):
        axes = (int(axes),)
    normalized = []
    for axis in axes:
        if not -input_ndim <= int(axis) < input_ndim:
            raise DistconvError(f"axis {axis} is out of range for a {input_ndim}-D input")
        normalized.append(int(axis) % input_ndim)
    if len(set(normalized)) != len(normalized):
        raise DistconvError(f"axes {tuple(axes)} repeat an axis")
    if len(normalized) != weights_ndim:
        raise DistconvError(
            f"axes {tuple(axes)} name {len(normalized)} axis/axes but the weights have "
            f"{weights_ndim} dimension(s)"
        )
    return tuple(normalized)


def normalize_origins(origin, shape: Sequence[int]) -> tuple[int, ...]:
    """Origins (ints) per weights axis, checked against scipy.ndimage's allowed range.

    ``origin`` is one int for every axis or one per axis of the weights, whose shape is
    ``shape``. Refuses a non-integer or out-of-range origin, or a count that does not match the
    weights.
    """
    if np.ndim(origin) == 0:
        origins = [origin] * len(shape)
    else:
        origins = list(origin)
        if len(origins) != len(shape):
            raise DistconvError(
                f"origin has {len(origins)} value(s) but the weights have {len(shape)} axes"
            )
    result = []
    for value, size in zip(origins, shape):
        if isinstance(value, (bool, np.bool_)) or float(value) != int(value):
            raise DistconvError(f"origin {value!r} is not an integer")
        value = int(value)
        if not -(size // 2) <= value <= (size - 1) // 2:
            raise DistconvError(
                f"invalid origin {value} for a kernel of size {size}: "
                f"must be between {-(size // 2)} and {(size - 1) // 2}"
            )
        result.append(value)
    return tuple(result)


def output_dtype_for(dtype, compute_dtype: np.dtype) -> np.dtype:
    """The output dtype: ``dtype`` (an integer, bool or float type) when given, else
    ``compute_dtype``; refuses an unknown or non-numeric ``dtype``."""
    return compute_dtype if dtype is None else _numeric_dtype(dtype, "biuf")


def check_output_dtype(dtype) -> np.dtype | None:
    """The requested output dtype, or None when none was requested (the compute dtype then).

    Refuses what a filter cannot write: an unknown dtype name, or a dtype that is neither an
    integer nor a float type (bool, complex, not numeric).
    """
    return None if dtype is None else _numeric_dtype(dtype, "iuf")


def _numeric_dtype(dtype, kinds: str) -> np.dtype:
    try:
        out = np.dtype(dtype)
    except TypeError:
        raise DistconvError(f"unknown dtype {dtype!r}") from None
    if out.kind not in kinds:
        raise DistconvError(f"output dtype {out} is not supported; use an integer or float type")
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
