"""Integer output that saturates: cast and count whole units; the count's provenance.

scipy.ndimage wraps an integer result that does not fit its dtype (600 in uint8 is 88); distconv
saturates it (255) and counts how many samples it clipped. The count needs the float result,
so :func:`distconv.save` writes a filter's integer output from its float intermediate
(:func:`distconv.provenance.saturating_cast_source`): the tile writers cast each unit with
:func:`cast_units` (a pyramid's write task, :func:`distconv.save.pyramid.write_tile`, casts its
tile, counts the clipped samples and writes every level); ``save`` sums the per-tile counts and
records them under ``attrs["distconv"]["clipped"]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from distconv.backend import cast_and_count, to_numpy

__all__ = ["cast_units", "clipped_record", "describe_clipped"]


def cast_units(pieces: list[tuple[Any, Any]], out_dtype) -> tuple[list[tuple[Any, Any]], int]:
    """Cast float units to the integer ``out_dtype`` (saturating) and count the samples clipped.

    The tile writer (:class:`distconv.save.layout.TileWriter`) calls this on the whole units it
    writes, so a resumed job counts exactly the units it writes.

    Parameters
    ----------
    pieces : list of (region, array)
        Each unit's region in the output and its float values (NumPy or CuPy).
    out_dtype : dtype-like
        The output dtype.

    Returns
    -------
    (list of (region, numpy.ndarray), int)
        The units cast and brought to host memory, and how many samples were clipped.
    """
    cast, clipped = [], 0
    for region, values in pieces:
        values, count = cast_and_count(values, out_dtype)
        cast.append((region, to_numpy(values)))
        clipped += count
    return cast, clipped


def clipped_record(
    previous: dict[str, Any] | None, counts, chunks_counted: int, chunks_total: int, dtype
) -> dict[str, Any]:
    """The ``clipped`` provenance entry after a save: this run's counts added to any before.

    A run that was interrupted recorded nothing, so after ``--resume`` the count covers only the
    chunks counted (``chunks_counted`` < ``chunks_total``).

    Parameters
    ----------
    previous : dict or None
        The entry already recorded (a resumed output), if any.
    counts : sequence of array_like
        The markers the writers of this run returned (samples clipped per tile).
    chunks_counted : int
        Stored chunks (or pyramid tiles) this run wrote.
    chunks_total : int
        Write units (chunks, shards, or tiles of a pyramid) in the whole output.
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
        "chunks_counted": int(previous.get("chunks_counted", 0)) + int(chunks_counted),
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
