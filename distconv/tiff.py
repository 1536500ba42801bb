"""TIFF and OME-TIFF inputs, read lazily through tifffile's Zarr interface (no full load).

Each task opens the file itself (once per worker thread) and reads only the tiles or strips of
its block through ``TiffPageSeries.aszarr``: multi-page stacks, tiled and striped pages, and the
levels of an OME-TIFF pyramid. An OME-TIFF's axes and physical pixel sizes become the source
record's axes and scale, so the result can be written as an OME-Zarr image.
"""

from __future__ import annotations

import contextlib
import os
import threading
import xml.etree.ElementTree as ElementTree
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize

from distconv.errors import DistconvError, InputReadError
from distconv.provenance import remember_source
from distconv.stores import Location, redact

__all__ = ["TIFF_SUFFIXES", "TiffLevel", "describe_tiff", "is_tiff", "open_tiff"]

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf2", ".tf8")

# tifffile's axis letters → NGFF name and type (None: a custom axis).
_AXES = {
    "T": ("t", "time"),
    "C": ("c", "channel"),
    "S": ("c", "channel"),
    "Z": ("z", "space"),
    "Y": ("y", "space"),
    "X": ("x", "space"),
}
_UNITS = {
    "µm": "micrometer",
    "um": "micrometer",
    "nm": "nanometer",
    "mm": "millimeter",
    "cm": "centimeter",
    "m": "meter",
    "Å": "angstrom",
    "pm": "picometer",
    "s": "second",
    "ms": "millisecond",
    "µs": "microsecond",
    "min": "minute",
    "h": "hour",
}
_BLOCK_BYTES = 32 * 2**20  # dask blocks: whole multiples of the stored tiles, up to this size


def is_tiff(url: str) -> bool:
    """Whether a path or URL names a TIFF file by its suffix."""
    return url.lower().endswith(TIFF_SUFFIXES)


class TiffLevel:
    """One level of a TIFF's first series, opened where it is read (picklable: a path, not a
    file handle). ``x[index]`` reads only the tiles or strips under ``index``."""

    _opened = threading.local()  # per thread: (address, level) → (TiffFile, zarr array)

    def __init__(self, location: Location, level: int, shape, dtype, chunks):
        self.location, self.level = location, level
        self.shape, self.dtype, self.chunks = tuple(shape), np.dtype(dtype), tuple(chunks)
        self.ndim = len(self.shape)

    def _array(self):
        cache = self._opened.__dict__.setdefault("arrays", {})
        key = (self.location.address, self.level)
        if key not in cache:
            cache[key] = _open_level_array(self.location, self.level)[1]
        return cache[key]

    def __getitem__(self, index):
        try:
            return np.asarray(self._array()[index])
        except Exception as exc:
            raise InputReadError(
                f"{self.location.url}: level {self.level} cannot be read at {index} "
                f"({type(exc).__name__}: {redact(str(exc).splitlines()[0] if str(exc) else '')});"
                " the file is damaged"
            ) from None


def _open_file(location: Location):
    """What ``TiffFile`` opens: a local path (it owns the handle) or an fsspec file."""
    if not location.remote:
        return location.url
    import fsspec

    return fsspec.open(location.address, "rb", **dict(location.storage_options)).open()


def _open_level_array(location: Location, level: int):
    """(TiffFile, zarr array of ``level`` of the first series)."""
    import tifffile
    import zarr

    tif = tifffile.TiffFile(_open_file(location))
    return tif, zarr.open(tif.series[0].aszarr(level=level), mode="r")


