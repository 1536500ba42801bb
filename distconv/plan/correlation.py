"""A correlation planned before its graph exists: argument normalisation, halo, method, dtypes.

Everything here is pure and cheap; :mod:`distconv.ops.convolve` turns a :class:`CorrelationPlan`
into a Dask graph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from distconv import kernels
from distconv.errors import DistconvError, DistconvTypeError, EngineError
from distconv.plan.arguments import (
    MODES,
    check_weights,
    compute_dtype_for,
    normalize_axes,
    normalize_method,
    normalize_mode,
    normalize_origins,
    output_dtype_for,
)

__all__ = [
    "METHOD_OPS",
    "SEPARABLE_RTOL",
    "CorrelationPlan",
    "method_costs",
    "plan_correlation",
    "rank_one_factors",
]

METHOD_OPS = {
    "direct": "correlate_direct",
    "fft": "correlate_fft",
    "separable": "correlate_separable",
}
# Relative tolerance for a float32 rank-1 test of the weights (SVD reconstruction error).
SEPARABLE_RTOL = 1e-6


@dataclass(frozen=True)
class CorrelationPlan:
    """A correlation fully specified for the per-chunk function.

    ``weights`` is already flipped for a convolution and has the input's ``ndim`` (size 1 on
    axes that are not filtered); ``origins`` are correlation origins per input axis.
    """

    weights: np.ndarray
    origins: tuple[int, ...]
    mode: str
    cval: float
    compute_dtype: np.dtype
    out_dtype: np.dtype
    method: str
    engines: dict[str, str] = field(compare=False)  # method → the engine that runs it
    factors: tuple[np.ndarray | None, ...] | None = field(default=None, compare=False)

    @property
    def ndim(self) -> int:
        return self.weights.ndim

    @property
    def pad_mode(self) -> str:
        return MODES[self.mode]

    @property
    def before(self) -> tuple[int, ...]:
        """Samples needed before each output sample (the kernel's centre plus origin)."""
        return tuple(w // 2 + o for w, o in zip(self.weights.shape, self.origins))

    @property
    def after(self) -> tuple[int, ...]:
        return tuple(w - 1 - b for w, b in zip(self.weights.shape, self.before))

    @property
    def depth(self) -> tuple[int, ...]:
        """Symmetric halo depth per axis (what :func:`dask.array.overlap.overlap` adds)."""
        return tuple(max(b, a) for b, a in zip(self.before, self.after))

    def method_for(self, out_shape: Sequence[int]) -> str:
        """The method this plan uses for an output block of ``out_shape`` (resolves "auto")."""
        if self.method != "auto":
            return self.method
        costs = method_costs(self.weights, out_shape, self.engines)
        return min(costs, key=costs.get)


def rank_one_factors(weights: np.ndarray) -> tuple[np.ndarray | None, ...] | None:
    """Split ``weights`` into one 1-D factor per axis if it is an outer product, else None.

    Each mode unfolding of a rank-1 tensor has rank 1; its leading singular vector is the factor.
    The factors are accepted only if their outer product reproduces the weights.

    Parameters
    ----------
    weights : numpy.ndarray

    Returns
    -------
    tuple or None
        One 1-D factor per axis (None on size-1 axes), or None when the weights are not rank 1.
    """
    filtered = [a for a, size in enumerate(weights.shape) if size > 1]
    if not filtered:
        return None
    core = np.squeeze(weights, axis=tuple(a for a in range(weights.ndim) if a not in filtered))
    vectors = []
    for axis in range(core.ndim):
        unfolded = np.moveaxis(core, axis, 0).reshape(core.shape[axis], -1)
        u, s, _ = np.linalg.svd(unfolded, full_matrices=False)
        if s[0] == 0 or (len(s) > 1 and s[1] > SEPARABLE_RTOL * s[0]):
            return None
        vectors.append(u[:, 0])
    outer = vectors[0]
    for v in vectors[1:]:
        outer = np.multiply.outer(outer, v)
    scale = np.vdot(outer, core) / np.vdot(outer, outer)
    if not np.allclose(scale * outer, core, rtol=0, atol=SEPARABLE_RTOL * np.abs(core).max()):
        return None
    vectors[0] = vectors[0] * scale
    factors: list[np.ndarray | None] = [None] * weights.ndim
    for axis, vector in zip(filtered, vectors):
        factors[axis] = vector
    return tuple(factors)


def method_costs(
    weights: np.ndarray, out_shape: Sequence[int], engines: dict[str, str]
) -> dict[str, float]:
    """Estimated seconds per method for one output block (only the ratios matter).

    ``engines`` maps each candidate method to the engine that would run it; each engine's
    ``cost[method]`` (measured on this machine, see kernels/registry.py) is seconds per unit
    of work or a ``(seconds per output pixel, seconds per unit of work)`` pair.

    Parameters
    ----------
    weights : numpy.ndarray
        The plan's weights (the input's ``ndim``, size 1 on axes not filtered).
    out_shape : sequence of int
        The output block's shape.
    engines : dict
        Method → engine name.

    Returns
    -------
    dict
        Method → estimated seconds.
    """
    pixels = float(np.prod(out_shape))
    filtered = [a for a, size in enumerate(weights.shape) if size > 1]
    estimates: dict[str, float] = {}
    for method, engine in engines.items():
        cost = kernels.ENGINES[engine].cost  # the registry's: no engine is imported
        if method not in cost:
            cost = kernels.ENGINES["scipy"].cost
        if method == "direct":
            work = np.count_nonzero(weights) * pixels
        elif method == "separable":
            work = sum(weights.shape[a] for a in filtered) * pixels
        else:  # fft: forward and inverse transform of the haloed block
            padded = float(np.prod([out_shape[a] + weights.shape[a] - 1 for a in filtered] or [1]))
            rest = pixels / float(np.prod([out_shape[a] for a in filtered] or [1]))
            work = 2 * rest * padded * max(math.log2(padded), 1.0)
        per_pixel, per_unit = (
            cost[method] if isinstance(cost[method], tuple) else (0.0, cost[method])
        )
        estimates[method] = per_pixel * pixels + per_unit * work
    return estimates


def plan_correlation(
    input_shape: Sequence[int],
    input_dtype,
    weights,
    *,
    mode: str = "reflect",
    cval: float = 0.0,
    origin=0,
    axes=None,
    method: str = "auto",
    engine: str = "auto",
    dtype=None,
    convolution: bool = False,
    gpu_chunks: bool = False,
) -> CorrelationPlan:
    """Validate scipy.ndimage-style arguments and resolve them into a :class:`CorrelationPlan`.

    Parameters
    ----------
    input_shape : sequence of int
    input_dtype : dtype
    weights : array_like
        The filter kernel.
    mode, cval, origin, axes
        As for :func:`scipy.ndimage.correlate`.
    method : {"auto", "direct", "fft", "separable"}
    engine : str
        An engine name or "auto".
    dtype : dtype, optional
        Output dtype (default: the input's, as scipy.ndimage). The compute dtype is float32, or
        float64 for float64 and 64-bit integer input.
    convolution : bool
        Plan :func:`scipy.ndimage.convolve` instead (weights flipped, origins shifted).
    gpu_chunks : bool
        The chunks are CuPy arrays ("auto" then picks a GPU engine).

    Returns
    -------
    CorrelationPlan

    Raises
    ------
    DistconvError
        Invalid arguments; the subclasses are also the builtin scipy.ndimage raises for the
        same mistake (:mod:`distconv.errors`).
    EngineError
        No installed engine can run the plan.
    """
    ndim = len(input_shape)
    mode = normalize_mode(mode)
    method = normalize_method(method)
    weights = check_weights(weights)
    if ndim == 0 or 0 in tuple(input_shape):
        raise DistconvError(f"input is empty (shape {tuple(input_shape)})")
    compute_dtype = compute_dtype_for(input_dtype)
    out_dtype = output_dtype_for(dtype, input_dtype)
    axes = normalize_axes(axes, weights.ndim, ndim)
    origins = normalize_origins(origin, weights.shape)
    try:  # scipy.ndimage: TypeError ("must be real number"), for a string too
        if isinstance(cval, (str, bytes)):
            raise TypeError
        cval = float(cval)
    except (TypeError, ValueError):
        raise DistconvTypeError(f"cval {cval!r} is not a real number") from None

    if convolution:
        # scipy.ndimage.convolve: correlate with the flipped kernel, origin negated and shifted
        # by one on even-sized axes.
        weights = weights[(slice(None, None, -1),) * weights.ndim]
        origins = tuple(-o - (1 - size % 2) for o, size in zip(origins, weights.shape))

    full_shape = [1] * ndim
    full_origins = [0] * ndim
    for w_axis, in_axis in enumerate(axes):
        full_shape[in_axis] = weights.shape[w_axis]
        full_origins[in_axis] = origins[w_axis]
    # weights' axis i filters input axis axes[i]: order them as the input's axes, then add the
    # size-1 axes that are not filtered.
    full = np.transpose(weights, np.argsort(axes)).reshape(full_shape)
    full = np.ascontiguousarray(full, dtype=compute_dtype)

    factors = rank_one_factors(full.astype(np.float64))
    if factors is not None:
        factors = tuple(None if f is None else f.astype(compute_dtype) for f in factors)
    if method == "separable" and factors is None:
        raise DistconvError(
            "method 'separable' needs rank-1 weights (an outer product of 1-D "
            "kernels); these are not: use method 'direct' or 'fft'"
        )

    candidates = (
        [method]
        if method != "auto"
        else [m for m in METHOD_OPS if m != "separable" or factors is not None]
    )
    engines: dict[str, str] = {}
    for candidate in candidates:
        op = METHOD_OPS[candidate]
        if (
            method == "auto"
            and engine != "auto"
            and not kernels.supports(engine, op, ndim, compute_dtype)
        ):
            continue  # method="auto" only considers what the chosen engine can do
        engines[candidate] = kernels.resolve_engine(
            engine, op, ndim, compute_dtype, gpu_chunks=gpu_chunks
        )
    if not engines:
        raise EngineError(f"engine {engine!r} cannot correlate {ndim}-D {compute_dtype}")
    # Positional, in the dataclass's field order (each local is named after its field).
    return CorrelationPlan(
        full, tuple(full_origins), mode, cval, compute_dtype, out_dtype, method, engines, factors
    )
