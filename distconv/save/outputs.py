"""The store :func:`distconv.save` writes: a bare Zarr array, or an OME-Zarr image with levels.

Created before any task runs, with every level's chunk shape fixed (:mod:`distconv.save.pyramid`),
and reopened for ``resume``. Provenance lives in the attributes of the level-0 array (the
array itself when bare), as for every distconv output.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any

import zarr

from distconv.errors import OutputError, one_line
from distconv.ome import OutputImage, group_attributes, multiscale_of
from distconv.save.pyramid import Tiling, level_shapes
from distconv.stores import Location, bucket_missing, remote_error, storage_failure

__all__ = [
    "OUTPUT_DIMENSIONS",
    "check_output_location",
    "check_same_image",
    "check_same_job",
    "create_output",
    "level_paths",
    "open_output_levels",
]

# Every chunk becomes an object, so "chunk object exists" means "chunk written" for resume and
# for info's count, even where the result is all zeros.
_WRITE_ALL = {"write_empty_chunks": True}

# The dim names a bare output records (a DataArray's dims, set by distconv.labelled's save):
# ``dimension_names`` in Zarr v3, the ``_ARRAY_DIMENSIONS`` attribute in v2, as xarray reads them.
OUTPUT_DIMENSIONS: ContextVar[tuple[str, ...] | None] = ContextVar(
    "distconv_output_dimensions", default=None
)


def level_paths(image: OutputImage | None) -> list[str]:
    """Paths of the level arrays inside the output (``[""]``: the output is the array)."""
    return [""] if image is None else [str(k) for k in range(image.levels)]


def create_output(
    location: Location,
    shape: Sequence[int],
    dtype,
    tiling: Tiling,
    zarr_format: int,
    attributes: dict[str, Any],
    image: OutputImage | None,
    shards: Sequence[int] | None = None,
) -> list[zarr.Array]:
    """Create the output's arrays (level 0 first) with ``attributes`` on level 0; ``shards``
    (one level only) shards level 0.

    Raises
    ------
    OutputError
        The store refuses (read-only, no space, access denied, no bucket); nothing is left.
    """
    store = location.zarr_store(read_only=False)
    dimension_names: dict[str, Any] = {}
    try:
        if image is None:
            dims = OUTPUT_DIMENSIONS.get()
            if dims is not None and len(dims) == len(shape):
                if zarr_format == 2:
                    attributes = {**attributes, "_ARRAY_DIMENSIONS": list(dims)}
                else:
                    dimension_names = {"dimension_names": list(dims)}
            return [
                zarr.create_array(
                    store=store,
                    shape=tuple(shape),
                    chunks=tiling.chunks,
                    shards=None if shards is None else tuple(shards),
                    dtype=dtype,
                    zarr_format=zarr_format,
                    attributes=attributes,
                    config=_WRITE_ALL,
                    **dimension_names,
                )
            ]
        paths = level_paths(image)
        group = zarr.create_group(
            store=store, zarr_format=image.zarr_format, attributes=group_attributes(image, paths)
        )
        arrays = []
        for level, level_shape in enumerate(level_shapes(shape, image.downsampled, image.levels)):
            arrays.append(
                group.create_array(
                    paths[level],
                    shape=level_shape,
                    chunks=tiling.level_chunks(level_shape),
                    shards=None if shards is None or level else tuple(shards),
                    dtype=dtype,
                    attributes=attributes if level == 0 else {},
                    config=_WRITE_ALL,
                    **_layout_options(image),
                )
            )
        return arrays
    except Exception as exc:
        if not storage_failure(exc):
            raise
        location.remove()
        if location.remote:
            error = remote_error(location, exc, "write")
            raise OutputError(f"cannot create output: {error}") from None
        raise OutputError(f"cannot create output {location.shown} ({one_line(exc)})") from None


def check_output_location(
    target: Location, shown: str, inputs: Sequence[str], overwrite: bool, resume: bool
) -> None:
    """:func:`distconv.save.steps.check_output_path` for a parsed location (``shown`` in messages).

    Raises
    ------
    OutputError
        The output is an input, inside one or contains one; it exists (without ``overwrite``
        or ``resume``) or is not a Zarr store; its bucket does not exist.
    """
    if overwrite and resume:
        raise OutputError("--overwrite starts again and --resume continues: choose one")
    for source in inputs:
        relation = target.relation(Location.parse(source))
        if relation == "same":
            raise OutputError(f"output {shown} is the input; choose another path")
        if relation is not None:
            verb = "is inside" if relation == "inside" else "contains"
            raise OutputError(f"output {shown} {verb} the input {source}; choose another path")
    try:
        exists = target.exists()
        is_zarr = exists and target.is_zarr()
    except Exception as exc:
        if not target.remote:
            raise
        raise remote_error(target, exc, "write") from None
    if target.remote and not exists and bucket_missing(target):
        raise OutputError(f"cannot create output {shown}: no such bucket")
    if exists:
        if not (overwrite or resume):
            raise OutputError(
                f"output {shown} already exists; pass --overwrite (overwrite=True) "
                "to replace it, or --resume (resume=True) to finish it"
            )
        if not is_zarr:
            raise OutputError(
                f"output {shown} exists and is not a Zarr store; not "
                f"{'resuming' if resume else 'replacing'} it"
            )


def _layout_options(image: OutputImage) -> dict[str, Any]:
    names = [str(axis["name"]) for axis in image.axes]
    if image.version == "0.4":  # NGFF 0.4: Zarr v2 with "/" between chunk indices
        return {"chunk_key_encoding": {"name": "v2", "separator": "/"}}
    return {"dimension_names": names}


def open_output_levels(location: Location) -> tuple[list[zarr.Array], dict[str, Any] | None]:
    """Reopen an existing output for writing: its level arrays (level 0 first) and, for an
    image, its multiscales metadata.

    Raises
    ------
    OutputError
        Nothing readable as a distconv output there.
    """
    try:
        node = zarr.open(location.zarr_store(read_only=False), mode="r+")
    except Exception as exc:
        raise OutputError(f"cannot resume {location.shown}: not a readable Zarr store") from exc
    if isinstance(node, zarr.Array):
        return [node.with_config(_WRITE_ALL)], None
    found = multiscale_of(dict(node.attrs))
    if found is None:
        raise OutputError(f"cannot resume {location.shown}: a Zarr group that is not an image")
    arrays = []
    for dataset in found[1]["datasets"]:
        try:
            arrays.append(node[str(dataset["path"])].with_config(_WRITE_ALL))
        except (KeyError, AttributeError):
            raise OutputError(
                f"cannot resume {location.shown}: level {dataset.get('path')!r} is missing; "
                "use --overwrite to start again"
            ) from None
    return arrays, found[1]


def check_same_image(location: Location, found: dict[str, Any] | None, image, shape) -> None:
    """Resume refuses an output whose layout (bare or image, levels, level shapes) differs."""
    if (found is None) != (image is None):
        what = "an OME-Zarr image" if found is not None else "a bare Zarr array"
        raise OutputError(
            f"cannot resume {location.shown}: it is {what}, this job writes "
            f"{'a bare array' if image is None else 'an image'}; use --overwrite to start again"
        )
    if image is not None and len(found["datasets"]) != image.levels:
        raise OutputError(
            f"cannot resume {location.shown}: it has {len(found['datasets'])} levels, this job "
            f"writes {image.levels}; use --overwrite to start again"
        )


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


def check_same_job(path: str, old: dict[str, Any], record: dict[str, Any]) -> None:
    """Resume refuses an output that records other operations, parameters or weights.

    Raises
    ------
    OutputError
        Naming the first difference.
    """
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


def _short(value) -> str:
    text = str(value)
    return text[:16] + "…" if isinstance(value, str) and len(text) == 64 else text
