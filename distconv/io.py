"""Zarr in and out: open lazily, save in whole stored chunks with provenance, describe a store.

Output safety (docs/architecture.md): the output keeps the stored chunks (and shards) of what it
was computed from unless told otherwise (:mod:`distconv.layout`), every task writes whole chunks
(shards) and none is written by two tasks; its attributes record what produced it, and
``complete`` becomes true only after the last one is written.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from dask.array.core import getter
from dask.base import tokenize

from distconv._version import __version__
from distconv.clipping import clipped_record
from distconv.errors import DistconvError, InputReadError, JobFailed, OutputError
from distconv.executor import compute_blocks
from distconv.layout import (
    Layout,
    aligned_chunks,
    array_layout,
    chunks_in_units,
    count_units,
    default_format,
    output_layout,
    planned_layout,  # noqa: F401 - part of io's API: the layout save() would write
    regular_chunks,  # noqa: F401 - its documented home was here
    remove_interrupted_writes,
    units_written,
    write_tiles,
)
from distconv.provenance import (
    remember_layout,
    remember_source,
    saturating_cast_source,
    sources,
    steps,
)
from distconv.reading import damaged_chunk, read_pipeline

ATTRS_KEY = "distconv"


def open(path, *, allow_partial: bool = False, chunks=None) -> da.Array:
    """Open a Zarr array (v2 or v3, or one inside a group: ``big.zarr/raw/0``) lazily.

    Parameters
    ----------
    path : str or os.PathLike
        Directory of a Zarr array, or a ``.npy`` file (memory-mapped).
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
        stored chunks (see :func:`save`).
    """
    path = os.fspath(path)
    if path.endswith(".npy") and os.path.isfile(path):
        from distconv.weights import load_npy

        array = load_npy(path, mmap=True)
        x = da.from_array(array, chunks="auto")
        return remember_source(x, {"path": os.path.abspath(path), "zarr_format": None})
    array = open_zarr_array(path)
    produced = dict(array.attrs).get(ATTRS_KEY)
    if isinstance(produced, dict) and not produced.get("complete", True) and not allow_partial:
        raise DistconvError(
            f"{path} is a partial distconv output (not every chunk was written); "
            "finish it with --resume, or open it with allow_partial=True"
        )
    layout = array_layout(array)
    x = _from_zarr(array, os.path.abspath(path), chunks or layout.unit)
    remember_layout(x, {**layout.record(array.shape), "zarr_format": array.metadata.zarr_format})
    return remember_source(
        x,
        {
            "path": os.path.abspath(path),
            "zarr_format": array.metadata.zarr_format,
            "shape": tuple(array.shape),
            "chunks": layout.chunks,
            "shards": layout.shards,
            "chunks_given": chunks is not None,  # the caller's blocks: operations keep them
        },
    )


def _from_zarr(array: zarr.Array, path: str, chunks) -> da.Array:
    """``da.from_zarr`` whose chunk reads name the store and chunk when they fail."""
    name = "from-zarr-" + tokenize(path, array.shape, array.dtype, chunks, dict(array.attrs))
    return da.from_array(
        array,
        chunks=chunks,
        name=name,
        getitem=_ChunkReader(path),
        meta=np.empty((0,) * array.ndim, dtype=array.dtype),
    )


class _ChunkReader:
    """Dask ``getitem`` for Zarr inputs: a damaged chunk becomes an :class:`InputReadError`.

    Such damage is only seen when a task reads the chunk, so the error travels back from the
    worker as this (picklable) type, which the CLI reports as bad input. A task reading a tile
    of many chunks reads them again one by one to name the damaged one.
    """

    def __init__(self, path: str):
        self.path = path

    def __call__(self, array, index, asarray=True, lock=None):
        try:
            return getter(array, index, asarray=asarray, lock=lock)
        except Exception as exc:
            index = index if isinstance(index, tuple) else (index,)
            where, exc = damaged_chunk(array, index, exc)
            raise InputReadError(
                f"{self.path}: the chunk at [{where}] cannot be read "
                f"({type(exc).__name__}: {_one_line(exc)}); the input is "
                "damaged"
            ) from None


def open_zarr_array(path: str, mode: str = "r") -> zarr.Array:
    """Open a Zarr array on disk, with one-line errors for what is not one."""
    if not os.path.exists(path):
        raise DistconvError(f"{path}: no such file or directory")
    try:
        # Absolute: the array object is pickled into tasks, and a remote worker's working
        # directory is not ours. The codec pipeline is chosen here and travels with it.
        with zarr.config.set(read_pipeline() if mode == "r" else {}):
            node = zarr.open(os.path.abspath(path), mode=mode)
    except Exception as exc:  # zarr raises several types for missing or unreadable metadata
        raise DistconvError(
            f"{path} is not a readable Zarr array or group ({_one_line(exc)})"
        ) from exc
    if isinstance(node, zarr.Group):
        names = [name for name, _ in node.arrays()]
        nested = [f"{name}/..." for name, _ in node.groups()]
        hint = ", ".join(f"{path.rstrip('/')}/{n}" for n in (names + nested)[:6]) or "none"
        raise DistconvError(f"{path} is a Zarr group, not an array; arrays inside: {hint}")
    return node


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
    path: str, inputs: Sequence[str], overwrite: bool, resume: bool = False
) -> None:
    """Refuse an output that would destroy an input or an existing store.

    With ``resume`` an existing output is allowed (it must be a Zarr store; :func:`save`
    checks its provenance); ``overwrite`` and ``resume`` exclude each other.
    """
    if overwrite and resume:
        raise OutputError("--overwrite starts again and --resume continues: choose one")
    target = Path(path).resolve()
    for source in inputs:
        source_path = Path(source).resolve()
        if target == source_path:
            raise OutputError(f"output {path} is the input; choose another path")
        if source_path in target.parents:
            raise OutputError(f"output {path} is inside the input {source}; choose another path")
        if target in source_path.parents:
            raise OutputError(f"output {path} contains the input {source}; choose another path")
    if os.path.lexists(path):
        if not (overwrite or resume):
            raise OutputError(
                f"output {path} already exists; pass --overwrite (overwrite=True) "
                "to replace it, or --resume (resume=True) to finish it"
            )
        if not _looks_like_zarr(path):
            raise OutputError(
                f"output {path} exists and is not a Zarr store; not "
                f"{'resuming' if resume else 'replacing'} it"
            )


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
) -> zarr.Array:
    """Compute ``x`` and write it to a new Zarr array at ``path``, tile by tile.

    Parameters
    ----------
    x : dask.array.Array or array_like
        What to write; a lazy array is computed on the current Dask client (or threads).
    path : str or os.PathLike
        A new directory. An existing one is replaced only with ``overwrite=True``, and only if
        it is a Zarr store; the inputs of ``x`` are never written.
    overwrite : bool
        Replace an existing Zarr store at ``path``.
    resume : bool
        Finish an interrupted :func:`save` of the same job: the output at ``path`` is reopened,
        its recorded provenance (inputs, operations and their parameters, weights hash, shape,
        dtype, chunks, shards; not the engine or method) must match ``x``, and only the tiles
        with chunks (shards) not yet written are computed; only those are written. Without an
        output at ``path`` this is a plain save.
    zarr_format : {2, 3}, optional
        Default: the format of the Zarr store ``x`` was read from, else 3.
    chunks : int, sequence of int or str, optional
        Chunk shape of the output (-1: a whole axis). Default: the stored chunks of the array
        ``x`` was computed from (as :func:`open` read it), else the Dask chunks of ``x``.
    shards : int, sequence of int, str or False, optional
        Shard shape (Zarr format 3, whole multiples of the chunks): far fewer files for small
        chunks. Default: the shards of the array ``x`` was computed from when its chunks are
        kept, else none; False: not sharded.
    attributes : dict, optional
        Extra provenance to record under ``attrs["distconv"]``.
    progress : bool, optional
        Show a progress bar (default from config ``distconv.progress``).

    Returns
    -------
    zarr.Array
        The written array, with ``attrs["distconv"]["complete"] == True``.

    Raises
    ------
    OutputError
        The output is unsafe, cannot be created, or (resume) records a different job.
    InputReadError
        A chunk of an input cannot be read; an output created by this call is removed.
    JobFailed
        Writing failed (disk full, read-only, a worker lost): the output stays partial, never
        marked complete, and ``resume=True`` finishes it once the cause is fixed.

    Notes
    -----
    Every task writes a block of whole chunks (shards), and no chunk (shard) is written by two
    tasks: blocks that straddle them are regrouped first. Each chunk or shard is one Zarr
    object written atomically (the local store writes a temporary file and renames it), so an
    object that exists is complete: resume needs no other record.
    """
    path = os.fspath(path)
    x = as_dask_array(x)
    unclipped = saturating_cast_source(x)  # integer filter output: written from its floats
    read = sources(x)
    check_output_path(path, [s["path"] for s in read], overwrite, resume)
    zarr_format = zarr_format or default_format(x)
    layout = output_layout(x, chunks, shards, zarr_format)
    tiles = aligned_chunks(x.chunks, layout.unit)
    if tiles != x.chunks:
        x = x.rechunk(tiles)
        unclipped = None if unclipped is None else unclipped.rechunk(tiles)

    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    record = _jsonable(
        {
            "version": __version__,
            "created": now,
            "inputs": [s["path"] for s in read],
            "steps": steps(x),
            "shape": list(x.shape),
            "dtype": str(x.dtype),
            "chunks": list(layout.chunks),
            **({"shards": list(layout.shards)} if layout.shards else {}),
            **(attributes or {}),
            "complete": False,
        }
    )
    created = not (resume and os.path.lexists(path))
    if created:
        if os.path.lexists(path):
            shutil.rmtree(path)
        target = _create_output(path, x, layout, zarr_format, record)
        done: set[tuple[int, ...]] = set()
    else:
        target, record, done = _reopen_for_resume(path, x, record, layout)
        record.setdefault("resumed", []).append(
            {
                "at": now,
                "chunks_already_written": len(done),
                "chunks_total": count_units(x.shape, layout),
                "unit": layout.unit_name,
                **(attributes or {}),
            }
        )
        target.attrs.update({ATTRS_KEY: _jsonable(record)})

    # The array object travels with each task: reopening the store per block costs a metadata
    # read (~5 ms) per chunk.
    if unclipped is None:
        written, skip = write_tiles(x, target, layout, done)
    else:  # cast each unit from the floats, count its clipped samples, write it
        written, skip = write_tiles(unclipped, target, layout, done, out_dtype=x.dtype)
    counts: list = []
    try:
        compute_blocks(
            written, description=description, progress=progress, skip=skip, results=counts
        )
    except InputReadError:
        if created:  # bad input, not a failed write: leave nothing behind
            shutil.rmtree(path, ignore_errors=True)
        raise
    except OSError as exc:
        raise JobFailed(
            f"writing {path} failed ({_one_line(exc)}); the output is partial, "
            "not marked complete: fix the cause and rerun with --resume "
            "(resume=True)"
        ) from exc
    except Exception as exc:
        if type(exc).__name__ != "KilledWorker":  # distributed's; not imported unless used
            raise
        raise JobFailed(
            f"a Dask worker died while computing {path} ({_one_line(exc)}); the "
            "output is partial, not marked complete: rerun with --resume "
            "(resume=True), with more memory per worker if it was killed for "
            "memory"
        ) from exc
    if unclipped is not None:
        total = chunks_in_units(x.shape, layout, np.ndindex(*layout.grid(x.shape)))
        record["clipped"] = clipped_record(
            record.get("clipped"),
            counts,
            total - chunks_in_units(x.shape, layout, done),
            total,
            x.dtype,
        )
    record["complete"] = True
    record["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    target.attrs.update({ATTRS_KEY: _jsonable(record)})
    return target


def _create_output(
    path: str, x: da.Array, layout: Layout, zarr_format: int, record: dict[str, Any]
) -> zarr.Array:
    try:
        # write_empty_chunks: every chunk becomes an object, so "chunk object exists" means
        # "chunk written" for resume and for info's count, even where the result is all zeros.
        return zarr.create_array(
            store=os.path.abspath(path),  # pickled into tasks: remote workers' cwd differs
            shape=x.shape,
            chunks=layout.chunks,
            shards=layout.shards,
            dtype=x.dtype,
            zarr_format=zarr_format,
            attributes={ATTRS_KEY: record},
            config={"write_empty_chunks": True},
        )
    except OSError as exc:
        shutil.rmtree(path, ignore_errors=True)
        raise OutputError(f"cannot create output {path} ({_one_line(exc)})") from None


# Provenance that may differ between an interrupted run and its resumption: how chunks are
# computed (engine, method, the plan derived from them) and when or by which command.
_ENGINE_KEYS = {"engine", "method", "plan"}


def _comparable_steps(steps) -> list:
    result = []
    for step in steps or []:
        step = {k: v for k, v in step.items() if k not in _ENGINE_KEYS}
        if isinstance(step.get("parameters"), dict):
            step["parameters"] = {
                k: v for k, v in step["parameters"].items() if k not in _ENGINE_KEYS
            }
        result.append(step)
    return result


def _reopen_for_resume(path: str, x: da.Array, record: dict[str, Any], layout: Layout):
    """Open a partial output, check it records the same job, and find its written units."""
    array = open_zarr_array(path, mode="r+").with_config({"write_empty_chunks": True})
    old = dict(array.attrs).get(ATTRS_KEY)
    if not isinstance(old, dict):
        raise OutputError(f"cannot resume {path}: it was not written by distconv")
    found = array_layout(array)
    found = {
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "chunks": list(found.chunks),
        "shards": list(found.shards) if found.shards else None,
    }
    for key in ("inputs", "shape", "dtype", "chunks", "shards"):
        recorded = old.get(key, found.get(key))
        if recorded != record.get(key):
            raise OutputError(
                f"cannot resume {path}: {key} differ ({recorded} recorded, "
                f"{record.get(key)} now); use --overwrite to start again"
            )
    old_steps, new_steps = _comparable_steps(old.get("steps")), _comparable_steps(record["steps"])
    if len(old_steps) != len(new_steps):
        raise OutputError(
            f"cannot resume {path}: it records {len(old_steps)} operations, this "
            f"job has {len(new_steps)}; use --overwrite to start again"
        )
    for before, now in zip(old_steps, new_steps):
        for key in sorted(set(before) | set(now)):
            if key == "parameters":
                for name in sorted(set(before.get(key, {})) | set(now.get(key, {}))):
                    a, b = before.get(key, {}).get(name), now.get(key, {}).get(name)
                    if a != b:
                        raise OutputError(
                            f"cannot resume {path}: {name} differs ({a} recorded, "
                            f"{b} now); use --overwrite to start again"
                        )
            elif before.get(key) != now.get(key):
                what = "weights differ" if key.startswith("weights") else f"{key} differs"
                raise OutputError(
                    f"cannot resume {path}: {what} ({_short(before.get(key))} "
                    f"recorded, {_short(now.get(key))} now); use --overwrite to "
                    "start again"
                )
    remove_interrupted_writes(path)
    return array, old, units_written(path, array, layout)


def _short(value) -> str:
    text = str(value)
    return text[:16] + "…" if isinstance(value, str) and len(text) == 64 else text


def info(path) -> dict[str, Any]:
    """Describe a Zarr array: shape, dtype, chunks, codecs, bytes, provenance, completeness."""
    path = os.fspath(path)
    array = open_zarr_array(path)
    produced = dict(array.attrs).get(ATTRS_KEY)
    return {
        "path": path,
        "zarr_format": array.metadata.zarr_format,
        "shape": tuple(array.shape),
        "dtype": str(array.dtype),
        "chunks": tuple(array.chunks),
        "shards": tuple(array.shards) if getattr(array, "shards", None) else None,
        "codecs": [_codec_name(c) for c in (*array.filters, *array.compressors)],
        "nbytes": int(array.nbytes),
        "nbytes_stored": int(array.nbytes_stored()),
        "chunks_initialized": _chunks_initialized(path, array),
        "chunks_total": int(array.nchunks),
        "provenance": produced,
        "complete": None if not isinstance(produced, dict) else bool(produced.get("complete")),
    }


def _chunks_initialized(path: str, array: zarr.Array) -> int:
    """Stored chunks written; in a sharded array, the in-bounds chunks of the shards written
    (Zarr counts a partial edge shard's out-of-bounds chunks too)."""
    layout = array_layout(array)
    if not layout.shards:
        return int(array.nchunks_initialized)
    return chunks_in_units(array.shape, layout, units_written(path, array, layout))


def _codec_name(codec) -> str:
    text = repr(codec)
    return text if len(text) <= 80 else text[:77] + "..."


def _looks_like_zarr(path: str) -> bool:
    return any(
        os.path.exists(os.path.join(path, name)) for name in ("zarr.json", ".zarray", ".zgroup")
    )


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


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
