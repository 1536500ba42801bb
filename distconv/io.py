"""Zarr in and out: open lazily, save chunk-aligned with provenance, describe a store.

Output safety (DESIGN.md): the output array is created with chunks equal to the Dask chunks, so
no two tasks ever write the same Zarr chunk; its attributes record what produced it, and
``complete`` becomes true only after the last chunk is written.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import dask.array as da
import numpy as np
import zarr

from distconv._version import __version__
from distconv.backend import to_numpy
from distconv.errors import DistconvError, OutputError
from distconv.progress import compute_blocks

ATTRS_KEY = "distconv"

# Dask array name → where it was read from, and → what produced it. Graph layers keep these
# names, so save() finds the source and the provenance of anything derived from them.
_SOURCES: dict[str, dict[str, Any]] = {}
_PROVENANCE: dict[str, dict[str, Any]] = {}


def open(path, *, allow_partial: bool = False) -> da.Array:  # noqa: A001 - mirrors zarr.open
    """Open a Zarr array (v2 or v3, or one inside a group: ``big.zarr/raw/0``) lazily.

    Parameters
    ----------
    path : str or os.PathLike
        Directory of a Zarr array, or a ``.npy`` file (memory-mapped).
    allow_partial : bool
        Read a distconv output that is not marked complete (its missing chunks read as the fill
        value). By default such an output is refused.

    Returns
    -------
    dask.array.Array
        Chunks equal to the Zarr chunks.
    """
    path = os.fspath(path)
    if path.endswith(".npy") and os.path.isfile(path):
        from distconv.weights import load_npy

        array = load_npy(path, mmap=True)
        x = da.from_array(array, chunks="auto")
        _SOURCES[x.name] = {"path": os.path.abspath(path), "zarr_format": None}
        return x
    array = open_zarr_array(path)
    produced = dict(array.attrs).get(ATTRS_KEY)
    if isinstance(produced, dict) and not produced.get("complete", True) and not allow_partial:
        raise DistconvError(
            f"{path} is a partial distconv output (not every chunk was written); "
            "finish it with --resume, or open it with allow_partial=True"
        )
    x = da.from_zarr(array)
    _SOURCES[x.name] = {"path": os.path.abspath(path), "zarr_format": array.metadata.zarr_format}
    return x


def open_zarr_array(path: str, mode: str = "r") -> zarr.Array:
    """Open a Zarr array on disk, with one-line errors for what is not one."""
    if not os.path.exists(path):
        raise DistconvError(f"{path}: no such file or directory")
    try:
        node = zarr.open(path, mode=mode)
    except Exception as exc:  # zarr raises several types for missing or unreadable metadata
        raise DistconvError(f"{path} is not a readable Zarr array or group ({_one_line(exc)})") \
            from exc
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


def source_of(x: da.Array) -> dict[str, Any] | None:
    """Where ``x`` itself was read from (``{"path", "zarr_format"}``), or None.

    Only the array :func:`open` returned (or one registered with :func:`remember_source`) has
    a source; anything computed from it does not (use :func:`source_paths` for those).
    """
    return _SOURCES.get(x.name)


def remember_source(x: da.Array, record: dict[str, Any]) -> da.Array:
    """Record that ``x`` reads the store ``record["path"]`` (e.g. the same store rechunked).

    :func:`save` finds the inputs of a result by the names of its graph layers: provenance,
    and the refusal to write over an input, depend on every store read being registered.
    """
    _SOURCES[x.name] = dict(record)
    return x


def remember_provenance(x: da.Array, record: dict[str, Any]) -> da.Array:
    """Attach what produced ``x`` so that :func:`save` can write it into the output attributes."""
    _PROVENANCE[x.name] = record
    return x


def _graph_records(x: da.Array, registry: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [registry[name] for name in x.__dask_graph__().layers if name in registry]


def source_paths(x: da.Array) -> list[str]:
    """Paths of the stores ``x`` reads from (those opened through distconv)."""
    return [record["path"] for record in _graph_records(x, _SOURCES)]


def regular_chunks(chunks: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    """Chunks a Zarr array can hold: equal sizes with a smaller or equal last one.

    Irregular Dask chunks (merged halo chunks, uneven NumPy inputs) are replaced by a regular
    grid of the largest chunk size, so every task writes whole Zarr chunks of its own.
    """
    result = []
    for axis in chunks:
        axis = tuple(axis)
        size = axis[0]
        if all(c == size for c in axis[:-1]) and axis[-1] <= size:
            result.append(axis)
            continue
        size = max(axis)
        total = sum(axis)
        result.append((size,) * (total // size) + ((total % size,) if total % size else ()))
    return tuple(result)


def check_output_path(path: str, inputs: Sequence[str], overwrite: bool) -> None:
    """Refuse an output that would destroy an input or an existing store."""
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
        if not overwrite:
            raise OutputError(f"output {path} already exists; pass --overwrite (overwrite=True) "
                              "to replace it")
        if not _looks_like_zarr(path):
            raise OutputError(f"output {path} exists and is not a Zarr store; not replacing it")


def save(x, path, *, overwrite: bool = False, zarr_format: int | None = None,
         attributes: dict[str, Any] | None = None, progress: bool | None = None,
         description: str = "writing") -> zarr.Array:
    """Compute ``x`` and write it to a new Zarr array at ``path``, chunk by chunk.

    Parameters
    ----------
    x : dask.array.Array or array_like
        What to write; a lazy array is computed on the current Dask client (or threads).
    path : str or os.PathLike
        A new directory. An existing one is replaced only with ``overwrite=True``, and only if
        it is a Zarr store; the inputs of ``x`` are never written.
    zarr_format : {2, 3}, optional
        Default: the format of the Zarr store ``x`` was read from, else 3.
    attributes : dict, optional
        Extra provenance to record under ``attrs["distconv"]``.
    progress : bool, optional
        Show a progress bar (default from config ``distconv.progress``).

    Returns
    -------
    zarr.Array
        The written array, with ``attrs["distconv"]["complete"] == True``.
    """
    path = os.fspath(path)
    x = as_dask_array(x)
    sources = _graph_records(x, _SOURCES)
    check_output_path(path, [s["path"] for s in sources], overwrite)
    if zarr_format is None:
        formats = [s["zarr_format"] for s in sources if s["zarr_format"]]
        zarr_format = formats[0] if formats else 3
    chunks = regular_chunks(x.chunks)
    if chunks != x.chunks:
        x = x.rechunk(chunks)

    record = {
        "version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": [s["path"] for s in sources],
        "steps": _graph_records(x, _PROVENANCE),
        **(attributes or {}),
        "complete": False,
    }
    if os.path.lexists(path):
        shutil.rmtree(path)
    target = zarr.create_array(
        store=path, shape=x.shape, chunks=tuple(c[0] for c in chunks), dtype=x.dtype,
        zarr_format=zarr_format, attributes={ATTRS_KEY: _jsonable(record)},
    )
    # The array object travels with each task: reopening the store per block costs a metadata
    # read (~5 ms) per chunk.
    written = x.map_blocks(
        _write_block, target=target, chunks=(1,) * x.ndim, dtype=bool,
        meta=np.empty((0,) * x.ndim, dtype=bool), token="distconv-write",
    )
    compute_blocks(written, description=description, progress=progress)
    record["complete"] = True
    record["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    target.attrs.update({ATTRS_KEY: _jsonable(record)})
    return target


def _write_block(block, target: zarr.Array, block_info=None) -> np.ndarray:
    """Write one block into its own Zarr chunk and return a one-element marker.

    Blocks are the Zarr chunks (``regular_chunks``), so each write replaces whole chunk
    objects and no two tasks touch the same one.
    """
    region = tuple(slice(start, stop) for start, stop in block_info[0]["array-location"])
    target[region] = to_numpy(block)
    return np.ones((1,) * block.ndim, dtype=bool)


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
        "chunks_initialized": int(array.nchunks_initialized),
        "chunks_total": int(array.nchunks),
        "provenance": produced,
        "complete": None if not isinstance(produced, dict) else bool(produced.get("complete")),
    }


def _codec_name(codec) -> str:
    text = repr(codec)
    return text if len(text) <= 80 else text[:77] + "..."


def _looks_like_zarr(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, name))
               for name in ("zarr.json", ".zarray", ".zgroup"))


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
