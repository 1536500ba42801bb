"""Zarr in and out: open lazily, save in whole stored chunks with provenance, describe a store.

Output safety (docs/architecture.md): the output keeps the stored chunks (and shards) of what it
was computed from unless told otherwise (:mod:`distconv.layout`), every task writes whole chunks
(shards, or a pyramid tile covering whole chunks of every level) and none is written by two
tasks; its attributes record what produced it, and ``complete`` becomes true only after the last
one is written. Outputs may live on any fsspec store (:mod:`distconv.stores`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize

from distconv._version import __version__
from distconv.clipping import clipped_record
from distconv.errors import DistconvError, InputReadError, JobFailed, one_line
from distconv.executor import compute_blocks
from distconv.layout import (
    array_layout,
    chunks_in_units,
    default_format,
    planned_layout,  # noqa: F401 - part of io's API: the layout save() would write
    regular_chunks,  # noqa: F401 - its documented home was here
    units_written,
)
from distconv.ome import describe_image, image_level, image_of_array, multiscale_of, output_image
from distconv.outputs import check_output_location, create_output
from distconv.provenance import (
    remember_layout,
    remember_source,
    saturating_cast_source,
    sources,
    steps,
)
from distconv.reading import ChunkReader, RegionReader, read_pipeline, remember_store
from distconv.stores import Location, public_options, redact, remote_error, storage_failure
from distconv.tiff import describe_tiff, is_tiff, open_tiff
from distconv.writing import image_record, plan_writes, reopen_for_resume

ATTRS_KEY = "distconv"


def open(
    path,
    *,
    level: int | None = None,
    storage_options: dict[str, Any] | None = None,
    allow_partial: bool = False,
    chunks=None,
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

    Returns
    -------
    dask.array.Array
        By default one Dask chunk per stored chunk (per shard for a sharded array). Operations
        on it compute tiles of several stored chunks per task and write their outputs in these
        stored chunks (see :func:`save`). An image's axis names, units and scales are kept
        with it: operations take ``axes`` by name and :func:`save` writes an image.
    """
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
    return remember_source(x, record)


def _open_level(location: Location, level: int | None) -> tuple[zarr.Array, dict | None]:
    """The array at ``location`` (with its image's description if it is a level of one), or the
    chosen level of the OME-Zarr image there."""
    node = _open_node(location, "r")
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
        with zarr.config.set(read_pipeline() if mode == "r" else {}):
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


def check_output_path(
    path, inputs: Sequence[str], overwrite: bool, resume: bool = False, storage_options=None
) -> None:
    """Refuse an output that would destroy an input or an existing store.

    ``path`` and ``inputs`` are local paths or URLs (a :class:`~distconv.stores.Location` is
    taken as is). With ``resume`` an existing output is allowed (it must be a Zarr store;
    :func:`save` checks its provenance); ``overwrite`` and ``resume`` exclude each other.
    """
    target = path if isinstance(path, Location) else Location.parse(path, storage_options)
    check_output_location(target, target.shown, inputs, overwrite, resume)


