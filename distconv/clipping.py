"""Integer output that saturates: cast, count and write one block; the count's provenance.

scipy.ndimage wraps an integer result that does not fit its dtype (600 in uint8 is 88); distconv
saturates it (255) and counts how many samples it clipped. The count needs the float result,
so :func:`distconv.save` writes a filter's integer output from its float intermediate
(:func:`distconv.provenance.saturating_cast_source`) with :func:`write_clipped_block`, sums the
per-block counts and records them under ``attrs["distconv"]["clipped"]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from distconv.backend import cast_and_count, to_numpy

__all__ = ["clipped_record", "describe_clipped", "write_clipped_block"]


def write_clipped_block(block, target: zarr.Array, out_dtype, block_info=None) -> np.ndarray:
    """Cast one float block to the integer ``out_dtype`` (saturating), write it, return the
    count.

    Blocks are the Zarr chunks, as for every write of :func:`distconv.save`.

    Parameters
    ----------
    block : numpy.ndarray or cupy.ndarray
        The float result of one chunk.
    target : zarr.Array
        The output array.
    out_dtype : dtype-like
        The output dtype.
    block_info : dict
        Given by :func:`dask.array.map_blocks`: where the block goes.

    Returns
    -------
    numpy.ndarray
        One int64 element: how many samples of the block were clipped.
    """
    region = tuple(slice(start, stop) for start, stop in block_info[0]["array-location"])
    cast, clipped = cast_and_count(block, out_dtype)
    target[region] = to_numpy(cast)
    return np.full((1,) * block.ndim, clipped, dtype=np.int64)


def clipped_record(
    previous: dict[str, Any] | None, counts, chunks_total: int, dtype
) -> dict[str, Any]:
    """The ``clipped`` provenance entry after a save: this run's counts added to any before.

    A run that was interrupted recorded nothing, so after ``--resume`` the count covers only the
    chunks counted (``chunks_counted`` < ``chunks_total``).

    Parameters
    ----------
    previous : dict or None
        The entry already recorded (a resumed output), if any.
    counts : sequence of array_like
        The markers :func:`write_clipped_block` returned for the chunks written by this run.
    chunks_total : int
        Chunks (write blocks) in the whole output.
    dtype : dtype-like
        The output dtype.

    Returns
    -------
    dict
        ``{"samples", "chunks_counted", "chunks_total", "dtype"}``.
    """
    previous = previous or {}
    return {
        "samples": int(previous.get("samples", 0)) + int(sum(int(np.sum(c)) for c in counts)),
        "chunks_counted": int(previous.get("chunks_counted", 0)) + len(counts),
        "chunks_total": int(chunks_total),
        "dtype": str(np.dtype(dtype)),
    }


def describe_clipped(record: dict[str, Any] | None) -> str | None:
    """One phrase for a ``clipped`` entry, e.g. ``"12 samples clipped to the uint8 range"``.

    Parameters
    ----------
    record : dict or None
        ``attrs["distconv"]["clipped"]``.

    Returns
    -------
    str or None
        None when nothing was recorded (float output, or not written by a filter).
    """
    if not record:
        return None
    text = f"{record['samples']:,} samples clipped to the {record['dtype']} range"
    if record["chunks_counted"] < record["chunks_total"]:
        text += (
            f" in the {record['chunks_counted']:,} of {record['chunks_total']:,} chunks "
            "counted (chunks written before an interruption were not counted)"
        )
    return text
