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
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize

from distconv.axes import axis_names, axis_type
from distconv.errors import ChunkError, DistconvError
from distconv.io import as_dask_array
from distconv.io import open as open_store
from distconv.kernels.models import ModelPayload, predictor
from distconv.models import ModelFacts, describe_signature, measure, resolve_model
from distconv.ops.halo import exchange_halos, merge_small_chunks
from distconv.ops.tiling import store_grid
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
TILE_SIDE = {1: 65536, 2: 512, 3: 96}
#: Pixels per model call that "auto" batching aims for (a batch of small tiles fills a call).
BATCH_PIXELS = {1: 2**20, 2: 512**2, 3: 96**3}
MAX_BATCH = 16


@dataclass(frozen=True)
class ApplyPlan:
    """How :func:`apply` tiles an image for a model.

    Parameters
    ----------
    space_axes, channel_axis, batch_axes
        The input's axes the model sees as space, channels (None: the input has none) and
        batch.
    facts : ModelFacts
        Stride, receptive field, output channels and dtype found by the probe.
    halo : tuple of int
        Per space axis, pixels on each side of a tile.
    tile : tuple of int
        Per space axis, the core of one model tile.
    batch : int
        Tiles per model call (and per task, along the last space axis).
    block_chunks : tuple of tuple of int
        The input's chunks as tasks read them.
    record : dict
        What the model is (kind, name, SHA-256, declared input shape).
    """

    space_axes: tuple[int, ...]
    channel_axis: int | None
    batch_axes: tuple[int, ...]
    facts: ModelFacts
    halo: tuple[int, ...]
    tile: tuple[int, ...]
    batch: int
    block_chunks: tuple[tuple[int, ...], ...]
    record: dict
    input_shape: tuple[int, ...]
    input_dtype: np.dtype
    out_dtype: np.dtype

    @property
    def out_shape(self) -> tuple[int, ...]:
        shape = list(self.input_shape)
        if self.channel_axis is None:
            return (*shape, self.facts.out_channels)
        shape[self.channel_axis] = self.facts.out_channels
        return tuple(shape)

    @property
    def tasks(self) -> int:
        return int(np.prod([len(c) for c in self.block_chunks]))

    def task_bytes(self) -> int:
        """Input (with halo) and output bytes of the largest task's block."""
        largest = [max(c) for c in self.block_chunks]
        haloed = list(largest)
        for axis, h in zip(self.space_axes, self.halo):
            haloed[axis] += 2 * h
        pixels_in = int(np.prod(haloed))
        channels = 1 if self.channel_axis is None else self.input_shape[self.channel_axis]
        pixels_out = int(np.prod(largest)) // channels * self.facts.out_channels
        return pixels_in * self.input_dtype.itemsize + pixels_out * self.out_dtype.itemsize

    def describe(self) -> str:
        """The plan as ``--dry-run`` prints it."""
        f = self.facts
        x = "×".join
        extra = np.prod([(t + 2 * h) / t for t, h in zip(self.tile, self.halo)])
        return "\n".join(
            [
                f"model: {self.record['name']} ({self.record['kind']}"
                + (f", sha256 {self.record['sha256'][:12]}…" if self.record.get("sha256") else "")
                + ")",
                f"receptive field: ±{x(map(str, f.receptive_field))} px; total stride {f.stride}",
                f"halo: {x(map(str, self.halo))} px per side (the receptive field rounded up to "
                "the stride)",
                f"tile: {x(map(str, self.tile))} px (+ halo: {extra:.2f}× the pixels computed); "
                f"batch: {self.batch} tile(s) per call",
                f"tasks: {self.tasks} of {x(map(str, [max(c) for c in self.block_chunks]))} px; "
                f"memory per task: {self.task_bytes() / 2**20:.1f} MiB in + out "
                "(plus the model's activations)",
                f"output: {x(map(str, self.out_shape))} {self.out_dtype}",
            ]
        )


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
    space, channel, batch_axes = _roles(x, axes, rank)
    if payload.kind == "function":
        payload = replace(payload, has_channel=channel is not None)
    channels = 1 if channel is None else x.shape[channel]
    if declared is not None:
        _check_declared(declared, len(space), channels, record["name"])
    probe = dask.delayed(measure, pure=True)(payload, len(space), channels, x.dtype)
    facts: ModelFacts = probe.compute()  # where the tiles will run
    halos = _halo(halo, facts, len(space))
    tiles = _tile(x, space, tile, facts.stride, halos)
    batch_n = _batch(batch, tiles, len(space))
    block_chunks = _block_chunks(x, space, channel, tiles, halos, batch_n)
    out_dtype = np.dtype(dtype) if dtype is not None else facts.out_dtype
    plan = ApplyPlan(
        space, channel, batch_axes, facts, halos, tiles, batch_n, block_chunks, record,
        tuple(x.shape), np.dtype(x.dtype), out_dtype,
    )  # fmt: skip
    return plan, payload


