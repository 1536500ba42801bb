"""Reading Zarr inputs: the codec pipeline that decodes them, and naming a damaged chunk."""

from __future__ import annotations

import importlib.util

import zarr

from distconv.config import get_default
from distconv.errors import DistconvError
from distconv.layout import tile_units

__all__ = ["damaged_chunk", "read_pipeline"]


def read_pipeline() -> dict[str, str]:
    """Zarr config that reads inputs with the configured codec pipeline.

    Config ``distconv.read_pipeline``: ``"auto"`` uses zarrs's Rust pipeline when it is
    installed (``pip install 'distconv[fast-io]'``: it decodes a tile's chunks in parallel
    threads outside the GIL), ``"zarrs"`` requires it, ``"zarr"`` keeps zarr-python's. Outputs
    are always written by zarr-python's pipeline, whose local store writes each chunk to a
    temporary file and renames it (what resume relies on).

    Returns
    -------
    dict
        For ``zarr.config.set`` (empty: zarr-python's own).

    Raises
    ------
    DistconvError
        ``"zarrs"`` asked for but not installed, or an unknown value.
    """
    choice = str(get_default("read_pipeline")).lower()
    if choice not in ("auto", "zarrs", "zarr"):
        raise DistconvError(f"distconv.read_pipeline must be auto, zarrs or zarr, got {choice!r}")
    installed = importlib.util.find_spec("zarrs") is not None
    if choice == "zarrs" and not installed:
        raise DistconvError("read_pipeline 'zarrs' needs zarrs: pip install 'distconv[fast-io]'")
    if choice == "zarr" or not installed:
        return {}
    return {"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}


def damaged_chunk(array: zarr.Array, index: tuple, error: Exception) -> tuple[str, Exception]:
    """The region of the first stored chunk of ``index`` that fails to read, and its error.

    A task reading a tile of many chunks gets one error for all of them; reading them again one
    by one names the damaged chunk (``index`` itself when it is one chunk or cannot be split).
    """

    def text(region) -> str:
        return ", ".join(f"{s.start}:{s.stop}" if isinstance(s, slice) else str(s) for s in region)

    if not all(isinstance(s, slice) and s.step in (None, 1) for s in index):
        return text(index), error
    starts = [s.start or 0 for s in index]
    stops = [array.shape[a] if s.stop is None else s.stop for a, s in enumerate(index)]
    if all(b - a <= c for a, b, c in zip(starts, stops, array.chunks)):
        return text(index), error
    for unit in tile_units(starts, stops, array.chunks):
        region = tuple(
            slice(max(a, i * c), min(b, (i + 1) * c))
            for i, c, a, b in zip(unit, array.chunks, starts, stops)
        )
        try:
            array[region]
        except Exception as exc:
            return text(region), exc
    return text(index), error
