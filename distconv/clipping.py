"""Integer output that saturates: the clipped-sample count's provenance.

scipy.ndimage wraps an integer result that does not fit its dtype (600 in uint8 is 88); distconv
saturates it (255) and counts how many samples it clipped. The count needs the float result,
so :func:`distconv.save` writes a filter's integer output from its float intermediate
(:func:`distconv.provenance.saturating_cast_source`): each write task
(:func:`distconv.pyramid.write_tile`) casts its tile, counts the clipped samples and writes every
level; ``save`` sums the per-tile counts and records them under ``attrs["distconv"]["clipped"]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["clipped_record", "describe_clipped"]


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
        The counts :func:`distconv.pyramid.write_tile` returned for the tiles written by this
        run (a tile is one chunk without a pyramid).
    chunks_total : int
        Write tasks (chunks, or tiles of a pyramid) in the whole output.
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
