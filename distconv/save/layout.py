"""Stored layouts: the chunks and shards an output is written with, and the tasks that write them.

By default an output keeps the stored chunks (and shards) of the array it was computed from
(:func:`distconv.provenance.layout_of`), whatever tiles computed it; ``chunks=`` and
``shards=`` choose another layout. A *unit* is what one write makes whole: a shard when the
output is sharded, else a chunk. Every task writes a tile of whole units, and no unit is
written by two tasks (zarr-python#3682: two writers of one shard lose data silently), so a unit
object that exists is finished: resume recomputes only tiles with missing units and writes only
those.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from distconv.backend import to_numpy
from distconv.errors import DistconvError
from distconv.provenance import layout_of, sources
from distconv.save.clipping import cast_units
from distconv.stores import redact, storage_failure

__all__ = [
    "Layout",
    "TileWriter",
    "aligned_chunks",
    "array_layout",
    "chunks_in_units",
    "count_units",
    "default_format",
    "normalize_shape_option",
    "output_layout",
    "planned_layout",
    "regular_chunks",
    "tile_units",
    "units_written",
    "write_tiles",
    "write_units",
]


@dataclass(frozen=True)
class Layout:
    """Chunk shape and shard shape (None: not sharded) of a stored array."""

    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None = None

    @property
    def unit(self) -> tuple[int, ...]:
        """What one write makes whole: the shard when sharded, else the chunk."""
        return self.shards or self.chunks

    @property
    def unit_name(self) -> str:
        return "shard" if self.shards else "chunk"

    def grid(self, shape: Sequence[int]) -> tuple[int, ...]:
        """Units per axis of an array of ``shape``."""
        return tuple(-(-n // u) for n, u in zip(shape, self.unit))

    def record(self, shape: Sequence[int]) -> dict[str, Any]:
        """The record :func:`distconv.provenance.remember_layout` keeps."""
        return {
            "shape": tuple(shape),
            "chunks": self.chunks,
            "shards": self.shards,
        }


def array_layout(array) -> Layout:
    """The layout of a ``zarr.Array`` (its inner chunks and its shards, if any)."""
    shards = getattr(array, "shards", None)
    return Layout(
        tuple(int(c) for c in array.chunks), tuple(int(s) for s in shards) if shards else None
    )


def regular_chunks(chunks: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    """Chunks a Zarr array can hold: equal sizes with a smaller or equal last one.

    Irregular Dask chunks (merged halo chunks, uneven NumPy inputs) are replaced by a regular
    grid of the largest chunk size, so every task writes whole Zarr chunks of its own.
    """
    result = []
    for axis in chunks:
        axis = tuple(axis)
        size = axis[0]
        if all(c == size for c in axis[:-1]) and axis[-1] <= size:
            result.append(axis)
            continue
        size = max(axis)
        total = sum(axis)
        result.append((size,) * (total // size) + ((total % size,) if total % size else ()))
    return tuple(result)


def normalize_shape_option(value, shape: Sequence[int], name: str) -> tuple[int, ...] | None:
    """``chunks=``/``shards=`` as a shape: an int for every axis, a sequence (-1 or None: the
    whole axis), or a comma-separated string; None stays None.

    Raises
    ------
    DistconvError
        Anything else, or a size that is not positive.
    """
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = [int(v) for v in value.split(",")]
        except ValueError:
            raise DistconvError(
                f"{name} must be integers separated by commas, got {value!r}"
            ) from None
        if len(value) == 1:
            value = value[0]
    if isinstance(value, (int, np.integer)):
        value = [int(value)] * len(shape)
    try:
        sizes = [int(s) if s is not None else -1 for s in value]
    except (TypeError, ValueError):
        raise DistconvError(f"{name} must be a size per axis, got {value!r}") from None
    if len(sizes) != len(shape):
        raise DistconvError(f"{name} has {len(sizes)} values for a {len(shape)}-D array")
    if any(s == 0 or s < -1 for s in sizes):
        raise DistconvError(
            f"{name} must be positive sizes (or -1 for a whole axis), got {value!r}"
        )
    return tuple(max(1, n) if s == -1 else s for s, n in zip(sizes, shape))


def output_layout(x: da.Array, chunks=None, shards=None, zarr_format: int = 3) -> Layout:
    """The layout ``x`` is written with.

    Parameters
    ----------
    x : dask.array.Array
    chunks : int, sequence or str, optional
        Chunk shape; default: the stored chunks ``x`` was computed from (the nearest recorded
        layout of its shape), else its Dask chunks made regular.
    shards : int, sequence, str or False, optional
        Shard shape (Zarr format 3; whole multiples of the chunks); default: the recorded
        layout's shards when its chunks are used, else none; False: none.
    zarr_format : {2, 3}

    Returns
    -------
    Layout

    Raises
    ------
    DistconvError
        Shards in Zarr format 2, or shards that are not whole multiples of the chunks.
    """
    shape = tuple(x.shape)
    given_chunks = normalize_shape_option(chunks, shape, "chunks")
    given_shards = None if shards is False else normalize_shape_option(shards, shape, "shards")
    recorded = layout_of(x) if given_chunks is None else None
    if given_chunks is not None:
        chunk_shape = given_chunks
    elif recorded is not None:
        chunk_shape = tuple(recorded["chunks"])
    else:
        chunk_shape = tuple(axis[0] for axis in regular_chunks(x.chunks))
    chunk_shape = tuple(max(1, min(c, s)) for c, s in zip(chunk_shape, shape))
    if shards is None and recorded is not None and recorded.get("shards") and zarr_format == 3:
        given_shards = tuple(recorded["shards"])
    if given_shards is None:
        return Layout(chunk_shape)
    if zarr_format != 3:
        raise DistconvError("shards need Zarr format 3 (the output is written in format 2)")
    shard_shape = tuple(
        max(c, min(s, -(-n // c) * c)) for s, c, n in zip(given_shards, chunk_shape, shape)
    )
    if any(s % c for s, c in zip(shard_shape, chunk_shape)):
        raise DistconvError(
            f"shards {_text(shard_shape)} must be whole multiples of the chunks "
            f"{_text(chunk_shape)}"
        )
    return Layout(chunk_shape, shard_shape)


def planned_layout(x, chunks=None, shards=None, zarr_format: int | None = None) -> Layout:
    """The chunks and shards :func:`distconv.save` would write ``x`` with (same arguments).

    Parameters
    ----------
    x : dask.array.Array
    chunks, shards, zarr_format
        As for :func:`distconv.save`.

    Returns
    -------
    distconv.save.layout.Layout

    Raises
    ------
    DistconvError
        A layout :func:`distconv.save` would refuse (shards in Zarr format 2, shards that are
        not whole multiples of the chunks, sizes that are not positive).
    """
    return output_layout(x, chunks, shards, zarr_format or default_format(x))


def default_format(x: da.Array) -> int:
    """The Zarr format of the store whose layout the output keeps, else of the first store
    ``x`` reads, else 3."""
    recorded = (layout_of(x) or {}).get("zarr_format")
    formats = [s["zarr_format"] for s in sources(x) if s.get("zarr_format")]
    return recorded or (formats[0] if formats else 3)


def aligned_chunks(
    chunks: Sequence[Sequence[int]], unit: Sequence[int]
) -> tuple[tuple[int, ...], ...]:
    """``chunks`` when every block boundary is a unit boundary, else a regular grid of whole
    units about the size of the current blocks (each unit then lies in one block)."""
    result = []
    for axis, step in zip(chunks, unit):
        axis = tuple(axis)
        bounds = np.cumsum(axis)[:-1]
        if not len(bounds) or not np.any(bounds % step):
            result.append(axis)
            continue
        size = step * max(1, round(float(np.median(axis)) / step))
        total = sum(axis)
        result.append((size,) * (total // size) + ((total % size,) if total % size else ()))
    return tuple(result)


def tile_units(
    starts: Sequence[int], stops: Sequence[int], unit: Sequence[int]
) -> Iterable[tuple[int, ...]]:
    """Grid indices of the units inside one tile ``[starts, stops)``."""
    return itertools.product(*[range(a // u, -(-b // u)) for a, b, u in zip(starts, stops, unit)])


class TileWriter:
    """Writes one tile of whole units into a Zarr array (the task function of the write layer).

    ``missing`` is None to write the whole tile in one call (Zarr encodes and stores its units
    concurrently), or the grid indices of the units still to write (a resumed job).
    ``out_dtype`` (integer output of a filter, written from its float result) casts each unit
    to that dtype, saturating, and counts the samples clipped (:mod:`distconv.save.clipping`).
    """

    def __init__(self, target, region: tuple[slice, ...], unit, missing=None, out_dtype=None):
        self.target, self.region, self.unit = target, region, tuple(unit)
        self.missing = None if missing is None else tuple(missing)
        self.out_dtype = out_dtype

    def units(self) -> list[tuple[int, ...]]:
        """The grid indices of the units this task writes."""
        if self.missing is not None:
            return list(self.missing)
        return list(
            tile_units([s.start for s in self.region], [s.stop for s in self.region], self.unit)
        )

    def __call__(self, block) -> np.ndarray:
        """Write the units; the marker is True, or the number of samples clipped (int64)."""
        if self.out_dtype is None:
            block = to_numpy(block)
        pieces = []
        for index in self.units():
            where = tuple(
                slice(i * u, min((i + 1) * u, n))
                for i, u, n in zip(index, self.unit, self.target.shape)
            )
            local = tuple(
                slice(w.start - r.start, w.stop - r.start) for w, r in zip(where, self.region)
            )
            pieces.append((where, block[local]))
        if self.out_dtype is None:
            write_units(self.target, pieces)
            return np.ones((1,) * block.ndim, dtype=bool)
        pieces, clipped = cast_units(pieces, self.out_dtype)
        write_units(self.target, pieces)
        return np.full((1,) * block.ndim, clipped, dtype=np.int64)


def write_units(target, pieces: list[tuple[tuple[slice, ...], np.ndarray]]) -> None:
    """Write whole units concurrently (up to zarr's ``async.concurrency`` at once) and return
    only when every write has ended, raising the first error.

    One ``target[tile] = block`` would do the same writes, but on the first error (a full disk)
    it returns while the other writes are still pending in Zarr's event loop, which the
    interpreter's exit then destroys mid-write, with a screen of tracebacks.
    """
    import asyncio

    import zarr
    from zarr.core.sync import sync

    limit = int(zarr.config.get("async.concurrency") or 10)

    async def write_all() -> list:
        slots = asyncio.Semaphore(limit)

        async def write(region, values) -> None:
            async with slots:
                await target.async_array.setitem(region, values)

        return await asyncio.gather(*(write(*p) for p in pieces), return_exceptions=True)

    for outcome in sync(write_all()):
        if isinstance(outcome, BaseException):
            if not storage_failure(outcome) or isinstance(outcome, OSError):
                raise outcome
            # A store client's own exception may not pickle back to the client: say it as an
            # OSError (the job fails, resumable), secrets blanked.
            text = str(outcome).strip()
            text = redact(text.splitlines()[0] if text else "")
            raise OSError(f"{type(outcome).__name__}: {text}") from None


def write_tiles(
    x: da.Array,
    target,
    layout: Layout,
    done: set[tuple[int, ...]] | None = None,
    out_dtype=None,
) -> tuple[da.Array, set[tuple[int, ...]]]:
    """The write layer: one :class:`TileWriter` task per block of ``x``.

    Parameters
    ----------
    x : dask.array.Array
        Blocks of whole units of ``layout`` (see :func:`aligned_chunks`).
    target : zarr.Array
        The output.
    layout : Layout
    done : set of tuple, optional
        Grid indices of units already written (resume): tiles holding only such units are
        not computed, the others write only their missing units.
    out_dtype : dtype-like, optional
        The integer dtype of the output when ``x`` is its float result: each unit is cast
        (saturating) and its clipped samples counted.

    Returns
    -------
    (dask.array.Array, set)
        One marker per block (True; with ``out_dtype``, the block's clipped samples), and the
        block indices to skip.
    """
    done = done or set()
    unit = layout.unit
    name = "distconv-write-" + tokenize(
        x.name, _target_id(target), unit, sorted(done), str(out_dtype)
    )
    offsets = [np.cumsum((0,) + tuple(axis)) for axis in x.chunks]
    graph: dict = {}
    skip: set[tuple[int, ...]] = set()
    for index in np.ndindex(*x.numblocks):
        region = tuple(slice(int(o[i]), int(o[i + 1])) for o, i in zip(offsets, index))
        missing = None
        if done:
            units = list(tile_units([s.start for s in region], [s.stop for s in region], unit))
            left = [u for u in units if u not in done]
            if not left:
                skip.add(index)
            missing = None if len(left) == len(units) else left
        writer = TileWriter(target, region, unit, missing, out_dtype)
        graph[(name,) + index] = (writer, (x.name,) + index)
    hlg = HighLevelGraph.from_collections(name, graph, dependencies=[x])
    marker = np.dtype(bool) if out_dtype is None else np.dtype(np.int64)
    markers = da.Array(
        hlg, name, tuple((1,) * n for n in x.numblocks), meta=np.empty((0,) * x.ndim, marker)
    )
    return markers, skip


def units_written(stored: set[str], array, layout: Layout) -> set[tuple[int, ...]]:
    """Grid indices of the units (chunks or shards) whose objects are among ``stored``, the
    keys under the array (:meth:`distconv.stores.Location.keys`, local or an object store)."""
    if len(stored) <= 1:  # only metadata
        return set()
    grid = layout.grid(array.shape)
    parse = _chunk_key_parser(array.metadata)
    if parse is None or not grid:  # an encoding we cannot read backwards: ask of every unit
        return {
            index for index in np.ndindex(*grid) if array.metadata.encode_chunk_key(index) in stored
        }
    # One pass over the keys, not over the grid: millions of units are checked in seconds.
    found = set()
    for key in stored:
        index = parse(key)
        if index is not None and len(index) == len(grid) and all(map(int.__lt__, index, grid)):
            found.add(index)
    return found


def _chunk_key_parser(metadata) -> Callable[[str], tuple[int, ...] | None] | None:
    """The inverse of ``metadata.encode_chunk_key`` for Zarr's two standard key encodings
    (None for another): a key → the grid index it names, or None for any other object."""
    encoding = getattr(metadata, "chunk_key_encoding", None)
    if encoding is None:  # Zarr v2
        prefix, separator = "", getattr(metadata, "dimension_separator", None) or "."
    elif getattr(encoding, "name", None) == "default":
        prefix, separator = "c" + encoding.separator, encoding.separator
    elif getattr(encoding, "name", None) == "v2":
        prefix, separator = "", encoding.separator
    else:
        return None

    def parse(key: str) -> tuple[int, ...] | None:
        if not key.startswith(prefix):
            return None
        parts = key[len(prefix) :].split(separator)
        return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None

    return parse


def _target_id(target) -> str:
    return str(getattr(target, "store_path", id(target)))


def _text(shape: Sequence[int]) -> str:
    return "×".join(map(str, shape))


def count_units(shape: Sequence[int], layout: Layout) -> int:
    """Units (chunks or shards) of an array of ``shape``."""
    return math.prod(layout.grid(shape))


def chunks_in_units(shape: Sequence[int], layout: Layout, units: Iterable[tuple[int, ...]]) -> int:
    """Chunks inside the array's bounds in the given units (shards; a chunk is its own unit)."""
    total = 0
    for index in units:
        total += math.prod(
            -(-(min((i + 1) * u, n) - i * u) // c)
            for i, u, c, n in zip(index, layout.unit, layout.chunks, shape)
        )
    return total