def _roles(
    x: da.Array, axes, rank: int | None
) -> tuple[tuple[int, ...], int | None, tuple[int, ...]]:
    """Space axes, channel axis (or None) and batch axes of ``x`` for a model of ``rank`` space
    axes (None: a function, any rank)."""
    names = axis_names(x)
    if axes is not None:
        space = tuple(_axis_number(a, x, names) for a in axes)
    elif names is not None:
        space = tuple(i for i, n in enumerate(names) if axis_type(n) == "space")
        if rank is not None:
            space = space[-rank:]
    else:
        wanted = rank if rank is not None else x.ndim
        if x.ndim < wanted:
            raise DistconvError(
                f"the model takes {wanted}-D images; the input is {x.ndim}-D ({x.shape})"
            )
        last = x.ndim if x.ndim == wanted else x.ndim - 1  # a last axis beyond: channels
        space = tuple(range(last - wanted, last))
    if len(set(space)) != len(space) or not space:
        raise DistconvError(f"axes {axes} must name distinct space axes")
    if rank is not None and len(space) != rank:
        raise DistconvError(
            f"the model takes {rank}-D images; axes {_show_axes(space, names)} name {len(space)}"
        )
    rest = [i for i in range(x.ndim) if i not in space]
    if names is not None:
        channel = next((i for i in rest if axis_type(names[i]) == "channel"), None)
    else:
        channel = rest[-1] if rest and rest[-1] > max(space) else None
    batch_axes = tuple(i for i in rest if i != channel)
    return space, channel, batch_axes


def _axis_number(axis, x: da.Array, names: list[str] | None) -> int:
    if isinstance(axis, str):
        if names is None or axis not in names:
            raise DistconvError(
                f"axis {axis!r}: the input's axes are "
                + (", ".join(names) if names else "not named (pass numbers)")
            )
        return names.index(axis)
    number = int(axis)
    if not -x.ndim <= number < x.ndim:
        raise DistconvError(f"axis {number} is out of range for a {x.ndim}-D input")
    return number % x.ndim


def _show_axes(space: Sequence[int], names: list[str] | None) -> str:
    return ",".join(names[i] if names else str(i) for i in space)


def _check_declared(declared: list, space: int, channels: int, name: str) -> None:
    if len(declared) != space + 2:
        raise DistconvError(
            f"model {name} takes {len(declared) - 2}-D images (input {tuple(declared)}); the "
            f"input has {space} space axes"
        )
    fixed = [d for d in declared[1:-1] if d is not None]
    if fixed:
        size = "×".join(str(d) for d in declared[1:-1])
        raise DistconvError(
            f"model {name} is not fully convolutional: it takes only {size} images; rebuild it "
            f"with keras.Input(shape=({', '.join(['None'] * space)}, {declared[-1]})) and load "
            "its weights to run it at any size"
        )
    if declared[-1] is not None and declared[-1] != channels:
        raise DistconvError(
            f"model {name} takes {declared[-1]} input channel(s); the input has {channels}"
        )


def _halo(halo, facts: ModelFacts, space: int) -> tuple[int, ...]:
    if isinstance(halo, str):
        if halo != "auto":
            raise DistconvError(f"halo must be 'auto' or pixels, got {halo!r}")
        given = facts.receptive_field
    else:
        given = tuple(int(h) for h in np.atleast_1d(halo))
        given = given * space if len(given) == 1 else given
        if len(given) != space or any(h < 0 for h in given):
            raise DistconvError(f"halo {halo} must be {space} non-negative integers")
    s = facts.stride
    return tuple(-(-h // s) * s for h in given)


def _unit(x: da.Array, axis: int) -> int:
    stored = store_grid(x)
    chunks = stored[0][axis] if stored else x.chunks[axis]
    return int(chunks[0])


def _tile(x: da.Array, space, tile, stride: int, halos) -> tuple[int, ...]:
    if tile is not None:
        given = tuple(int(t) for t in np.atleast_1d(tile))
        given = given * len(space) if len(given) == 1 else given
        if len(given) != len(space) or any(t <= 0 or t % stride for t in given):
            raise DistconvError(
                f"tile {tile} must be {len(space)} positive multiples of the stride {stride}"
            )
        return tuple(min(t, -(-x.shape[a] // stride) * stride) for t, a in zip(given, space))
    tiles = []
    target = TILE_SIDE[min(len(space), 3)]
    for axis, h in zip(space, halos):
        unit = _unit(x, axis)
        unit = -(-unit // stride) * stride  # whole strides
        side = unit * max(1, -(-max(target, 4 * h) // unit))
        tiles.append(min(side, -(-x.shape[axis] // stride) * stride))
    return tuple(tiles)


def _batch(batch, tiles, space: int) -> int:
    if batch == "auto":
        return int(max(1, min(MAX_BATCH, BATCH_PIXELS[min(space, 3)] // int(np.prod(tiles)))))
    if int(batch) < 1:
        raise DistconvError(f"batch must be 'auto' or a positive integer, got {batch}")
    return int(batch)


def _block_chunks(x: da.Array, space, channel, tiles, halos, batch: int):
    """The input's chunks as tasks read them: ``tile`` per space axis, ``batch`` tiles along the
    last; the channel axis whole; batch axes as stored."""
    chunks = []
    for axis, size in enumerate(x.shape):
        if axis in space:
            i = space.index(axis)
            side = tiles[i] * (batch if axis == space[-1] else 1)
            full, rest = divmod(size, side)
            # As exchange_halos will merge them: a last block thinner than the halo joins its
            # neighbour.
            chunks.append(merge_small_chunks((side,) * full + ((rest,) if rest else ()), halos[i]))
        elif axis == channel:
            chunks.append((size,))
        else:
            chunks.append(x.chunks[axis])
    return tuple(chunks)


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
