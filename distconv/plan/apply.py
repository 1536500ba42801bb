"""How :func:`distconv.apply` tiles an image for a model: arithmetic on shapes and on what the
probe found (:class:`ModelFacts`); the probe itself runs in :mod:`distconv.models`.

The rules that make the tiled result equal the whole image's (see :mod:`distconv.ops.apply`):
the halo is the receptive field rounded up to the total stride, tiles and blocks start on the
stride, and a block is ``batch`` tiles along the last space axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import dask.array as da
import numpy as np

from distconv.axes import axis_names, axis_type
from distconv.errors import DistconvError
from distconv.ops.halo import merge_small_chunks

__all__ = [
    "ApplyPlan",
    "ModelFacts",
    "batch_for",
    "block_chunks_for",
    "check_declared",
    "halo_for",
    "input_roles",
    "tile_for",
]


@dataclass(frozen=True)
class ModelFacts:
    """What the probe found.

    Parameters
    ----------
    stride : int
        Total stride: tiles start and halos measure in multiples of it.
    receptive_field : tuple of int
        Per space axis, how many pixels on each side an output pixel depends on.
    out_channels : int
    out_dtype : numpy.dtype
    """

    stride: int
    receptive_field: tuple[int, ...]
    out_channels: int
    out_dtype: np.dtype


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


def input_roles(
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


def check_declared(declared: list, space: int, channels: int, name: str) -> None:
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


def halo_for(halo, facts: ModelFacts, space: int) -> tuple[int, ...]:
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


def tile_for(
    shape: Sequence[int], units: Sequence[int], space, tile, stride: int, halos
) -> tuple[int, ...]:
    """The core of one model tile per space axis: ``tile`` checked, or whole stored ``units``
    (rounded to the stride) grouped to :data:`TILE_SIDE` (at least 4 halos)."""
    if tile is not None:
        given = tuple(int(t) for t in np.atleast_1d(tile))
        given = given * len(space) if len(given) == 1 else given
        if len(given) != len(space) or any(t <= 0 or t % stride for t in given):
            raise DistconvError(
                f"tile {tile} must be {len(space)} positive multiples of the stride {stride}"
            )
        return tuple(min(t, -(-shape[a] // stride) * stride) for t, a in zip(given, space))
    tiles = []
    target = TILE_SIDE[min(len(space), 3)]
    for axis, h, unit in zip(space, halos, units):
        unit = -(-unit // stride) * stride  # whole strides
        side = unit * max(1, -(-max(target, 4 * h) // unit))
        tiles.append(min(side, -(-shape[axis] // stride) * stride))
    return tuple(tiles)


def batch_for(batch, tiles, space: int) -> int:
    if batch == "auto":
        return int(max(1, min(MAX_BATCH, BATCH_PIXELS[min(space, 3)] // int(np.prod(tiles)))))
    if int(batch) < 1:
        raise DistconvError(f"batch must be 'auto' or a positive integer, got {batch}")
    return int(batch)


def block_chunks_for(x: da.Array, space, channel, tiles, halos, batch: int):
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
