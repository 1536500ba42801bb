"""Correlation and convolution graphs: haloed blocks (:mod:`distconv.ops.halo`), then the engine.

Each task receives its chunk with the neighbours' halo and, at the true array edges, the
boundary mode's padding already in place; ``wrap`` on an axis with several chunks takes the halo
from the chunk at the other end.

Integer output is a saturating cast of the float result, registered with
:func:`distconv.provenance.remember_saturating_cast` so that :func:`distconv.save` can cast,
count the clipped samples and write in one step.
"""

from __future__ import annotations

from collections.abc import Sequence

import dask.array as da
import numpy as np

from distconv import kernels
from distconv.axes import resolve_axes
from distconv.backend import array_module, cast_output, is_gpu_array
from distconv.clusters.resources import Resources
from distconv.config import get_default
from distconv.errors import DistconvTypeError
from distconv.io import as_dask_array
from distconv.ops.halo import exchange_halos
from distconv.ops.tiling import as_tiles, tile_plan_for
from distconv.plan import METHOD_OPS, CorrelationPlan, check_output_dtype, plan_correlation
from distconv.plan.tiles import TilePlan
from distconv.provenance import remember_provenance, remember_saturating_cast
from distconv.reading import region_reader
from distconv.weights import weights_digest


def _scipy_filter(convolution: bool, doc: str):
    """Make :func:`correlate` or :func:`convolve`, which share scipy.ndimage's signature.

    One definition of the signature for both; each result is a plain module-level function
    (its own name, qualname and docstring, pickled by reference).
    """

    def function(
        input,
        weights,
        output=None,
        mode: str = "reflect",
        cval: float = 0.0,
        origin=0,
        *,
        axes: Sequence[int | str] | None = None,
        method: str | None = None,
        engine: str | None = None,
        dtype=None,
    ) -> da.Array:
        output = output_dtype(output, dtype)
        return _filter(
            input, weights, mode, cval, origin, axes, method, engine, output, convolution
        )

    function.__name__ = function.__qualname__ = "convolve" if convolution else "correlate"
    function.__doc__ = doc
    return function


correlate = _scipy_filter(
    False,
    """Multidimensional correlation, as :func:`scipy.ndimage.correlate`, chunk by chunk.

    Parameters
    ----------
    input : str, zarr.Array, dask.array.Array or numpy.ndarray
        The image. A path is opened with :func:`distconv.open`.
    weights : array_like
        The kernel, with ``input.ndim`` dimensions or ``len(axes)``.
    output : dtype or str, optional
        The output dtype (scipy.ndimage's ``output``); default: the input's dtype. Results are
        lazy, so an array to fill is refused (``TypeError``). Integer output truncates toward
        zero as scipy's does, but saturates where scipy wraps (600 → 255 in uint8, not 88);
        :func:`distconv.save` counts the clipped samples. bool output is ``|value| >= 1``
        (scipy casts through an integer).
    mode : {'reflect', 'constant', 'nearest', 'mirror', 'wrap', 'grid-mirror', \
'grid-constant', 'grid-wrap'}
        How the input is extended beyond its edges (scipy.ndimage's meaning).
    cval : float
        Fill value for ``mode='constant'``.
    origin : int or sequence of int
        Shift of the kernel's centre, per filtered axis.
    axes : sequence of int or str, optional
        Input axes the weights' axes filter; needed when the weights have fewer dimensions.
        An image read from OME-Zarr or TIFF takes axis names (``("y", "x")``), and by default
        weights with fewer dimensions filter its last space axes.
    method : {'auto', 'direct', 'fft', 'separable'}, optional
        Default from config ``distconv.method`` ("auto": a per-chunk cost model picks).
    engine : str, optional
        Default from config ``distconv.engine`` ("auto"). See ``distconv engines``.
    dtype : dtype or str, optional
        Another name for ``output`` (an error if both are given and differ).

    Returns
    -------
    dask.array.Array
        Lazy result chunked in tiles of whole stored chunks (:mod:`distconv.plan.tiles`;
        tiles thinner than the halo are merged first); :func:`distconv.save` writes it in the
        input's stored chunks. Computed in float32 (float64 for float64 and 64-bit integer
        input), then cast.

    Raises
    ------
    DistconvError
        Invalid arguments, each also the builtin scipy.ndimage raises for the same mistake:
        RuntimeError (unknown mode, origin sequence of the wrong length, weights of the wrong
        rank, unsupported output dtype), TypeError (float origin, unknown dtype name, an array
        as ``output``), ValueError (origin outside the kernel, repeated or out-of-range axes).
    """,
)
convolve = _scipy_filter(
    True,
    """Multidimensional convolution, as :func:`scipy.ndimage.convolve`, chunk by chunk.

    Same parameters, output dtype rule and errors as :func:`correlate`; the weights are
    flipped on every filtered axis and the origin follows scipy.ndimage's rule for even-sized
    axes.
    """,
)


def output_dtype(output, dtype):
    """``output`` and its second name ``dtype``: one of them, or both the same dtype."""
    if dtype is None or output is None:
        return dtype if output is None else output
    if check_output_dtype(output) != check_output_dtype(dtype):
        raise DistconvTypeError(
            f"output={output!r} and dtype={dtype!r} disagree; dtype is another name for "
            "output: give one"
        )
    return output


