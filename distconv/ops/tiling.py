"""Arrays regrouped into the planned tiles before an operation builds its graph.

An array read straight from a Zarr store (:func:`distconv.open`, not transformed since) is read
again with one task per tile: the from-Zarr layer is re-created at the tile chunks, so a task
reads its tile's stored chunks (Zarr decodes them concurrently) and no merge task is added.
Any other array is rechunked into tiles only when a tile merges enough chunks to pay for the
merge (:attr:`~distconv.plan.tiles.TilePlan.worth_regrouping`).
"""

from __future__ import annotations

from typing import Any

import dask.array as da

from distconv.io import open as open_store
from distconv.plan.tiles import TilePlan, plan_tiles, regular_grid
from distconv.provenance import source_of

__all__ = ["as_tiles", "same_tiles", "store_grid", "tile_plan_for"]


def store_grid(x: da.Array) -> tuple[tuple[tuple[int, ...], ...], str] | None:
    """The stored unit grid of an array read straight from a Zarr store, and the unit's name
    ("shard" or "chunk"); None for any other array (and for one opened with ``chunks=``)."""
    record = source_of(x)
    if not record or not record.get("zarr_format") or not record.get("chunks"):
        return None
    if record.get("chunks_given"):  # opened in blocks its caller chose: those are the units
        return None
    if tuple(record.get("shape", ())) != tuple(x.shape):
        return None
    shards = record.get("shards")
    return regular_grid(x.shape, shards or record["chunks"]), "shard" if shards else "chunk"


def tile_plan_for(x: da.Array, **options: Any) -> TilePlan:
    """:func:`~distconv.plan.tiles.plan_tiles` for a dask array: over its stored chunks (or
    shards) when it comes straight from a store, else over its Dask chunks.

    Parameters
    ----------
    x : dask.array.Array
    **options
        The keywords of :func:`~distconv.plan.tiles.plan_tiles` after ``unit_kind`` and
        ``from_store`` (``depth``, ``compute_dtype``, ``out_dtype``, ``method_for``,
        ``operands``, ``resources``, ``target_bytes``).

    Returns
    -------
    TilePlan
    """
    stored = store_grid(x)
    grid, kind = stored if stored else (x.chunks, "dask chunk")
    return plan_tiles(
        x.shape, x.dtype, grid, unit_kind=kind, from_store=stored is not None, **options
    )


def as_tiles(x: da.Array, plan: TilePlan) -> da.Array:
    """``x`` with one block per tile of ``plan`` (or as it is, where regrouping does not pay).

    Parameters
    ----------
    x : dask.array.Array
        The array the plan was made for.
    plan : TilePlan

    Returns
    -------
    dask.array.Array
        Read again from its store at the tile chunks, rechunked, or ``x`` itself.
    """
    if x.chunks == plan.chunks:
        return x
    if plan.from_store:
        # The store passed distconv.open's checks when x was opened.
        return open_store(source_of(x)["path"], allow_partial=True, chunks=plan.chunks)
    if plan.worth_regrouping:
        return x.rechunk(plan.chunks)
    return x


def same_tiles(x: da.Array, chunks: tuple[tuple[int, ...], ...]) -> da.Array:
    """Another operand read in the tiles of the first: read again from its store at these
    chunks when it comes straight from one (any stored grid; a tile then decodes the chunks it
    touches), else as it is (the graph builder aligns it).

    Parameters
    ----------
    x : dask.array.Array
    chunks : tuple of tuple of int
        The first operand's tile chunks, for an array of ``x``'s shape.

    Returns
    -------
    dask.array.Array
    """
    if x.chunks == chunks or store_grid(x) is None:
        return x
    return open_store(source_of(x)["path"], allow_partial=True, chunks=chunks)
