""":func:`save` as its steps: plan, create or reopen, check what workers see, write, verify,
seal.

Output safety (docs/architecture.md): the output keeps the stored chunks (and shards) of what it
was computed from unless told otherwise (:mod:`distconv.save.layout`), every task writes whole
units and none is written by two tasks; before the first tile every worker that may run one has
shown that it sees the inputs and the output (:mod:`distconv.save.sight`); and ``complete``
becomes true only after the client has found every unit where it reads the output. Outputs may
live on any fsspec store (:mod:`distconv.stores`).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import zarr

from distconv._version import __version__
from distconv.errors import InputReadError, JobFailed, WorkersLost, one_line
from distconv.executor import compute_blocks
from distconv.io import ATTRS_KEY, as_dask_array
from distconv.ome import output_image
from distconv.provenance import images, saturating_cast_source, scratch_stores, sources, steps
from distconv.save.clipping import clipped_record
from distconv.save.layout import default_format
from distconv.save.outputs import check_output_location, create_output
from distconv.save.sight import Sight, check_workers_see, input_probes, remove_stale_tokens
from distconv.save.writing import (
    WritePlan,
    image_record,
    plan_writes,
    reopen_for_resume,
    units_found,
)
from distconv.stores import Location, public_options, redact, storage_failure

__all__ = ["check_output_path", "save"]


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
        ``x`` was computed from (as :func:`distconv.open` read it), else the Dask chunks of
        ``x``.
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
    WorkersCannotSee
        No worker of the cluster sees an input or the output; nothing is written.
    InputReadError
        A chunk of an input cannot be read; an output created by this call is removed.
    JobFailed
        Writing failed (disk full, read-only, a store unreachable, a worker lost), or units
        the workers wrote are not where this process reads the output: the output stays
        partial, never marked complete, and ``resume=True`` finishes it.

    Notes
    -----
    Every task writes a block of whole chunks (shards; with a pyramid, a tile covering whole
    chunks of every level), and no chunk (shard) is written by two tasks. Each is one object
    written atomically (the local store writes a temporary file and renames it; an object
    store's PUT is atomic), so an object that exists is complete: resume needs no other record.
    """
    job = plan_save(
        x,
        path,
        overwrite=overwrite,
        resume=resume,
        zarr_format=zarr_format,
        chunks=chunks,
        shards=shards,
        attributes=attributes,
        storage_options=storage_options,
        image_options={
            "pyramid": pyramid,
            "method": pyramid_method,
            "axes_to_halve": pyramid_axes,
            "ome": ome,
        },
    )
    output = create_or_reopen(job)
    sight = check_what_workers_see(job, output)
    try:
        counts = write(job, output, sight, description=description, progress=progress)
        verify(job, output)
    finally:
        sight.release_now()
    return seal(job, output, counts, sight)


@dataclass
class SaveJob:
    """What :func:`plan_save` decided: where, what, in which units, with which record."""

    location: Location
    plan: WritePlan
    image: Any  # ome.OutputImage or None
    zarr_format: int
    record: dict[str, Any]
    read: list[dict[str, Any]]
    resume: bool
    attributes: dict[str, Any]

    @property
    def x(self) -> da.Array:
        return self.plan.x


@dataclass
class Output:
    """The arrays being written (every level of an image) and the units already there."""

    targets: list
    done: set[tuple[int, ...]]
    created: bool
    record: dict[str, Any]


def plan_save(
    x,
    path,
    *,
    overwrite: bool,
    resume: bool,
    zarr_format: int | None,
    chunks,
    shards,
    attributes: dict[str, Any] | None,
    storage_options: dict[str, Any] | None,
    image_options: dict[str, Any],
) -> SaveJob:
    """Step 1: check the output is safe, choose the layout and write tiles, draft the record."""
    location = Location.parse(path, storage_options)
    x = as_dask_array(x)
    unclipped = saturating_cast_source(x)  # integer filter output: written from its floats
    read = sources(x)
    # An image's other levels are the input too: nothing is written inside an input image.
    protected = [s["path"] for s in read] + [s["image"] for s in read if s.get("image")]
    check_output_path(location, protected, overwrite, resume)
    image = output_image(read + images(x), x.shape, zarr_format=zarr_format, **image_options)
    zarr_format = zarr_format or (image.zarr_format if image else default_format(x))
    plan = plan_writes(x, unclipped, chunks, shards, zarr_format, image)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    record = _jsonable(
        {
            "version": __version__,
            "created": now,
            "inputs": [s["path"] for s in read],
            "steps": steps(plan.x),
            "shape": list(plan.x.shape),
            "dtype": str(plan.x.dtype),
            "chunks": list(plan.layout.chunks),
            **({"shards": list(plan.layout.shards)} if plan.layout.shards else {}),
            **image_record(image),
            **({"storage_options": public_options(storage_options)} if storage_options else {}),
            **(attributes or {}),
            "complete": False,
        }
    )
    return SaveJob(location, plan, image, zarr_format, record, read, resume, attributes or {})


