"""A trained model (or any tile function) over an image of any size: :func:`apply`.

The result equals the model run on the whole image at once, to float32 rounding, because:

* every output pixel is computed in a tile that holds its whole **receptive field** (measured by
  :func:`distconv.models.measure`, or ``halo=``): the halo is the receptive field rounded up to
  the model's total stride;
* tiles start at multiples of the **stride**, so pooling and upsampling see the same grid as on
  the whole image;
* at the image's true edges no padding is added: the model pads there as it does on the whole
  image.

The graph: the input is read in blocks of ``batch`` model tiles along its last space axis, each
block with its halo (from the store, :func:`~distconv.ops.halo.exchange_halos`); a task cuts its
block into tiles (each with its own halo, all inside the block), stacks the tiles of one shape
into one batch, runs the model once per shape and keeps each tile's core. Tile shapes are few
(interior, first, last), so a ``tf.function`` traces a handful of times per worker. The model's
bytes are one key of the graph: each worker receives them once and loads the model once per
process (:func:`distconv.kernels.models.predictor`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize

from distconv.errors import ChunkError, DistconvError
from distconv.io import as_dask_array
from distconv.io import open as open_store
from distconv.kernels.models import ModelPayload, predictor
from distconv.models import describe_signature, measure, resolve_model
from distconv.ops.halo import exchange_halos
from distconv.ops.tiling import store_grid
from distconv.plan.apply import (
    ApplyPlan,
    ModelFacts,
    batch_for,
    block_chunks_for,
    check_declared,
    halo_for,
    input_roles,
    tile_for,
)
from distconv.provenance import (
    layout_of,
    remember_image,
    remember_layout,
    remember_provenance,
    remember_source,
    source_of,
    sources,
)
from distconv.reading import region_reader

__all__ = ["ApplyPlan", "apply", "plan_apply"]


#: Default model tile side per number of space axes (rounded to the stored chunks and stride):
#: large enough that the halo's extra work stays small, small enough for a model's activations.
def plan_apply(
    model,
    input,
    *,
    halo="auto",
    batch="auto",
    tile=None,
    axes=None,
    engine: str | None = None,
    dtype=None,
) -> ApplyPlan:
    """The plan :func:`apply` follows (the model is probed; nothing else is computed).

    Parameters
    ----------
    model, input, halo, batch, tile, axes, engine, dtype
        As for :func:`apply`.

    Returns
    -------
    ApplyPlan
    """
    return _plan(model, as_dask_array(input), halo, batch, tile, axes, engine, dtype)[0]


def apply(
    model,
    input,
    *,
    halo="auto",
    batch="auto",
    tile=None,
    axes=None,
    engine: str | None = None,
    dtype=None,
) -> da.Array:
    """Run a trained model (or a tile function) over an image of any size, equal to running it
    on the whole image at once.

    Parameters
    ----------
    model : str, os.PathLike, callable or keras.Model
        A ``.keras`` file (loaded in Keras' safe mode), a TensorFlow SavedModel folder,
        ``"module:function"``, a Python callable, or a Keras model object. A model must be
        fully convolutional: it takes images of any size (a multiple of its stride) and returns
        one of the same size, ``(n, *space, channels)`` → ``(n, *space, out_channels)``.
    input : str, zarr.Array, dask.array.Array or numpy.ndarray
        The image: a path is opened with :func:`distconv.open`.
    halo : "auto", int or sequence of int
        Pixels each tile reads beyond its core, per space axis; ``"auto"`` measures the model's
        receptive field and rounds it up to the stride.
    batch : "auto" or int
        Tiles per model call: ``"auto"`` batches small tiles up to about 512² (96³) pixels
        per call.
    tile : int or sequence of int, optional
        The core of one model tile per space axis (a multiple of the stride); default: the
        stored chunks grouped to about 512 (2-D) or 96 (3-D) pixels.
    axes : sequence of int or str, optional
        The input's space axes, by number or name (``("y", "x")``); default: an image's named
        space axes, else the last axes the model's rank asks for. A ``c`` axis (or, without
        names, a last axis beyond the space axes) is the channel axis; other axes are batched.
    engine : str, optional
        What a function receives: ``numpy`` (default), ``tensorflow``, ``cupy``, ``numba-cuda``.
        Models run on TensorFlow.
    dtype : dtype, optional
        The output's dtype (default: the model's).

    Returns
    -------
    dask.array.Array
        The prediction: the input's space axes and chunks, with the channel axis last for a
        plain array (added where the input had none) and where it was (``c``) for an image.

    Raises
    ------
    DistconvError
        A missing, corrupt or pickled model; a model that is not fully convolutional or whose
        input channels differ from the image's; axes that do not fit.
    ChunkError
        When computing, if the model gives non-finite values on a tile (the tile is named).
    """
    x = as_dask_array(input)
    plan, payload = _plan(model, x, halo, batch, tile, axes, engine, dtype)
    return _graph(x, plan, payload)


# --- planning ---------------------------------------------------------------------------------


def _plan(model, x: da.Array, halo, batch, tile, axes, engine, dtype):
    payload, record = resolve_model(model, engine, has_channel=True)
    declared = record.get("input_shape")
    rank = None if declared is None else len(declared) - 2
    space, channel, batch_axes = input_roles(x, axes, rank)
    if payload.kind == "function":
        payload = replace(payload, has_channel=channel is not None)
    channels = 1 if channel is None else x.shape[channel]
    if declared is not None:
        check_declared(declared, len(space), channels, record["name"])
    probe = dask.delayed(measure, pure=True)(payload, len(space), channels, x.dtype)
    facts: ModelFacts = probe.compute()  # where the tiles will run
    halos = halo_for(halo, facts, len(space))
    units = [_unit(x, axis) for axis in space]
    tiles = tile_for(x.shape, units, space, tile, facts.stride, halos)
    batch_n = batch_for(batch, tiles, len(space))
    block_chunks = block_chunks_for(x, space, channel, tiles, halos, batch_n)
    out_dtype = np.dtype(dtype) if dtype is not None else facts.out_dtype
    plan = ApplyPlan(
        space, channel, batch_axes, facts, halos, tiles, batch_n, block_chunks, record,
        tuple(x.shape), np.dtype(x.dtype), out_dtype,
    )  # fmt: skip
    return plan, payload


def _unit(x: da.Array, axis: int) -> int:
    """The stored chunk (or Dask chunk) along ``axis``: tiles are made of whole ones."""
    stored = store_grid(x)
    chunks = stored[0][axis] if stored else x.chunks[axis]
    return int(chunks[0])


# --- the graph --------------------------------------------------------------------------------


def _graph(x: da.Array, plan: ApplyPlan, payload: ModelPayload) -> da.Array:
    depth = [0] * x.ndim
    for axis, h in zip(plan.space_axes, plan.halo):
        depth[axis] = h
    blocks, reader = _read_blocks(x, plan.block_chunks)
    merged, haloed = exchange_halos(blocks, depth, None, strips_from=reader)
    if any(
        any(c % plan.facts.stride for c in merged.chunks[a][:-1]) for a in plan.space_axes
    ):  # merging a thin last chunk keeps every start on the stride; anything else is a bug
        raise DistconvError("internal: tiles off the model's stride")
    halo_sides = tuple(
        tuple((0 if j == 0 else d, 0 if j == len(c) - 1 else d) for j in range(len(c)))
        for c, d in zip(merged.chunks, depth)
    )
    k = plan.facts.out_channels
    if plan.channel_axis is None:
        out_chunks = (*merged.chunks, (k,))
        new_axis = [x.ndim]
    else:
        out_chunks = tuple(
            (k,) if a == plan.channel_axis else c for a, c in enumerate(merged.chunks)
        )
        new_axis = None
    model_key = dask.delayed(payload, pure=True, traverse=False)
    token = tokenize(payload.sha256, payload.kind, payload.engine, haloed.name, plan)
    result = da.map_blocks(
        _apply_block,
        haloed,
        model_key,
        chunks=out_chunks,
        new_axis=new_axis,
        dtype=plan.out_dtype,
        meta=np.empty((0,) * len(out_chunks), dtype=plan.out_dtype),
        plan=_BlockPlan.of(plan, halo_sides),
        name=f"apply-{token}",
    )
    layout = layout_of(x)
    if layout is not None:  # the output is stored in the input's chunks, channels whole
        remember_layout(result, _output_layout(layout, plan))
    for record in sources(x):
        if record.get("ngff") and list(record.get("shape", ())) == list(x.shape):
            remember_image(result, {**record, "shape": list(plan.out_shape)})
            break
    facts = plan.facts
    return remember_provenance(
        result,
        {
            "operation": "apply",
            "model": {
                **{k: v for k, v in plan.record.items() if k != "input_shape"},
                "signature": describe_signature(
                    plan.record,
                    1 if plan.channel_axis is None else x.shape[plan.channel_axis],
                    facts,
                ),
            },
            "parameters": {
                "receptive_field": list(facts.receptive_field),
                "stride": facts.stride,
                "halo": list(plan.halo),
                "tile": list(plan.tile),
                "batch": plan.batch,
                "space_axes": list(plan.space_axes),
                "channel_axis": plan.channel_axis,
                "dtype": str(plan.out_dtype),
            },
            "engine": payload.engine,
            "input_shape": list(x.shape),
            "input_dtype": [str(x.dtype)],
        },
    )


def _read_blocks(x: da.Array, chunks) -> tuple[da.Array, Any]:
    """``x`` in the plan's blocks: read again from its store when it comes straight from one
    (strips of the halo then come from the store too), else rechunked."""
    if x.chunks == chunks and store_grid(x) is None:
        return x, None
    record = source_of(x)
    if store_grid(x) is not None and record is not None:
        blocks = open_store(record["path"], allow_partial=True, chunks=chunks)
        remember_source(blocks, record)
        return blocks, region_reader(blocks)
    return x.rechunk(chunks), None


def _output_layout(layout: dict, plan: ApplyPlan) -> dict:
    """The input's stored layout with the channel axis the output has."""
    chunks = list(layout["chunks"])
    shards = list(layout["shards"]) if layout.get("shards") else None
    k = plan.facts.out_channels
    if plan.channel_axis is None:
        chunks.append(k)
        if shards is not None:
            shards.append(k)
    else:
        chunks[plan.channel_axis] = k
        if shards is not None:
            shards[plan.channel_axis] = k
    return {**layout, "shape": list(plan.out_shape), "chunks": chunks, "shards": shards}