def open_tiff(location: Location, level: int | None) -> da.Array:
    """A TIFF's first series (one level of a pyramid) as a lazy dask array.

    Parameters
    ----------
    location : Location
        The file, local or a URL.
    level : int, optional
        0 (default) is the highest resolution of a pyramidal (OME-)TIFF.

    Raises
    ------
    DistconvError
        Not a TIFF, no image in it, or a level out of range.
    """
    import tifffile

    url = location.url
    if not location.remote and not _exists(url):
        raise DistconvError(f"{url}: no such file or directory")
    try:
        tif, array = _open_level_array(location, 0)
    except tifffile.TiffFileError as exc:
        raise DistconvError(f"{url} is not a TIFF file ({exc})") from None
    except (IndexError, ValueError, OSError) as exc:
        raise DistconvError(f"{url} is not a readable TIFF image ({exc})") from None
    with contextlib.closing(tif):
        series = tif.series[0]
        chosen = 0 if level is None else int(level)
        if not 0 <= chosen < len(series.levels):
            raise DistconvError(
                f"--level {chosen} is out of range: {url} has levels 0 to {len(series.levels) - 1}"
            )
        if chosen:
            import zarr

            array = zarr.open(series.aszarr(level=chosen), mode="r")
        axes = _axes(series.axes)
        record: dict[str, Any] = {
            "path": url,
            "zarr_format": None,
            "shape": list(array.shape),
            "axes": axes,
            "level": chosen,
            "levels": len(series.levels),
            "level_shapes": [list(level.shape) for level in series.levels],
        }
        if tif.is_ome and tif.ome_metadata:
            factor = [a / b for a, b in zip(series.levels[0].shape, array.shape)]
            scale, units = _physical_sizes(tif.ome_metadata, series.axes)
            for axis, unit in zip(axes, units):
                if unit:
                    axis["unit"] = unit
            record["ngff"] = {
                "version": "0.5",
                "name": series.name or None,
                "scale": [s * f for s, f in zip(scale, factor)],
                "translation": None,
            }
        native = tuple(array.chunks)
        shape, dtype = tuple(array.shape), array.dtype
    chunks = da.core.normalize_chunks(
        "auto", shape, limit=_BLOCK_BYTES, dtype=dtype, previous_chunks=native
    )
    source = TiffLevel(location, chosen, shape, dtype, native)
    x = da.from_array(
        source,
        chunks=chunks,
        name="from-tiff-" + tokenize(location.url, chosen, shape, str(dtype), _mtime(url)),
        meta=np.empty((0,) * len(shape), dtype=dtype),
    )
    return remember_source(x, record)


def _exists(path: str) -> bool:
    return os.path.isfile(path)


def _mtime(path: str) -> float | None:
    with contextlib.suppress(OSError):
        return os.path.getmtime(path)
    return None


def _axes(letters: str) -> list[dict[str, Any]]:
    """tifffile's axis letters as NGFF axis dicts; letters seen twice keep their own name."""
    result: list[dict[str, Any]] = []
    for letter in letters:
        name, kind = _AXES.get(letter, (letter.lower(), None))
        if any(axis["name"] == name for axis in result):
            name, kind = letter.lower(), None
        result.append({"name": name, **({"type": kind} if kind else {})})
    return result


def _physical_sizes(ome_xml: str, letters: str) -> tuple[list[float], list[str | None]]:
    """Per axis: the OME-XML Pixels' physical size (1 if absent) and its NGFF unit name."""
    pixels = None
    with contextlib.suppress(ElementTree.ParseError):
        for element in ElementTree.fromstring(ome_xml).iter():
            if element.tag.endswith("Pixels"):
                pixels = element.attrib
                break
    scale: list[float] = []
    units: list[str | None] = []
    for letter in letters:
        size_key, unit_key, default = {
            "X": ("PhysicalSizeX", "PhysicalSizeXUnit", "µm"),
            "Y": ("PhysicalSizeY", "PhysicalSizeYUnit", "µm"),
            "Z": ("PhysicalSizeZ", "PhysicalSizeZUnit", "µm"),
            "T": ("TimeIncrement", "TimeIncrementUnit", "s"),
        }.get(letter, (None, None, None))
        value = pixels.get(size_key) if pixels is not None and size_key else None
        if value is None:
            scale.append(1.0)
            units.append(None)
            continue
        scale.append(float(value))
        symbol = pixels.get(unit_key, default)
        units.append(_UNITS.get(symbol))
    return scale, units


def describe_tiff(x: da.Array, url: str) -> dict[str, Any]:
    """What ``distconv info`` shows of a TIFF opened by :func:`open_tiff`."""
    from distconv.provenance import source_of

    record = source_of(x) or {}
    return {
        "path": url,
        "format": "TIFF",
        "shape": tuple(x.shape),
        "dtype": str(x.dtype),
        "chunks": tuple(c[0] for c in x.chunks),
        "nbytes": int(x.nbytes),
        "image": {
            "ngff": None,
            "axes": [a.get("name") for a in record.get("axes", [])],
            "units": [a.get("unit") for a in record.get("axes", [])],
            "level": record.get("level", 0),
            "levels": [
                {"path": str(k), "shape": shape, "scale": None}
                for k, shape in enumerate(record.get("level_shapes", []))
            ],
            "ome_tiff": "ngff" in record,
        },
        "provenance": None,
        "complete": None,
    }
