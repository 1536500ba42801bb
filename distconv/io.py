"""Zarr in: open lazily (local or an object store, plain or OME-Zarr, TIFF) and describe a
store. Writing is :mod:`distconv.save`."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize

from distconv.axes import axis_type, data_variable, dims_of
from distconv.errors import DistconvError, one_line
from distconv.ome import describe_image, image_level, image_of_array, multiscale_of
from distconv.provenance import remember_layout, remember_source
from distconv.reading import (
    ChunkReader,
    MissingChunksAreErrors,
    RegionReader,
    read_pipeline,
    reading_config,
    remember_store,
)
from distconv.save.layout import (
    array_layout,
    chunks_in_units,
    planned_layout,  # noqa: F401 - part of io's API: the layout save() would write
    regular_chunks,  # noqa: F401 - its documented home was here
    units_written,
)
from distconv.stores import Location, remote_error
from distconv.tiff import describe_tiff, is_tiff, open_tiff

ATTRS_KEY = "distconv"


def open(
    path,
    *,
    level: int | None = None,
    storage_options: dict[str, Any] | None = None,
    allow_partial: bool = False,
    chunks=None,
    xarray: bool = False,
) -> da.Array:
    """Open a Zarr array, an OME-Zarr image or a TIFF lazily, on a local disk or an object store.

    Parameters
    ----------
    path : str or os.PathLike
        A Zarr array (v2 or v3, or one inside a group: ``big.zarr/raw/0``), an OME-Zarr image
        group (``image.ome.zarr``), a TIFF or OME-TIFF file, or a ``.npy`` file
        (memory-mapped); local, or an fsspec URL (``s3://bucket/image.ome.zarr``).
    level : int, optional
        The level of an OME-Zarr image or a pyramidal TIFF; 0 (default) is the highest
        resolution.
    storage_options : dict, optional
        fsspec options for a URL (``{"endpoint_url": ...}``); credentials otherwise come from
        the usual places (environment, profiles).
    allow_partial : bool
        Read a distconv output that is not marked complete (its missing chunks read as the fill
        value). By default such an output is refused.
    chunks : tuple, optional
        Dask chunks to read with (as :func:`dask.array.from_zarr` takes them). Blocks of whole
        stored chunks are read by one task each, Zarr decoding the chunks concurrently; the
        operations plan such tiles themselves (:mod:`distconv.plan.tiles`).
    xarray : bool
        Return an :class:`xarray.DataArray` (xarray must be installed): dims from the store
        (``dimension_names`` in Zarr v3, ``_ARRAY_DIMENSIONS`` in v2, an image's axes), coords
        stored beside it by xarray (or an image's scale and translation), name and attrs; the
        values are this function's lazy array. ``path`` may be a group written by xarray with
        one data variable.

    Returns
    -------
    dask.array.Array
        By default one Dask chunk per stored chunk (per shard for a sharded array). Operations
        on it compute tiles of several stored chunks per task and write their outputs in these
        stored chunks (see :func:`save`). An image's axis names, units and scales are kept
        with it: operations take ``axes`` by name and :func:`save` writes an image.
    """
    if xarray:  # distconv.open (distconv.labelled's wrapper of this function) answers it
        raise DistconvError("open(..., xarray=True) is distconv.open's; call distconv.open")
    text = os.fspath(path)
    if text.endswith(".npy") and os.path.isfile(text):
        from distconv.weights import load_npy

        array = load_npy(text, mmap=True)
        x = da.from_array(array, chunks="auto")
        return remember_source(x, {"path": os.path.abspath(text), "zarr_format": None})
    location = Location.parse(text, storage_options)
    if is_tiff(location.url):
        x = open_tiff(location, level)
        return x if chunks is None else x.rechunk(chunks)
    array, image = _open_level(location, level)
    produced = dict(array.attrs).get(ATTRS_KEY)
    if isinstance(produced, dict) and not produced.get("complete", True) and not allow_partial:
        raise DistconvError(
            f"{location.shown} is a partial distconv output (not every chunk was written); "
            "finish it with --resume, or open it with allow_partial=True"
        )
    if isinstance(produced, dict) and produced.get("complete"):
        array = _missing_chunks_are_errors(array)
    where = location.child(image["path"]) if image and "path" in image else location
    layout = array_layout(array)
    x = _from_zarr(array, where.url, chunks or layout.unit)
    remember_layout(x, {**layout.record(array.shape), "zarr_format": array.metadata.zarr_format})
    record = {
        "path": where.url,
        "zarr_format": array.metadata.zarr_format,
        "shape": tuple(array.shape),
        "chunks": layout.chunks,
        "shards": layout.shards,
        "chunks_given": chunks is not None,  # the caller's blocks: operations keep them
    }
    record.update({k: v for k, v in (image or {}).items() if k != "path"})
    if "axes" not in record:  # dims written by xarray (or a DataArray's save): axes by name
        dims = dims_of(array)
        if dims is not None and len(dims) == array.ndim:
            record["axes"] = [{"name": d, "type": axis_type(d)} for d in dims]
    return remember_source(x, record)


def _open_level(location: Location, level: int | None) -> tuple[zarr.Array, dict | None]:
    """The array at ``location`` (with its image's description if it is a level of one), or the
    chosen level of the OME-Zarr image there."""
    node = _open_node(location, "r")
    if isinstance(node, zarr.Group) and multiscale_of(dict(node.attrs)) is None:
        with contextlib.suppress(DistconvError):
            name = data_variable(node, location.shown)  # a Dataset of one variable (xarray's)
            array, image = _open_level(location.child(name), level)
            return array, {**(image or {}), "path": name}
    if isinstance(node, zarr.Group):
        array, image = image_level(node, location.url, level)
        return array, {"path": array.path[len(node.path) :].strip("/"), **image}
    if level is not None:
        raise DistconvError(
            "--level applies to an OME-Zarr image or a pyramidal TIFF; "
            f"{location.shown} is an array"
        )
    parent = location.parent()
    group = None
    if parent is not None:
        with contextlib.suppress(Exception):  # no readable group above: a plain array
            group = zarr.open_group(parent.zarr_store(), mode="r")
    return node, image_of_array(group, location.name, parent.url if parent else "", node.shape)


def _missing_chunks_are_errors(array: zarr.Array) -> zarr.Array:
    """The same array read through :class:`MissingChunksAreErrors`: every unit of a complete
    distconv output was written and checked, so one missing later is damage, not zeros."""
    with reading_config(read_pipeline()):
        return zarr.open_array(store=MissingChunksAreErrors(array.store), path=array.path, mode="r")


def _from_zarr(array: zarr.Array, path: str, chunks) -> da.Array:
    """``da.from_zarr`` whose chunk reads name the store and chunk when they fail."""
    name = "from-zarr-" + tokenize(path, array.shape, array.dtype, chunks, dict(array.attrs))
    x = da.from_array(
        array,
        chunks=chunks,
        name=name,
        getitem=ChunkReader(path),
        meta=np.empty((0,) * array.ndim, dtype=array.dtype),
    )
    remember_store(x, RegionReader(array, path))
    return x


def open_zarr_array(
    path, mode: str = "r", storage_options: dict[str, Any] | None = None
) -> zarr.Array:
    """Open a Zarr array (a path or a URL), with one-line errors for what is not one."""
    location = path if isinstance(path, Location) else Location.parse(path, storage_options)
    node = _open_node(location, mode)
    if isinstance(node, zarr.Group):
        url = location.shown
        if multiscale_of(dict(node.attrs)) is not None:
            raise DistconvError(f"{url} is an OME-Zarr image, not an array; open it with dc.open")
        names = [name for name, _ in node.arrays()]
        nested = [f"{name}/..." for name, _ in node.groups()]
        hint = ", ".join(f"{url}/{n}" for n in (names + nested)[:6]) or "none"
        raise DistconvError(f"{url} is a Zarr group, not an array; arrays inside: {hint}")
    return node


def _open_node(location: Location, mode: str) -> zarr.Array | zarr.Group:
    """``zarr.open`` of a local path or URL; a missing store, bucket or credentials, or denied
    access, is one line."""
    url = location.shown
    if not location.remote and not os.path.exists(location.url):
        raise DistconvError(f"{url}: no such file or directory")
    try:
        # Absolute (or a URL): the array object is pickled into tasks, and a remote worker's
        # working directory is not ours. The codec pipeline is chosen here and travels with it.
        with reading_config(read_pipeline() if mode == "r" else {}):
            return zarr.open(location.zarr_store(read_only=mode == "r"), mode=mode)
    except Exception as exc:  # zarr raises several types for missing or unreadable metadata
        if location.remote:
            raise remote_error(location, exc) from None
        raise DistconvError(
            f"{url} is not a readable Zarr array or group ({one_line(exc)})"
        ) from exc


def as_dask_array(input) -> da.Array:
    """Accept a path, a zarr.Array, a dask array or an in-memory array and return a dask array."""
    if isinstance(input, da.Array):
        return input
    if isinstance(input, (str, os.PathLike)):
        return open(input)
    if isinstance(input, zarr.Array):
        x = da.from_zarr(input)
        return x
    if hasattr(input, "__array_function__") or isinstance(input, (list, tuple)):
        array = input if hasattr(input, "shape") else np.asarray(input)
        return da.from_array(array, chunks="auto", asarray=False)
    raise DistconvError(f"cannot use {type(input).__name__} as an array")


def info(path, *, level: int | None = None, storage_options=None) -> StoreInfo:
    """Describe a stored array: shape, dtype, chunks, codecs, bytes, provenance, completeness.

    Parameters
    ----------
    path : str or os.PathLike
        A Zarr array, an OME-Zarr image (its level ``level``, 0 by default) or a TIFF; local
        or a URL.
    level : int, optional
        The level of an image to describe.
    storage_options : dict, optional
        fsspec options for a URL.

    Returns
    -------
    StoreInfo
        A dict (shown as a table in a notebook): ``image`` describes an OME-Zarr image or a
        TIFF (axes, levels, scale); ``complete`` is None for what distconv did not write.
    """
    location = Location.parse(path, storage_options)
    if is_tiff(location.url):
        return StoreInfo(describe_tiff(open_tiff(location, level), location.url))
    array, image = _open_level(location, level)
    produced = dict(array.attrs).get(ATTRS_KEY)
    return StoreInfo(
        {
            "path": location.url,
            "zarr_format": array.metadata.zarr_format,
            "shape": tuple(array.shape),
            "dtype": str(array.dtype),
            "chunks": tuple(array.chunks),
            "shards": tuple(array.shards) if getattr(array, "shards", None) else None,
            "codecs": [_codec_name(c) for c in (*array.filters, *array.compressors)],
            "nbytes": int(array.nbytes),
            "nbytes_stored": _stored_bytes(array, location, image),
            "chunks_initialized": _chunks_initialized(array, location, image),
            "chunks_total": int(array.nchunks),
            "image": describe_image(location, image),
            "provenance": produced,
            "complete": None if not isinstance(produced, dict) else bool(produced.get("complete")),
        }
    )


class StoreInfo(dict):
    """What :func:`info` returns: a plain dict of the store's facts that a notebook shows as a
    table (``_repr_html_``); ``json.dumps`` and every dict use see only the dict."""

    __slots__ = ()

    def table_rows(self) -> list[tuple[str, Any]]:
        """(field, value) rows: the keys ``distconv info`` prints, in its order.

        Returns
        -------
        list of (str, object)
            Keys absent or None are left out; an image's axes and levels and a distconv
            store's status and steps get a row each.
        """
        from distconv._html import cell_text

        rows: list[tuple[str, Any]] = []
        for key in ("path", "format", "zarr_format", "shape", "dtype", "chunks", "shards"):
            if self.get(key) is not None:
                rows.append((key, self[key]))
        if self.get("codecs") is not None:
            rows.append(("codecs", ", ".join(map(str, self["codecs"])) or "none"))
        image = self.get("image")
        if image:
            kind = f"OME-Zarr {image['ngff']}" if image.get("ngff") else "TIFF"
            rows.append(("image", f"{kind}, level {image['level']} of {len(image['levels'])}"))
            axes = [f"{a} ({u})" if u else str(a) for a, u in zip(image["axes"], image["units"])]
            rows.append(("axes", ", ".join(axes)))
            for index, each in enumerate(image["levels"]):
                scale = f", scale {cell_text(each['scale'])}" if each.get("scale") else ""
                shape = cell_text(each["shape"]) if each["shape"] else "missing"
                rows.append((f"level {index}", f"{each['path']}: {shape}{scale}"))
        stored = self.get("nbytes_stored")
        rows.append(
            ("bytes", f"{self['nbytes']:,}" + ("" if stored is None else f" ({stored:,} stored)"))
        )
        if "chunks_total" in self:
            rows.append(
                (
                    "chunks written",
                    f"{self['chunks_initialized']:,} of {self['chunks_total']:,}",
                )
            )
        produced = self.get("provenance")
        if not isinstance(produced, dict):
            if "nbytes_stored" in self:
                rows.append(("provenance", "none (not written by distconv)"))
            return rows
        rows.append(("status", "complete" if self.get("complete") else "partial"))
        for step in produced.get("steps", []):
            params = ", ".join(f"{k}={v}" for k, v in step.get("parameters", {}).items())
            rows.append(
                (
                    "operation",
                    f"{step.get('operation')} ({params}); method {step.get('method')}, "
                    f"engine {step.get('engine')}",
                )
            )
        for key in ("inputs", "command", "version", "created", "finished"):
            if key in produced:
                rows.append((key, produced[key]))
        return rows

    def _repr_html_(self) -> str:
        from distconv._html import html_table

        return html_table(self.table_rows(), title="distconv.info")


def _stored_bytes(array: zarr.Array, location: Location, image: dict | None) -> int:
    """Bytes stored for the array; on an object store one listing (zarr asks each object)."""
    if not location.remote:
        return int(array.nbytes_stored())
    where = location.child(image["path"]) if image and image.get("path") else location
    fs, root = where.filesystem()
    return int(fs.du(root))


def _chunks_initialized(array: zarr.Array, location: Location, image: dict | None) -> int:
    """Stored chunks written; in a sharded array, the in-bounds chunks of the shards written
    (Zarr counts a partial edge shard's out-of-bounds chunks too)."""
    layout = array_layout(array)
    if not layout.shards:
        return int(array.nchunks_initialized)
    where = location.child(image["path"]) if image and image.get("path") else location
    return chunks_in_units(array.shape, layout, units_written(where.keys(), array, layout))


def _codec_name(codec) -> str:
    text = repr(codec)
    return text if len(text) <= 80 else text[:77] + "..."