def correlation_plan(
    x: da.Array, weights, mode, cval, origin, axes, method, engine, dtype, convolution: bool
) -> CorrelationPlan:
    """The :class:`CorrelationPlan` of :func:`correlate` (or :func:`convolve`) on the dask array
    ``x``; ``method`` and ``engine`` default to the config's, ``dtype`` is the output dtype;
    ``axes`` may name an image's axes (``"y"``, ``"x"``)."""
    axes = resolve_axes(axes, x, np.ndim(weights))
    return plan_correlation(
        x.shape,
        x.dtype,
        weights,
        mode=mode,
        cval=cval,
        origin=origin,
        axes=axes,
        method=method or get_default("method"),
        engine=engine or get_default("engine"),
        dtype=dtype,
        convolution=convolution,
        gpu_chunks=is_gpu_array(x),
    )


def _filter(
    input, weights, mode, cval, origin, axes, method, engine, dtype, convolution: bool
) -> da.Array:
    x = as_dask_array(input)
    axes = resolve_axes(axes, x, np.ndim(weights))  # names ("y", "x") of an image's axes
    plan = correlation_plan(
        x, weights, mode, cval, origin, axes, method, engine, dtype, convolution
    )
    tiles = correlation_tiles(x, plan)
    y = correlate_with_plan(x, plan, tiles)
    largest = [max(c) for c in y.chunks]
    method_used = plan.method_for(largest)
    return remember_provenance(
        y,
        {
            "operation": "convolve" if convolution else "correlate",
            "parameters": {
                "mode": plan.mode,
                "cval": plan.cval,
                "origin": origin,
                "axes": None if axes is None else list(axes),
                "dtype": str(plan.out_dtype),
                "method": plan.method,
                "engine": engine or get_default("engine"),
            },
            "weights_sha256": weights_digest(np.asarray(weights, dtype=np.float64)),
            "weights_shape": list(np.shape(weights)),
            "method": method_used,
            "engine": plan.engines[method_used],
            "input_shape": list(x.shape),
            "input_dtype": str(x.dtype),
            "plan": tiles.summary(),
        },
    )


def correlation_tiles(
    x: da.Array, plan: CorrelationPlan, resources: Resources | None = None
) -> TilePlan:
    """The tiles a correlation of ``x`` runs on (:mod:`distconv.plan.tiles`).

    Parameters
    ----------
    x : dask.array.Array
        The input, as :func:`distconv.open` returned it (or any dask array).
    plan : CorrelationPlan
    resources : Resources, optional
        Threads and per-task memory (default: the current client's, else this machine's).

    Returns
    -------
    TilePlan
    """
    return tile_plan_for(
        x,
        depth=plan.depth,
        compute_dtype=plan.compute_dtype,
        out_dtype=plan.out_dtype,
        method_for=plan.method_for,
        resources=resources,
    )


def correlate_with_plan(
    x: da.Array, plan: CorrelationPlan, tiles: TilePlan | None = None
) -> da.Array:
    """Build the graph for a resolved plan: tiles, merge thin ones, exchange halos, map blocks.

    ``tiles`` defaults to :func:`correlation_tiles`; the result is chunked in tiles and is
    written in the input's stored chunks by :func:`distconv.save`. Integer output is one more
    (fused) layer: the float result, then a saturating cast that :func:`distconv.save` replaces
    by its cast-count-and-write of whole units.
    """
    tiles = tiles or correlation_tiles(x, plan)
    x = as_tiles(x, tiles)
    x, haloed = exchange_halos(
        x,
        plan.depth,
        plan.pad_mode,
        plan.cval,
        plan.compute_dtype,
        strips_from=region_reader(x) if tiles.halo_source == "store" else None,
    )
    xp = array_module(x._meta)
    saturates = plan.out_dtype.kind in "iu"
    result_dtype = plan.compute_dtype if saturates else plan.out_dtype
    y = haloed.map_blocks(
        correlate_block,
        plan=plan,
        dtype_out=result_dtype,
        chunks=x.chunks,
        dtype=result_dtype,
        meta=xp.empty((0,) * x.ndim, dtype=result_dtype),
        token="distconv-correlate",
    )
    if not saturates:
        return y
    cast = y.map_blocks(
        cast_output,
        plan.out_dtype,
        dtype=plan.out_dtype,
        meta=xp.empty((0,) * x.ndim, dtype=plan.out_dtype),
        token="distconv-saturate",
    )
    return remember_saturating_cast(cast, y)


def correlate_block(block, plan: CorrelationPlan, dtype_out=None):
    """Per-chunk function: cut the window the kernel needs from a haloed block, run the engine.

    The block arrives in ``plan.compute_dtype`` (cast while :func:`exchange_halos` assembles it)
    and leaves in ``dtype_out`` (default ``plan.out_dtype``).
    """
    # Every filtered axis carries `depth` samples on both sides; keep what the kernel reads.
    window = tuple(
        slice(depth - before, size - (depth - after))
        for size, depth, before, after in zip(block.shape, plan.depth, plan.before, plan.after)
    )
    block = block[window]
    out_shape = [size - w + 1 for size, w in zip(block.shape, plan.weights.shape)]
    method = plan.method_for(out_shape)
    function = kernels.get_op(plan.engines[method], METHOD_OPS[method])
    if method == "separable":
        out = function(block, list(plan.factors))
    else:
        out = function(block, plan.weights)
    return cast_output(out, plan.out_dtype if dtype_out is None else dtype_out)


__all__ = [
    "convolve",
    "correlate",
    "correlate_block",
    "correlate_with_plan",
    "correlation_plan",
    "correlation_tiles",
    "output_dtype",
]