@dataclass(frozen=True)
class _BlockPlan:
    """What one task needs besides its block (small: it travels with every task)."""

    space_axes: tuple[int, ...]
    channel_axis: int | None
    batch_axes: tuple[int, ...]
    halo: tuple[int, ...]
    tile: tuple[int, ...]
    batch: int
    halo_sides: tuple
    out_channels: int
    out_dtype: np.dtype

    @classmethod
    def of(cls, plan: ApplyPlan, halo_sides) -> _BlockPlan:
        return cls(
            plan.space_axes, plan.channel_axis, plan.batch_axes, plan.halo, plan.tile,
            plan.batch, halo_sides, plan.facts.out_channels, plan.out_dtype,
        )  # fmt: skip


def _apply_block(block: np.ndarray, payload: ModelPayload, *, plan: _BlockPlan, block_info=None):
    """Cut the haloed block into model tiles, run the model on each shape's batch, keep cores."""
    location = tuple(block_info[0]["chunk-location"])
    ndim = block.ndim
    # To the model's layout: (batch axes..., space..., channel), batch axes flattened.
    order = [*plan.batch_axes, *plan.space_axes]
    if plan.channel_axis is None:
        canonical = block.transpose(order)[..., None]
    else:
        canonical = block.transpose([*order, plan.channel_axis])
    lead = canonical.shape[: len(plan.batch_axes)]
    canonical = canonical.reshape((-1,) + canonical.shape[len(plan.batch_axes) :])
    n = canonical.shape[0]
    space_shape = canonical.shape[1:-1]
    # Per space axis: the cores of the tiles (block coordinates) and their windows.
    per_axis = []
    for i, axis in enumerate(plan.space_axes):
        before, after = plan.halo_sides[axis][location[axis]]
        length = space_shape[i]
        h, t = plan.halo[i], plan.tile[i]
        cuts = []
        for start in range(before, length - after, t):
            stop = min(start + t, length - after)
            cuts.append((start, stop, max(0, start - h), min(length, stop + h)))
        per_axis.append((before, cuts))
    cores = [length - b - a for length, (b, a) in zip(space_shape, _sides(plan, location))]
    out = np.empty((n, *cores, plan.out_channels), plan.out_dtype)
    by_shape: dict[tuple[int, ...], list] = {}
    for tile_cuts in itertools.product(*(cuts for _, cuts in per_axis)):
        shape = tuple(w1 - w0 for _, _, w0, w1 in tile_cuts)
        by_shape.setdefault(shape, []).append(tile_cuts)
    predict = predictor(payload)
    for group in by_shape.values():
        for first in range(0, len(group), plan.batch):
            calls = group[first : first + plan.batch]
            windows = [
                canonical[(slice(None), *(slice(w0, w1) for _, _, w0, w1 in cuts))]
                for cuts in calls
            ]
            try:
                predicted = predict(np.concatenate(windows))
            except Exception as exc:
                raise ChunkError(
                    f"the model failed on block {location}: {type(exc).__name__}: {exc}",
                    location,
                    "apply",
                ) from exc
            for j, cuts in enumerate(calls):
                core = tuple(slice(s - w0, e - w0) for s, e, w0, _ in cuts)
                target = tuple(
                    slice(s - before, e - before)
                    for (s, e, _, _), (before, _) in zip(cuts, per_axis)
                )
                out[(slice(None), *target)] = predicted[(slice(j * n, (j + 1) * n), *core)]
    if out.dtype.kind in "fc" and not np.isfinite(out).all():
        bad = int(np.size(out) - np.count_nonzero(np.isfinite(out)))
        raise ChunkError(
            f"the model gave {bad} non-finite value(s) on block {location}", location, "apply"
        )
    out = out.reshape(lead + out.shape[1:])
    # Back to the input's axis order, the channel axis where it was (or last).
    positions = [*plan.batch_axes, *plan.space_axes]
    if plan.channel_axis is None:
        inverse = np.argsort(positions).tolist() + [ndim]
    else:
        positions.append(plan.channel_axis)
        inverse = np.argsort(positions).tolist()
    return out.transpose(inverse)


def _sides(plan: _BlockPlan, location) -> list[tuple[int, int]]:
    return [plan.halo_sides[axis][location[axis]] for axis in plan.space_axes]