def create_or_reopen(job: SaveJob) -> Output:
    """Step 2: create the output (replacing one with overwrite), or reopen a partial one to
    resume it and find the units it holds."""
    location, plan, x = job.location, job.plan, job.x
    if not (job.resume and location.exists()):
        location.remove()  # an output being replaced (--overwrite); missing is fine
        targets = create_output(
            location,
            x.shape,
            x.dtype,
            plan.tiling,
            job.zarr_format,
            {ATTRS_KEY: job.record},
            job.image,
            shards=plan.layout.shards,
        )
        return Output(targets, set(), True, job.record)
    targets, record, done = reopen_for_resume(location, x, job.record, plan, job.image, ATTRS_KEY)
    remove_stale_tokens(location)
    record.setdefault("resumed", []).append(
        {
            "at": job.record["created"],
            "chunks_already_written": len(done),
            "chunks_total": plan.units_total(),
            "unit": plan.unit_name,
            "tasks": math.prod(x.numblocks),
            **job.attributes,
        }
    )
    targets[0].attrs.update({ATTRS_KEY: _jsonable(record)})
    return Output(targets, done, False, record)


def check_what_workers_see(job: SaveJob, output: Output) -> Sight:
    """Step 3: every worker that may run a tile shows it sees the inputs and the output; an
    output this call created is removed again when none does."""
    try:
        return check_workers_see(input_probes(job.read + scratch_stores(job.x)), job.location)
    except BaseException:
        if output.created:
            job.location.remove()
        raise


def write(
    job: SaveJob, output: Output, sight: Sight, *, description: str, progress: bool | None
) -> list:
    """Step 4: run the write tasks (each casts, counts clipped samples and writes its whole
    units) on the admitted workers; returns the tasks' markers (clipped counts)."""
    # The array objects travel with each task: reopening the store per block costs a metadata
    # read (~5 ms) per chunk.
    written, skip = job.plan.writes(output.targets, output.done)
    shown = job.location.shown
    counts: list = []
    try:
        compute_blocks(
            written,
            description=description,
            progress=progress,
            skip=skip,
            results=counts,
            resources={sight.resource: 1} if sight.resource else None,
            watchers=[sight.watch] if sight.resource else (),
        )
    except InputReadError:
        if output.created:  # bad input, not a failed write: leave nothing behind
            sight.release_now()
            job.location.remove()
        raise
    except WorkersLost as exc:
        total = job.plan.units_total()
        try:
            found = str(len(units_found(job.location, output.targets[0], job.plan, job.image)))
        except Exception:  # the store cannot be listed now: the count is no reason to hide this
            found = "an unknown number"
        lost = f"all {exc.workers} workers were" if exc.workers > 1 else "the only worker was"
        raise WorkersLost(
            f"{lost} lost while computing {shown}; {found} of {total} {job.plan.unit_name}s "
            "are written; the output is partial, not marked complete",
            workers=exc.workers,
            waited=exc.waited,
        ) from exc
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
    return counts


def verify(job: SaveJob, output: Output) -> None:
    """Step 5: every unit the job should have written exists where this process reads the
    output (a task's success says it wrote, not where: a worker's own disk is not ours)."""
    total = job.plan.units_total()
    found = len(units_found(job.location, output.targets[0], job.plan, job.image))
    if found < total:
        raise JobFailed(
            f"{total - found} of {total} {job.plan.unit_name}s of {job.location.shown} are not "
            "where this client reads it, though the workers reported them written (a disk "
            "only a worker sees?); the output is partial, not marked complete: rerun with "
            "--resume (resume=True) on workers that share it"
        )


def seal(job: SaveJob, output: Output, counts: list, sight: Sight) -> zarr.Array:
    """Step 6: record the clipped samples and where the job ran; mark the output complete."""
    record = output.record
    if job.plan.cast:
        counted, total = job.plan.chunks_counted(output.done)
        record["clipped"] = clipped_record(
            record.get("clipped"), counts, counted, total, job.x.dtype
        )
    if sight.record() is not None:
        record["workers"] = sight.record()
    record["complete"] = True
    record["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    output.targets[0].attrs.update({ATTRS_KEY: _jsonable(record)})
    return output.targets[0]


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
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
