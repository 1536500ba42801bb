"""Your own per-chunk function over arrays larger than memory: :func:`map_chunks`.

The graph is the one :mod:`distconv.ops.convolve` builds: each block gets the halo of its
neighbouring chunks and, at the true array edges, the boundary's padding
(:func:`~distconv.ops.halo.exchange_halos`), so the function always sees a block with ``depth``
extra samples on every side, as with Dask's ``map_overlap``.

The engine decides how the function is called on one chunk:

``numpy`` (also ``scipy``, ``numba``)
    directly, on NumPy blocks (a Numba ``@njit`` function is just a function);
``tensorflow``
    as a ``tf.function`` traced once per worker and input rank/dtype
    (:func:`distconv.kernels.tensorflow.map_chunk`);
``cupy`` / ``numba-cuda``
    on the GPU: chunks are uploaded once before the halo exchange (when CuPy is there), the
    function gets CuPy / Numba device arrays, and the result comes back to host memory unless
    the input already lived on the GPU.

The output's dtype and chunk shapes come from ``dtype=`` and ``chunks=``, or from one call of the
function on a tiny probe block. An exception raised by the function reaches the caller as a
:class:`ChunkError` naming the chunk, chained from the original (its traceback included).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from numbers import Number

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize

from distconv import kernels
from distconv.backend import is_gpu_array, to_numpy
from distconv.errors import ChunkError, DistconvError
from distconv.io import as_dask_array
from distconv.ops.halo import exchange_halos, normalize_boundary, normalize_depth
from distconv.ops.tiling import as_tiles, same_tiles, store_grid, tile_plan_for
from distconv.provenance import layout_of, remember_layout, remember_provenance
from distconv.reading import region_reader

#: Engines map_chunks can call a function with (the registry's); the first three call it
#: directly.
CHUNK_ENGINES = kernels.CHUNK_ENGINES
#: Largest side of a probe block on an axis with several chunks.
PROBE_SIDE = 8


def map_chunks(
    fn: Callable,
    *arrays,
    depth=0,
    boundary="reflect",
    cval: float = 0.0,
    engine: str = "numpy",
    dtype=None,
    chunks=None,
    drop_axis=None,
    new_axis=None,
    trim: bool = True,
    name: str | None = None,
    **kwargs,
) -> da.Array:
    """Apply ``fn`` to every chunk of ``arrays`` (with halos), on the engine of your choice.

    Parameters
    ----------
    fn : callable
        ``fn(block, [block2, ...], **kwargs) -> block``: NumPy arrays (``numpy``), tensors
        (``tensorflow``), CuPy arrays (``cupy``) or Numba device arrays (``numba-cuda``).
    *arrays : str, zarr.Array, dask.array.Array or numpy.ndarray
        Inputs of equal shape; a path is opened with :func:`distconv.open`. Later arrays are
        rechunked like the first.
    depth : int, sequence of int or dict of {axis: int}
        Halo width per axis: each block gets ``depth`` samples of its neighbours on both sides.
    boundary : str or number
        How the array is extended beyond its edges for the halo: scipy.ndimage's modes
        (``reflect``, ``mirror``, ``nearest``, ``constant`` with ``cval``, ``wrap`` and the
        ``grid-*`` aliases), ``"periodic"`` (= ``wrap``), a number (constant), or ``"none"``
        (edge blocks get no halo on their outer side), as in :func:`dask.array.map_overlap`.
    cval : float
        Fill value for ``boundary="constant"``.
    engine : {'numpy', 'scipy', 'numba', 'tensorflow', 'cupy', 'numba-cuda'}
        What ``fn`` is written in (see the module docstring).
    dtype : dtype, optional
        Output dtype; with ``chunks`` it skips the probe.
    chunks : tuple, optional
        Output chunks, as for :func:`dask.array.map_blocks` (after trimming); default: inferred.
    drop_axis, new_axis : int or sequence of int, optional
        Axes ``fn`` removes or adds, as for :func:`dask.array.map_blocks`.
    trim : bool
        Cut ``depth`` from every side of the result (where a halo was added). With
        ``trim=False`` the function returns either the core block (it consumed the halo, e.g.
        a ``VALID`` convolution) or the haloed block, and the chunks follow.
    name : str, optional
        Prefix of the Dask key names (default: the function's name).
    **kwargs
        Constant keyword arguments for ``fn`` (fixed at trace time for TensorFlow).

    Returns
    -------
    dask.array.Array
        Lazy result; :func:`distconv.save` writes it with provenance.

    Raises
    ------
    ChunkError
        When computing, if ``fn`` raises on a chunk (the cause is the original exception).
    """
    if not callable(fn):
        raise DistconvError(f"map_chunks needs a function, got {type(fn).__name__}")
    if not arrays:
        raise DistconvError("map_chunks needs at least one array")
    runner = kernels.chunk_runner(engine)
    xs = [as_dask_array(a) for a in arrays]
    first = xs[0]
    for i, other in enumerate(xs[1:], start=1):
        if other.shape != first.shape:
            raise DistconvError(
                f"map_chunks: array {i} has shape {other.shape}, array 0 "
                f"{first.shape}; the arrays must have the same shape"
            )
    ndim = first.ndim
    depths = normalize_depth(depth, ndim)
    pad_mode, cval = normalize_boundary(boundary, cval)
    drop = _normalize_axes(drop_axis)
    new = _normalize_axes(new_axis)
    if any(a >= ndim or a < -ndim for a in drop):
        raise DistconvError(f"drop_axis {drop_axis} is out of range for {ndim}-D input")
    drop = sorted({a % ndim for a in drop})
    if any(depths[a] and trim for a in drop):
        raise DistconvError(
            "cannot trim a halo on an axis the function drops; use depth 0 on that axis"
        )

    from_store = False  # halo strips read again from the store (TilePlan.halo_source)
    if chunks is None and store_grid(first) is not None:
        # Tiles of whole stored chunks, as for convolve: fn sees larger blocks, fewer tasks.
        # Only for stores (and output chunks left to the probe): a dask array keeps the blocks
        # its author chose.
        plan = tile_plan_for(first, depth=depths, operands=len(xs))
        from_store = plan.halo_source == "store"
        xs = [as_tiles(first, plan)] + [
            same_tiles(x, plan.chunks) if x.shape == first.shape else x for x in xs[1:]
        ]
        first = xs[0]
    if any(len(first.chunks[a]) > 1 for a in drop):
        # A dropped axis is reduced by the function, so each task must see all of it.
        xs = [x.rechunk({a: -1 for a in drop}) for x in xs]
        first = xs[0]
    on_device = is_gpu_array(first)
    gpu_engine = kernels.is_gpu_engine(engine)
    keep_on_device = on_device or not gpu_engine

    # Merge thin chunks of the first array; the others follow its chunks exactly.
    def reader(x):  # None for anything but an array fresh from its store (e.g. rechunked)
        return region_reader(x) if from_store else None

    merged, haloed = exchange_halos(xs[0], depths, pad_mode, cval, strips_from=reader(xs[0]))
    haloed_all = [haloed]
    for x in xs[1:]:
        if x.chunks != merged.chunks:
            x = x.rechunk(merged.chunks)
        haloed_all.append(exchange_halos(x, depths, pad_mode, cval, strips_from=reader(x))[1])
    in_chunks = merged.chunks
    # Sides that carry a halo in the block fn sees, per chunk, per axis (for trimming).
    halo_sides = tuple(
        tuple(
            (
                0 if pad_mode is None and j == 0 else d,
                0 if pad_mode is None and j == len(c) - 1 else d,
            )
            for j in range(len(c))
        )
        for c, d in zip(in_chunks, depths)
    )

    fn_name = _qualname(fn)
    try:
        token = tokenize(fn, kwargs, engine)
    except Exception:  # an object dask cannot hash: still unique for this call
        token = tokenize(id(fn), object())
    kept = [a for a in range(ndim) if a not in drop]
    out_ndim = len(kept) + len(new)
    out_axes = _output_axes(kept, new, out_ndim)
    out_chunks = chunks
    if dtype is None or chunks is None:
        out, core = _probe(fn, runner, token, kwargs, xs, in_chunks, depths, out_ndim, fn_name)
        dtype = out.dtype if dtype is None else dtype
        if chunks is None:
            out_chunks = _inferred_chunks(
                out.shape, core, in_chunks, depths, halo_sides, trim, out_axes, fn_name
            )
    dtype = np.dtype(dtype)
    trim_axes = {
        out_axis: in_axis for out_axis, in_axis in out_axes.items() if trim and depths[in_axis]
    }

    xp = _output_module(keep_on_device and on_device)
    result = da.map_blocks(
        _run_block,
        *haloed_all,
        chunks=out_chunks,
        drop_axis=drop or None,
        new_axis=new or None,
        dtype=dtype,
        meta=xp.empty((0,) * out_ndim, dtype=dtype),
        # The keywords of _run_block:
        runner=runner,
        fn=fn,
        fn_token=token,
        kwargs=kwargs,
        trim_axes=trim_axes,
        halo_sides=halo_sides,
        to_host=not keep_on_device,
        fn_name=fn_name,
        out_ndim=out_ndim,
        out_dtype=dtype,
        # The key names the function *and* everything it is applied to, so two calls with the
        # same function on different inputs never share keys.
        name=f"{name or fn_name.rsplit('.', 1)[-1]}-"
        + tokenize(
            token,
            [h.name for h in haloed_all],
            depths,
            pad_mode,
            cval,
            trim,
            dtype,
            out_chunks,
            drop,
            new,
            keep_on_device,
        ),
    )
    layout = layout_of(first)
    if layout is not None and tuple(result.shape) == tuple(first.shape):
        remember_layout(result, layout)  # stored like the first array (others may differ)
    return remember_provenance(
        result,
        {
            "operation": "map_chunks",
            "function": fn_name,
            "parameters": {
                "depth": list(depths),
                "boundary": boundary if isinstance(boundary, str) else float(boundary),
                "cval": cval,
                "engine": engine,
                "trim": trim,
                "drop_axis": drop,
                "new_axis": new,
                "dtype": str(dtype),
                "kwargs": {k: repr(v) for k, v in kwargs.items()},
            },
            "engine": engine,
            "input_shape": list(first.shape),
            "input_dtype": [str(x.dtype) for x in xs],
        },
    )


def _output_module(gpu: bool):
    """The array module of the output's meta: CuPy when the result stays on the GPU."""
    if gpu:
        import cupy

        return cupy
    return np


# --- the task ---------------------------------------------------------------------------------


def _run_block(
    *blocks,
    runner,
    fn,
    fn_token,
    kwargs,
    trim_axes,
    halo_sides,
    to_host,
    fn_name,
    out_ndim,
    out_dtype,
    block_info=None,
):
    """Call the function on haloed blocks through its engine, check and trim the result."""
    location = tuple(block_info[0]["chunk-location"])
    out = _call(runner, fn, fn_token, kwargs, blocks, location, fn_name)
    if to_host:
        out = to_numpy(out)
    if out.ndim != out_ndim:
        raise ChunkError(
            f"{fn_name} returned a {out.ndim}-D array on chunk {location}; "
            f"the output is {out_ndim}-D (pass drop_axis/new_axis)",
            location,
            fn_name,
        )
    if trim_axes:
        window = [slice(None)] * out.ndim
        for out_axis, in_axis in trim_axes.items():
            before, after = halo_sides[in_axis][location[in_axis]]
            window[out_axis] = slice(before, out.shape[out_axis] - after)
        out = out[tuple(window)]
    expected = tuple(block_info[None]["chunk-shape"])
    if tuple(out.shape) != expected:
        raise ChunkError(
            f"{fn_name} returned shape {tuple(out.shape)} on chunk {location}"
            f"{' after trimming' if trim_axes else ''}; expected {expected} "
            "(pass chunks=, or trim=False if it drops the halo itself)",
            location,
            fn_name,
        )
    return out.astype(out_dtype, copy=False)


def _call(runner, fn, token, kwargs, blocks, location, fn_name):
    try:
        return runner(fn, token, kwargs, blocks)
    except ChunkError:
        raise
    except Exception as exc:
        where = "the probe block" if location is None else f"chunk {location}"
        raise ChunkError(
            f"{fn_name} failed on {where}: {type(exc).__name__}: {exc}", location, fn_name
        ) from exc


# --- arguments --------------------------------------------------------------------------------


def _normalize_axes(axes) -> list[int]:
    if axes is None:
        return []
    return [int(a) for a in ([axes] if isinstance(axes, Number) else axes)]


def _qualname(fn) -> str:
    module = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return f"{module}.{name}" if module and module != "__main__" else name


def _output_axes(kept: Sequence[int], new: Sequence[int], out_ndim: int) -> dict[int, int]:
    """Output axis → the input axis it continues (new axes continue none)."""
    new_set = {a % out_ndim for a in new}
    inputs = iter(kept)
    return {axis: next(inputs) for axis in range(out_ndim) if axis not in new_set}


# --- inferring the output from one tiny block ------------------------------------------------


def _probe(fn, runner, token, kwargs, xs, in_chunks, depths, out_ndim, fn_name):
    """Run ``fn`` once on a tiny haloed block; return its output and the block's core shape.

    Each axis of the probe's core is ``PROBE_SIDE`` samples (the whole axis when it is one
    small chunk, e.g. RGB channels).
    """
    core = tuple(
        size if len(c) == 1 and size <= 4 * PROBE_SIDE else min(c[0], PROBE_SIDE)
        for size, c in zip(xs[0].shape, in_chunks)
    )
    shape = tuple(p + 2 * d for p, d in zip(core, depths))
    rng = np.random.default_rng(0)
    samples = [_sample(rng, shape, x.dtype) for x in xs]
    gpu = any(is_gpu_array(x) for x in xs)

    def run(*blocks):
        if gpu:
            import cupy

            blocks = [cupy.asarray(b) for b in blocks]
        return to_numpy(_call(runner, fn, token, kwargs, blocks, None, fn_name))

    # The probe runs where the chunks will (a GPU worker for GPU engines), via the scheduler.
    out = dask.delayed(run, pure=True)(*samples).compute()
    if out.ndim != out_ndim:
        raise DistconvError(
            f"{fn_name} returned a {out.ndim}-D array for a {len(shape)}-D "
            f"block; expected {out_ndim}-D (pass drop_axis/new_axis)"
        )
    return out, core


def _inferred_chunks(out_shape, core, in_chunks, depths, halo_sides, trim, axes, fn_name):
    """The output chunks, from the shape ``fn`` gave the probe block of ``core`` samples.

    An output axis that keeps the core's size (or the haloed size) follows the input's chunks;
    one of another size is a fixed-size axis, allowed where the input axis is one chunk read
    whole by the probe (or for a new axis).
    """
    chunks = []
    for out_axis, size in enumerate(out_shape):
        if out_axis not in axes:
            chunks.append((size,))
            continue
        a = axes[out_axis]
        c, d, p = in_chunks[a], depths[a], core[a]
        haloed = tuple(n + sum(halo_sides[a][j]) for j, n in enumerate(c))
        if d and size == p + 2 * d:
            chunks.append(c if trim else haloed)
        elif size == p and not (trim and d):
            chunks.append(c)
        elif len(c) == 1 and p == c[0] and not d:
            chunks.append((size,))  # a fixed-size axis (e.g. channels 3 → 1)
        else:
            raise DistconvError(
                f"cannot infer the output chunks of {fn_name} on axis {out_axis}: a probe "
                f"block of {p} samples (+{d} halo each side) gave {size}; pass chunks="
            )
    return tuple(chunks)


def _sample(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Random probe data of ``dtype`` (never all zeros, so ``1/x`` or ``log`` stay finite)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) > 0.5
    if dtype.kind in "iu":
        return rng.integers(1, 10, shape).astype(dtype)
    if dtype.kind == "c":
        return (rng.random(shape) + 0.5 + 1j * rng.random(shape)).astype(dtype)
    return (rng.random(shape) + 0.5).astype(dtype)


__all__ = ["CHUNK_ENGINES", "ChunkError", "map_chunks"]
