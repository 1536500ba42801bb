"""Zarr → Zarr copies: the floors a filter is measured against, and distconv's own identity pass.

- *best copy*: read in large tiles of whole stored chunks (the tiles distconv plans) and write
  into the same stored chunks with ``dask.array.store``: what any Zarr → Zarr pass must pay;
- *dask copy*: ``dask.array.from_zarr`` → ``to_zarr``, one task per stored chunk, as a dask user
  writes it;
- *distconv identity*: ``distconv.open`` at the planned tiles → ``distconv.save``, with
  provenance and resumable writes, to show what distconv's own machinery costs.
"""

from __future__ import annotations

from pathlib import Path

from distconv.bench.common import Contender, fresh

__all__ = ["copy_contenders", "tile_chunks"]


def tile_chunks(source: Path) -> tuple[tuple[int, ...], ...]:
    """The Dask chunks of the tiles distconv plans for an identity pass over ``source``."""
    import distconv as dc
    from distconv.ops.tiling import tile_plan_for

    return tile_plan_for(dc.open(source)).chunks


def copy_contenders(source: Path, workdir: Path, identity: bool = True) -> list[Contender]:
    """The best copy (the floor), dask's copy (a reference) and, with ``identity``, distconv's
    identity pass, each writing the stored chunks of ``source``.

    Parameters
    ----------
    source : Path
        The input store.
    workdir : Path
        Where the copies go (replaced at each run).
    identity : bool
        Include distconv's identity pass.

    Returns
    -------
    list of Contender
        The best copy first (``kind="floor"``).
    """
    import dask.array as da
    import zarr

    import distconv as dc

    stored = zarr.open_array(str(source))
    chunks, shape, dtype = stored.chunks, stored.shape, stored.dtype
    tiles = tile_chunks(source)

    def best_copy():
        target = zarr.create_array(
            fresh(workdir / "best-copy.zarr"), shape=shape, chunks=chunks, dtype=dtype
        )
        da.store(da.from_zarr(str(source), chunks=tiles), target, lock=False)

    def dask_copy():
        da.from_zarr(str(source)).to_zarr(fresh(workdir / "dask-copy.zarr"))

    def distconv_identity():
        dc.save(dc.open(source, chunks=tiles), fresh(workdir / "dc-identity.zarr"), progress=False)

    tile = "×".join(str(max(axis)) for axis in tiles)
    found = [
        Contender(f"best copy ({tile} tiles → stored chunks)", best_copy, kind="floor"),
        Contender("dask from_zarr → to_zarr", dask_copy, kind="reference", method="copy"),
    ]
    if identity:
        found.append(Contender("distconv identity (open → save)", distconv_identity, method="copy"))
    return found
