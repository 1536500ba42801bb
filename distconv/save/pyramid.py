"""Multiscale levels written in the same pass as the result: tiles, downsampling, one writer.

Every level is stored in chunks of the same shape. A task writes one *tile*: on each halved axis
``chunk × 2**(levels - 1)`` samples of level 0, so the tile covers exactly one chunk of the
coarsest level, four of the one above, and so on; no stored chunk of any level has two writers.
The task downsamples its tile level by level (2× mean or nearest sample per halved axis), writes
the coarser levels first and level 0 last, so a tile whose level-0 chunks all exist is finished
(what ``--resume`` checks). An integer output is cast (saturating) and its clipped samples
counted in the same task, before anything is written or downsampled.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from distconv.backend import cast_and_count, to_numpy
from distconv.stores import redact, storage_failure

__all__ = [
    "Tiling",
    "downsample",
    "finished_tiles",
    "level_shapes",
    "tiling_for",
    "write_tile",
]

# A tile larger than this has its axes that are not halved cut thinner (down to one sample).
_TILE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Tiling:
    """How the result is cut into tasks and stored.

    Attributes
    ----------
    chunks : tuple of int
        Stored chunk shape, the same for every level (capped at a level's shape).
    tile : tuple of int
        Level-0 block one task writes.
    levels : int
        Levels written (1: no pyramid, tiles are chunks).
    halved : tuple of int
        Axes halved from one level to the next.
    method : str
        ``"mean"`` or ``"nearest"``.
    """

    chunks: tuple[int, ...]
    tile: tuple[int, ...]
    levels: int = 1
    halved: tuple[int, ...] = ()
    method: str = "mean"

    def level_chunks(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The chunk shape stored for a level of ``shape``."""
        return tuple(max(1, min(c, s)) for c, s in zip(self.chunks, shape))


def level_shapes(shape: Sequence[int], halved: Iterable[int], levels: int) -> list[tuple[int, ...]]:
    """Shapes of levels 0..levels-1: each halved axis is ``ceil(n / 2**k)``."""
    halved = set(halved)
    return [
        tuple(math.ceil(n / 2**k) if i in halved else n for i, n in enumerate(shape))
        for k in range(levels)
    ]


def tiling_for(
    shape: Sequence[int],
    chunks: Sequence[int],
    itemsize: int,
    levels: int = 1,
    halved: Sequence[int] = (),
    method: str = "mean",
) -> Tiling:
    """The tiles for a result of ``shape`` stored in ``chunks`` with ``levels`` levels.

    Parameters
    ----------
    shape, chunks : sequence of int
        The result's shape and its (regular) stored chunk shape.
    itemsize : int
        Bytes per element, to keep a tile under 256 MiB by thinning the axes not halved.
    levels : int
        1 for no pyramid.
    halved : sequence of int
        Axes halved per level.
    method : str
        ``"mean"`` or ``"nearest"``.
    """
    chunks = [max(1, min(int(c), int(n))) for c, n in zip(chunks, shape)]
    if levels <= 1:
        return Tiling(tuple(chunks), tuple(chunks))
    factor = 2 ** (levels - 1)
    tile = [min(n, c * factor) if i in halved else c for i, (c, n) in enumerate(zip(chunks, shape))]
    others = [i for i in range(len(shape)) if i not in halved]
    while math.prod(tile) * itemsize > _TILE_BYTES and any(tile[i] > 1 for i in others):
        widest = max(others, key=lambda i: tile[i])
        tile[widest] = chunks[widest] = max(1, tile[widest] // 2)
    return Tiling(tuple(chunks), tuple(tile), levels, tuple(sorted(halved)), method)


def downsample(block: np.ndarray, axes: Iterable[int], method: str, dtype) -> np.ndarray:
    """Halve ``block`` along ``axes``: the mean of each pair (a last odd sample alone), or the
    first sample of each pair.

    Integer results are rounded to the nearest integer.
    """
    out = block
    for axis in axes:
        n = out.shape[axis]
        if n <= 1:
            continue
        if method == "nearest":
            out = out[_every(out.ndim, axis, slice(0, None, 2))]
            continue
        # Strided views of the even and odd samples: no gathered copies, one float64 sum.
        pairs = n // 2
        first = out[_every(out.ndim, axis, slice(0, 2 * pairs, 2))]
        second = out[_every(out.ndim, axis, slice(1, 2 * pairs, 2))]
        halved = np.add(first, second, dtype=np.float64)
        halved *= 0.5
        if n % 2:
            last = out[_every(out.ndim, axis, slice(n - 1, n))].astype(np.float64)
            halved = np.concatenate([halved, last], axis=axis)
        out = halved
    dtype = np.dtype(dtype)
    if out.dtype != dtype:
        if np.issubdtype(dtype, np.integer):
            out = np.rint(out)
        out = out.astype(dtype)
    return out


def _every(ndim: int, axis: int, step: slice) -> tuple[slice, ...]:
    """An index taking ``step`` along ``axis`` and everything along the other axes."""
    return tuple(step if i == axis else slice(None) for i in range(ndim))


def write_tile(
    block, targets: Sequence, tiling: Tiling, out_dtype=None, block_info=None
) -> np.ndarray:
    """Per-tile task: write the tile's part of every level, level 0 last; return the count of
    clipped samples (one int64 element).

    ``targets`` are the level arrays (``zarr.Array``), highest resolution first. With
    ``out_dtype`` (an integer output written from its float intermediate) the tile is first
    cast to it, saturating, and its clipped samples counted; the coarser levels are downsampled
    from the cast values, so every level is the pyramid of the stored level 0.
    """
    clipped = 0
    if out_dtype is not None:
        block, clipped = cast_and_count(block, out_dtype)
    block = to_numpy(block)
    starts = [start for start, _ in block_info[0]["array-location"]]
    levels = [block]
    for _ in range(1, len(targets)):
        levels.append(downsample(levels[-1], tiling.halved, tiling.method, block.dtype))
    for k in range(len(targets) - 1, -1, -1):
        corner = [s // 2**k if axis in tiling.halved else s for axis, s in enumerate(starts)]
        region = tuple(slice(c, c + n) for c, n in zip(corner, levels[k].shape))
        try:
            targets[k][region] = levels[k]
        except Exception as exc:
            if not storage_failure(exc) or isinstance(exc, OSError):
                raise
            # A store client's own exception may not pickle back to the client: say it as
            # an OSError (the job fails, resumable), secrets blanked.
            text = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else "")
            raise OSError(f"{type(exc).__name__}: {text}") from None
    return np.full((1,) * block.ndim, clipped, dtype=np.int64)


def finished_tiles(
    stored: set[str], encode_key, tiling: Tiling, shape: Sequence[int]
) -> set[tuple[int, ...]]:
    """Tiles whose level-0 chunks are all stored (level 0 is written last in a tile).

    Parameters
    ----------
    stored : set of str
        Keys under the level-0 array.
    encode_key : callable
        The array's chunk-key encoder (``metadata.encode_chunk_key``).
    tiling : Tiling
    shape : sequence of int
        Level 0's shape.
    """
    per_tile = [math.ceil(t / c) for t, c in zip(tiling.tile, tiling.chunks)]
    grid = [math.ceil(n / t) for n, t in zip(shape, tiling.tile)]
    chunk_grid = [math.ceil(n / c) for n, c in zip(shape, tiling.chunks)]
    done = set()
    for tile in np.ndindex(*grid):
        ranges = [range(i * p, min((i + 1) * p, g)) for i, p, g in zip(tile, per_tile, chunk_grid)]
        if all(encode_key(chunk) in stored for chunk in itertools.product(*ranges)):
            done.add(tuple(tile))
    return done
