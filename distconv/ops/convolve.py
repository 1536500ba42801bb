"""Correlation and convolution graphs: halo exchange with ``overlap``, edges padded per chunk.

The per-chunk function receives the block plus the halo from its neighbours. At the true array
edges (known from ``block_info``) it pads the block itself with the boundary mode, so the graph
needs no extra padded chunks; ``wrap`` on an axis with several chunks uses Dask's periodic halo
instead, because the values come from the other end of the array.
"""

from __future__ import annotations

from typing import Sequence

import dask.array as da
import numpy as np

from distconv import kernels
from distconv.backend import array_module, cast_output, is_gpu_array, to_device
from distconv.config import get_default
from distconv.io import as_dask_array, remember_provenance
from distconv.weights import weights_digest
from distconv.plan import METHOD_OPS, CorrelationPlan, merge_small_chunks, plan_correlation


def correlate(input, weights, mode: str = "reflect", cval: float = 0.0, origin=0, *,
              axes: Sequence[int] | None = None, method: str | None = None,
              engine: str | None = None, dtype=None) -> da.Array:
    """Multidimensional correlation, as :func:`scipy.ndimage.correlate`, chunk by chunk.

    Parameters
    ----------
    input : str, zarr.Array, dask.array.Array or numpy.ndarray
        The image. A path is opened with :func:`distconv.open`.
    weights : array_like
        The kernel, with ``input.ndim`` dimensions or ``len(axes)``.
    mode : {'reflect', 'constant', 'nearest', 'mirror', 'wrap', 'grid-mirror', \
'grid-constant', 'grid-wrap'}
        How the input is extended beyond its edges (scipy.ndimage's meaning).
    cval : float
        Fill value for ``mode='constant'``.
    origin : int or sequence of int
        Shift of the kernel's centre, per filtered axis.
    axes : sequence of int, optional
        Input axes the weights' axes filter; needed when the weights have fewer dimensions.
    method : {'auto', 'direct', 'fft', 'separable'}, optional
        Default from config ``distconv.method`` ("auto": a per-chunk cost model picks).
    engine : str, optional
        Default from config ``distconv.engine`` ("auto"). See ``distconv engines``.
    dtype : dtype, optional
        Output dtype; default float32 (float64 for float64/int64 input). Integer output is
        rounded and clipped.

    Returns
    -------
    dask.array.Array
        Lazy result chunked like the input (chunks thinner than the halo are merged first).
    """
    return _filter(input, weights, mode, cval, origin, axes, method, engine, dtype, False)


def convolve(input, weights, mode: str = "reflect", cval: float = 0.0, origin=0, *,
             axes: Sequence[int] | None = None, method: str | None = None,
             engine: str | None = None, dtype=None) -> da.Array:
    """Multidimensional convolution, as :func:`scipy.ndimage.convolve`, chunk by chunk.

    Same parameters as :func:`correlate`; the weights are flipped on every filtered axis and the
    origin follows scipy.ndimage's rule for even-sized axes.
    """
    return _filter(input, weights, mode, cval, origin, axes, method, engine, dtype, True)


def _filter(input, weights, mode, cval, origin, axes, method, engine, dtype,
            convolution: bool) -> da.Array:
    x = as_dask_array(input)
    plan = plan_correlation(
        x.shape, x.dtype, weights, mode=mode, cval=cval, origin=origin, axes=axes,
        method=method or get_default("method"), engine=engine or get_default("engine"),
        dtype=dtype, convolution=convolution, gpu_chunks=is_gpu_array(x),
    )
    if not is_gpu_array(x) and any(kernels.ENGINES[e].device == "gpu"
                                   for e in plan.engines.values()):
        x = to_device(x)  # a GPU engine on host chunks: upload each chunk once, here
    y = correlate_with_plan(x, plan)
    largest = [max(c) for c in y.chunks]
    method_used = plan.method_for(largest)
    return remember_provenance(y, {
        "operation": "convolve" if convolution else "correlate",
        "parameters": {
            "mode": plan.mode, "cval": plan.cval, "origin": origin,
            "axes": None if axes is None else list(axes), "dtype": str(plan.out_dtype),
            "method": plan.method, "engine": engine or get_default("engine"),
        },
        "weights_sha256": weights_digest(np.asarray(weights, dtype=np.float64)),
        "weights_shape": list(np.shape(weights)),
        "method": method_used,
        "engine": plan.engines[method_used],
        "input_shape": list(x.shape),
        "input_dtype": str(x.dtype),
    })


