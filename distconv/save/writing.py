"""How :func:`distconv.save` cuts a result into write tasks, and how it resumes one.

Without a pyramid the output keeps its layout's stored chunks (shards) and one
:class:`distconv.save.layout.TileWriter` task writes each tile of whole units
(:func:`distconv.save.layout.write_tiles`). With a pyramid a task writes one tile of
:func:`distconv.save.pyramid.tiling_for` (whole level-0 chunks × ``2**(levels - 1)`` on the halved
axes) into every level (:func:`distconv.save.pyramid.write_tile`). Either way an object that exists
is finished, which is what resume looks for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

from distconv.errors import DistconvError, OutputError
from distconv.save.layout import (
    Layout,
    aligned_chunks,
    array_layout,
    chunks_in_units,
    count_units,
    output_layout,
    units_written,
    write_tiles,
)
from distconv.save.outputs import check_same_image, check_same_job, level_paths, open_output_levels
from distconv.save.pyramid import Tiling, finished_tiles, tiling_for, write_tile
from distconv.stores import Location

__all__ = ["WritePlan", "image_record", "plan_writes", "reopen_for_resume", "units_found"]


@dataclass(frozen=True)
class WritePlan:
    """What the write tasks of one save are.

    Attributes
    ----------
    x : dask.array.Array
        The result in its write tiles.
    values : dask.array.Array
        What the tasks write: ``x``, or the floats a saturating integer cast is made from.
    layout : Layout
        Stored chunks and shards of level 0.
    tiling : Tiling
        Stored chunks of every level and a pyramid's tile (one level: the layout's chunks).
    cast : bool
        Whether ``values`` are cast to ``x.dtype`` (and clipped samples counted) in the tasks.
    """

    x: da.Array
    values: da.Array
    layout: Layout
    tiling: Tiling
    cast: bool

    @property
    def pyramid(self) -> bool:
        return self.tiling.levels > 1

    @property
    def unit_name(self) -> str:
        return "tile" if self.pyramid else self.layout.unit_name

    def units_total(self) -> int:
        """Write units of the whole output (pyramid tiles, else chunks or shards)."""
        if self.pyramid:
            return math.prod(self.x.numblocks)
        return count_units(self.x.shape, self.layout)

    def writes(self, targets, done: set[tuple[int, ...]]) -> tuple[da.Array, set]:
        """One marker per task (with a cast, its clipped samples) and the tasks to skip."""
        out_dtype = self.x.dtype if self.cast else None
        if not self.pyramid:
            return write_tiles(self.values, targets[0], self.layout, done, out_dtype=out_dtype)
        written = self.values.map_blocks(
            write_tile,
            targets=targets,
            tiling=self.tiling,
            out_dtype=out_dtype,
            chunks=(1,) * self.x.ndim,
            dtype=np.int64,
            meta=np.empty((0,) * self.x.ndim, dtype=np.int64),
            token="distconv-write",
        )
        return written, set(done)

    def chunks_counted(self, done: set[tuple[int, ...]]) -> tuple[int, int]:
        """(chunks or tiles this run wrote, all of them) for the clipped-count record."""
        if self.pyramid:
            total = math.prod(self.x.numblocks)
            return total - len(done), total
        total = chunks_in_units(
            self.x.shape, self.layout, np.ndindex(*self.layout.grid(self.x.shape))
        )
        return total - chunks_in_units(self.x.shape, self.layout, done), total


def plan_writes(x: da.Array, unclipped, chunks, shards, zarr_format: int, image) -> WritePlan:
    """The write tasks of ``x`` (``unclipped``: the floats of a saturating cast, or None).

    Raises
    ------
    DistconvError
        Shards asked for with a pyramid, or a layout :func:`distconv.save.layout.output_layout`
        refuses.
    """
    levels = image.levels if image is not None else 1
    if levels > 1 and shards not in (None, False):
        raise DistconvError("shards cannot be combined with a pyramid; drop --shards")
    layout = output_layout(x, chunks, False if levels > 1 else shards, zarr_format)
    if levels > 1:
        tiling = tiling_for(
            x.shape, layout.chunks, x.dtype.itemsize, levels, image.downsampled, image.method
        )
        layout = Layout(tiling.chunks)
        tiles = tuple(_grid(n, t) for n, t in zip(x.shape, tiling.tile))
    else:
        tiling = Tiling(layout.chunks, layout.chunks)
        tiles = aligned_chunks(x.chunks, layout.unit)
    if tiles != x.chunks:
        x = x.rechunk(tiles)
    values = x if unclipped is None else unclipped
    if values.chunks != x.chunks:
        values = values.rechunk(x.chunks)
    return WritePlan(x, values, layout, tiling, unclipped is not None)


def _grid(n: int, step: int) -> tuple[int, ...]:
    return (step,) * (n // step) + ((n % step,) if n % step else ())


def image_record(image) -> dict[str, Any]:
    """Provenance of an OME-Zarr output: its NGFF version and pyramid."""
    if image is None:
        return {}
    halved = [image.axes[i]["name"] for i in image.downsampled] if image.levels > 1 else []
    return {
        "ngff": image.version,
        "pyramid": {"levels": image.levels, "method": image.method, "axes": halved},
    }


def reopen_for_resume(
    location: Location, x: da.Array, record: dict[str, Any], plan: WritePlan, image, key: str
):
    """Open a partial output, check it records the same job, and find its written units
    (pyramid tiles whose level-0 chunks all exist, else chunks or shards)."""
    path = location.shown
    targets, found_image = open_output_levels(location)
    check_same_image(location, found_image, image, x.shape)
    array = targets[0]
    old = dict(array.attrs).get(key)
    if not isinstance(old, dict):
        raise OutputError(f"cannot resume {path}: it was not written by distconv")
    stored = array_layout(array)
    found = {
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "chunks": list(stored.chunks),
        "shards": list(stored.shards) if stored.shards else None,
    }
    for name in ("inputs", "shape", "dtype", "chunks", "shards", "pyramid"):
        recorded = old.get(name, found.get(name))
        if recorded != record.get(name):
            raise OutputError(
                f"cannot resume {path}: {name} differ ({recorded} recorded, "
                f"{record.get(name)} now); use --overwrite to start again"
            )
    check_same_job(path, old, record)
    location.remove_interrupted_writes()
    return targets, old, units_found(location, array, plan, image)


def units_found(location: Location, array, plan: WritePlan, image) -> set[tuple[int, ...]]:
    """Grid indices of the write units whose objects exist where this process reads the
    output (pyramid tiles whose level-0 chunks all exist, else chunks or shards): what resume
    skips and what the check before sealing counts."""
    keys = location.child(level_paths(image)[0]).keys()
    if plan.pyramid:
        return finished_tiles(keys, array.metadata.encode_chunk_key, plan.tiling, plan.x.shape)
    return units_written(keys, array, plan.layout)