def save(
    x,
    path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    zarr_format: int | None = None,
    chunks=None,
    shards=None,
    attributes: dict[str, Any] | None = None,
    progress: bool | None = None,
    description: str = "writing",
    storage_options: dict[str, Any] | None = None,
    pyramid: int | None = None,
    pyramid_method: str = "mean",
    pyramid_axes: Sequence[str] | None = None,
    ome: bool | None = None,
) -> zarr.Array:
    """Compute ``x`` and write it to a new Zarr array or OME-Zarr image at ``path``, tile by
    tile.

    Parameters
    ----------
    x : dask.array.Array or array_like
        What to write; a lazy array is computed on the current Dask client (or threads).
    path : str or os.PathLike
        A new local directory or an fsspec URL (``s3://bucket/out.zarr``). An existing store is
        replaced only with ``overwrite=True``, and only if it is a Zarr store; the inputs of
        ``x`` are never written.
    overwrite : bool
        Replace an existing Zarr store at ``path``.
    resume : bool
        Finish an interrupted :func:`save` of the same job: the output at ``path`` is reopened,
        its recorded provenance (inputs, operations and their parameters, weights hash, shape,
        dtype, chunks, shards, pyramid; not the engine or method) must match ``x``, and only
        the tiles with chunks (shards, pyramid tiles) not yet written are computed; only those
        are written. Without an output at ``path`` this is a plain save.
    zarr_format : {2, 3}, optional
        Default: the format of the Zarr store ``x`` was read from (NGFF 0.4 is Zarr v2, 0.5
        is v3), else 3.
    chunks : int, sequence of int or str, optional
        Chunk shape of the output (-1: a whole axis). Default: the stored chunks of the array
        ``x`` was computed from (as :func:`open` read it), else the Dask chunks of ``x``.
    shards : int, sequence of int, str or False, optional
        Shard shape (Zarr format 3, whole multiples of the chunks): far fewer files for small
        chunks. Default: the shards of the array ``x`` was computed from when its chunks are
        kept, else none; False: not sharded. Not with a pyramid.
    attributes : dict, optional
        Extra provenance to record under ``attrs["distconv"]``.
    progress : bool, optional
        Show a progress bar (default from config ``distconv.progress``).
    description : str
        Label of the progress bar.
    storage_options : dict, optional
        fsspec options for a URL (endpoint, credentials); recorded without secrets.
    pyramid : int, optional
        Write an OME-Zarr image with this many levels (level 0 the result), each computed from
        the tile its task holds: no second read of the result.
    pyramid_method : {'mean', 'nearest'}
        2× local mean (images) or first sample (labels) per halved axis, stated in the image's
        metadata.
    pyramid_axes : sequence of str, optional
        Axes halved per level; default the space axes other than ``z``.
    ome : bool, optional
        Write an OME-Zarr image (default: when ``x`` was read from one, or with a pyramid).

    Returns
    -------
    zarr.Array
        The written array (level 0 of an image), with ``attrs["distconv"]["complete"] == True``.

    Raises
    ------
    OutputError
        The output is unsafe, cannot be created, or (resume) records a different job.
    InputReadError
        A chunk of an input cannot be read; an output created by this call is removed.
    JobFailed
        Writing failed (disk full, read-only, a store unreachable, a worker lost): the output
        stays partial, never marked complete, and ``resume=True`` finishes it.

    Notes
    -----
    Every task writes a block of whole chunks (shards; with a pyramid, a tile covering whole
    chunks of every level), and no chunk (shard) is written by two tasks. Each is one object
    written atomically (the local store writes a temporary file and renames it; an object
    store's PUT is atomic), so an object that exists is complete: resume needs no other record.
    """
    location = Location.parse(path, storage_options)
    x = as_dask_array(x)
    unclipped = saturating_cast_source(x)  # integer filter output: written from its floats
    read = sources(x)
    # An image's other levels are the input too: nothing is written inside an input image.
    protected = [s["path"] for s in read] + [s["image"] for s in read if s.get("image")]
    check_output_path(location, protected, overwrite, resume)
    image = output_image(
        read,
        x.shape,
        pyramid=pyramid,
        method=pyramid_method,
        axes_to_halve=pyramid_axes,
        ome=ome,
        zarr_format=zarr_format,
    )
    zarr_format = zarr_format or (image.zarr_format if image else default_format(x))
    plan = plan_writes(x, unclipped, chunks, shards, zarr_format, image)
    x = plan.x

    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    record = _jsonable(
        {
            "version": __version__,
            "created": now,
            "inputs": [s["path"] for s in read],
            "steps": steps(x),
            "shape": list(x.shape),
            "dtype": str(x.dtype),
            "chunks": list(plan.layout.chunks),
            **({"shards": list(plan.layout.shards)} if plan.layout.shards else {}),
            **image_record(image),
            **({"storage_options": public_options(storage_options)} if storage_options else {}),
            **(attributes or {}),
            "complete": False,
        }
    )
    created = not (resume and location.exists())
    if created:
        location.remove()  # an output being replaced (--overwrite); missing is fine
        targets = create_output(
            location,
            x.shape,
            x.dtype,
            plan.tiling,
            zarr_format,
            {ATTRS_KEY: record},
            image,
            shards=plan.layout.shards,
        )
        done: set[tuple[int, ...]] = set()
    else:
        targets, record, done = reopen_for_resume(location, x, record, plan, image, ATTRS_KEY)
        record.setdefault("resumed", []).append(
            {
                "at": now,
                "chunks_already_written": len(done),
                "chunks_total": plan.units_total(),
                "unit": plan.unit_name,
                "tasks": math.prod(x.numblocks),
                **(attributes or {}),
            }
        )
        targets[0].attrs.update({ATTRS_KEY: _jsonable(record)})

    # The array objects travel with each task: reopening the store per block costs a metadata
    # read (~5 ms) per chunk. Each task casts (integer output from its floats), counts the
    # clipped samples and writes its whole units (every level of a pyramid tile).
    written, skip = plan.writes(targets, done)
    shown = location.shown
    counts: list = []
    try:
        compute_blocks(
            written, description=description, progress=progress, skip=skip, results=counts
        )
    except InputReadError:
        if created:  # bad input, not a failed write: leave nothing behind
            location.remove()
        raise
    except Exception as exc:
        if storage_failure(exc):
            raise JobFailed(
                f"writing {shown} failed ({redact(one_line(exc))}); the output is partial, "
                "not marked complete: fix the cause and rerun with --resume (resume=True)"
            ) from exc
        if type(exc).__name__ != "KilledWorker":  # distributed's; not imported unless used
            raise
        raise JobFailed(
            f"a Dask worker died while computing {shown} ({one_line(exc)}); the "
            "output is partial, not marked complete: rerun with --resume "
            "(resume=True), with more memory per worker if it was killed for "
            "memory"
        ) from exc
    if unclipped is not None:
        counted, total = plan.chunks_counted(done)
        record["clipped"] = clipped_record(record.get("clipped"), counts, counted, total, x.dtype)
    record["complete"] = True
    record["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    targets[0].attrs.update({ATTRS_KEY: _jsonable(record)})
    return targets[0]


def info(path, *, level: int | None = None, storage_options=None) -> dict[str, Any]:
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
    dict
        ``image`` describes an OME-Zarr image or a TIFF (axes, levels, scale); ``complete`` is
        None for what distconv did not write.
    """
    location = Location.parse(path, storage_options)
    if is_tiff(location.url):
        return describe_tiff(open_tiff(location, level), location.url)
    array, image = _open_level(location, level)
    produced = dict(array.attrs).get(ATTRS_KEY)
    return {
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


def _jsonable(value):
    """Attributes are JSON: turn NumPy scalars, tuples and arrays into plain values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.dtype):
        return str(value)
    return value