def correlate_with_plan(x: da.Array, plan: CorrelationPlan) -> da.Array:
    """Build the graph for a resolved plan: merge thin chunks, exchange halos, map blocks."""
    x, haloed, periodic = exchange_halos(x, plan.depth, plan.mode == "wrap")
    chunks = x.chunks
    meta = array_module(x._meta).empty((0,) * x.ndim, dtype=plan.out_dtype)
    return haloed.map_blocks(
        correlate_block, plan=plan, periodic=periodic, chunks=chunks,
        dtype=plan.out_dtype, meta=meta, token="distconv-correlate",
    )


def correlate_block(block, plan: CorrelationPlan, periodic: tuple[bool, ...], block_info=None):
    """Per-chunk function: pad true edges, cut the window the kernel needs, run the engine."""
    block = block.astype(plan.compute_dtype, copy=False)
    block = pad_true_edges(block, plan.depth, periodic, plan.pad_mode, plan.cval, block_info)

    # Every filtered axis now carries `depth` samples on both sides; keep what the kernel reads.
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
    return cast_output(out, plan.out_dtype)


def exchange_halos(x: da.Array, depth: Sequence[int], wrap: bool
                   ) -> tuple[da.Array, da.Array, tuple[bool, ...]]:
    """Give every block ``depth`` samples of its neighbours (true array edges are left alone).

    Chunks thinner than the halo are merged first. Only axes with neighbours exchange halos; a
    single-chunk axis, and every true edge, is padded inside the block by
    :func:`pad_true_edges`. ``wrap`` needs values from the other end of the array, so it uses
    Dask's periodic halo on axes with several chunks.

    Returns
    -------
    (merged, haloed, periodic)
        ``x`` with thin chunks merged, the haloed array (blocks ``2 * depth`` larger, except at
        true edges), and per axis whether the halo was periodic.
    """
    chunks = tuple(merge_small_chunks(c, d) for c, d in zip(x.chunks, depth))
    if chunks != x.chunks:
        x = x.rechunk(chunks)
    periodic = tuple(wrap and d > 0 and len(c) > 1 for c, d in zip(chunks, depth))
    exchange = {axis: d if len(c) > 1 else 0 for axis, (c, d) in enumerate(zip(chunks, depth))}
    haloed = x
    if any(exchange.values()):
        boundary = {axis: "periodic" if periodic[axis] else "none" for axis in range(x.ndim)}
        haloed = da.overlap.overlap(x, depth=exchange, boundary=boundary)
    return x, haloed, periodic


def pad_true_edges(block, depth: Sequence[int], periodic: Sequence[bool], pad_mode: str,
                   cval: float, block_info) -> object:
    """Pad a block of :func:`exchange_halos` at the true array edges with ``numpy.pad``'s mode.

    ``block_info`` (Dask's, for the haloed array) tells which sides are true edges; afterwards
    every axis carries ``depth`` samples on both sides.
    """
    location = block_info[0]["chunk-location"]
    count = block_info[0]["num-chunks"]
    pad = [
        (0, 0) if d == 0 or periodic[axis] else
        (d if location[axis] == 0 else 0, d if location[axis] == count[axis] - 1 else 0)
        for axis, d in enumerate(depth)
    ]
    if any(p != (0, 0) for p in pad):
        extra = {"constant_values": cval} if pad_mode == "constant" else {}
        block = array_module(block).pad(block, pad, mode=pad_mode, **extra)
    return block
