"""Provenance of lazy arrays: which stores they read and which operations produced them.

Three registries map a Dask array name to a record: where an array was read from (a *source*:
``{"path", "zarr_format", "shape", "chunks", "shards"}``), what operation produced it (a *step*:
``{"operation", "parameters", "engine", "method", ...}``), and the stored layout its values
belong in (``{"shape", "chunks", "shards"}``: an output keeps it by default). Graph layers keep
these names, so the records of everything a result is derived from are found by walking the
layers of its graph.

:func:`distconv.save` writes the sources and steps into the output's attributes and refuses to
write over a source; cluster routing sends work whose steps name a GPU engine to GPU workers.
The operations record with :func:`remember_source` and :func:`remember_provenance`.

A fourth registry marks results that are a saturating cast of a float array in the same graph
(integer output of a filter): :func:`distconv.save` writes such a result from the float array,
casting and counting the clipped samples per chunk (:func:`saturating_cast_source`).
"""

from __future__ import annotations

from typing import Any

import dask.array as da

__all__ = [
    "engines_used",
    "images",
    "layout_of",
    "remember_image",
    "remember_layout",
    "remember_provenance",
    "remember_saturating_cast",
    "remember_source",
    "saturating_cast_source",
    "source_of",
    "source_paths",
    "sources",
    "step_of",
    "steps",
]

# Dask array name → where it was read from, and → what produced it. Graph layers keep these
# names, so save() finds the source and the provenance of anything derived from them.
_SOURCES: dict[str, dict[str, Any]] = {}
_STEPS: dict[str, dict[str, Any]] = {}
# Dask array name → the stored layout its values belong in: {"shape", "chunks", "shards"}.
_LAYOUTS: dict[str, dict[str, Any]] = {}
# Working stores a graph's tasks read and write besides its sources (deconvolution's scratch).
_SCRATCH: dict[str, dict[str, Any]] = {}
# Dask array name → the OME-Zarr image a result of another shape belongs in (a model's output
# with its own channel count): the input's image record with the result's shape.
_IMAGES: dict[str, dict[str, Any]] = {}
# Dask array name of a saturating cast → the name and (empty) meta of the float array it casts.
# Not the array: its graph would keep in-memory inputs alive.
_SATURATING: dict[str, tuple[str, Any]] = {}


def remember_source(x: da.Array, record: dict[str, Any]) -> da.Array:
    """Record that ``x`` reads the store ``record["path"]`` (e.g. the same store rechunked).

    :func:`distconv.save` finds the inputs of a result by the names of its graph layers:
    provenance, and the refusal to write over an input, depend on every store read being
    registered.

    Parameters
    ----------
    x : dask.array.Array
        The array that reads the store.
    record : dict
        ``{"path": absolute path, "zarr_format": 2, 3 or None}``; a copy is kept.

    Returns
    -------
    dask.array.Array
        ``x`` itself.
    """
    _SOURCES[x.name] = dict(record)
    return x


def remember_provenance(x: da.Array, record: dict[str, Any]) -> da.Array:
    """Attach what produced ``x`` so that :func:`distconv.save` can write it into the output.

    Parameters
    ----------
    x : dask.array.Array
        The result of an operation.
    record : dict
        The step: ``"operation"``, ``"parameters"``, and usually ``"engine"`` and ``"method"``
        (what computes the chunks; a resumed save may differ in these).

    Returns
    -------
    dask.array.Array
        ``x`` itself.
    """
    _STEPS[x.name] = record
    return x


def remember_layout(x: da.Array, record: dict[str, Any]) -> da.Array:
    """Record the stored layout ``x`` comes from or belongs in (``record``: ``{"shape",
    "chunks", "shards"}``, copied), the chunks and shards an output computed from it is written
    with by default; return ``x`` itself."""
    _LAYOUTS[x.name] = dict(record)
    return x


def remember_image(x: da.Array, record: dict[str, Any]) -> da.Array:
    """Record the OME-Zarr image ``x`` is written as (a source record's image fields with
    ``x``'s shape), for a result whose shape no source has; return ``x`` itself."""
    _IMAGES[x.name] = dict(record)
    return x


def images(x: da.Array) -> list[dict[str, Any]]:
    """The image records of :func:`remember_image` in ``x``'s graph, nearest first."""
    return _graph_records(x, _IMAGES)


def layout_of(x: da.Array) -> dict[str, Any] | None:
    """The stored layout nearest to ``x`` in its graph, for an array of ``x``'s shape.

    The graph is walked from ``x`` towards its inputs, nearest layers first, so a result
    derived element-wise or by a filter from a stored array finds that array's chunks and
    shards; a result of another shape (a slice, a product) finds none unless its operation
    recorded one.

    Parameters
    ----------
    x : dask.array.Array

    Returns
    -------
    dict or None
        ``{"shape", "chunks", "shards"}`` (see :func:`remember_layout`).
    """
    graph = x.__dask_graph__()
    dependencies = getattr(graph, "dependencies", {})
    seen, frontier = {x.name}, [x.name]
    while frontier:
        following = []
        for name in frontier:
            record = _LAYOUTS.get(name)
            if record is not None and tuple(record["shape"]) == tuple(x.shape):
                return record
            for dependency in sorted(dependencies.get(name, ())):
                if dependency not in seen:
                    seen.add(dependency)
                    following.append(dependency)
        frontier = following
    return None


def remember_saturating_cast(x: da.Array, source: da.Array) -> da.Array:
    """Record that ``x`` is a saturating cast of ``source``, block for block.

    ``x`` must be ``source`` mapped block by block (same chunks) through
    :func:`distconv.backend.cast_output` to ``x.dtype``, so its graph holds ``source``'s.

    Parameters
    ----------
    x : dask.array.Array
        The cast (integer) result.
    source : dask.array.Array
        The float array it casts.

    Returns
    -------
    dask.array.Array
        ``x`` itself.
    """
    _SATURATING[x.name] = (source.name, source._meta)
    return x


def saturating_cast_source(x: da.Array) -> da.Array | None:
    """The float array ``x`` is a saturating cast of, rebuilt from ``x``'s own graph, or None.

    The array returned shares ``x``'s graph, so :func:`steps` and :func:`sources` of anything
    built on it see everything ``x``'s do (provenance, GPU routing).

    Parameters
    ----------
    x : dask.array.Array

    Returns
    -------
    dask.array.Array or None
        None unless ``x`` itself was registered by :func:`remember_saturating_cast`.
    """
    found = _SATURATING.get(x.name)
    if found is None:
        return None
    name, meta = found
    return da.Array(x.__dask_graph__(), name, x.chunks, meta=meta)


def source_of(x: da.Array) -> dict[str, Any] | None:
    """Where the Dask array ``x`` itself was read from (``{"path", "zarr_format"}``), or None.

    Only the array :func:`distconv.open` returned (or one registered with
    :func:`remember_source`) has a source; anything computed from it does not (use
    :func:`sources` or :func:`source_paths` for those).
    """
    return _SOURCES.get(x.name)


def sources(x: da.Array) -> list[dict[str, Any]]:
    """Source records (``{"path", "zarr_format"}``) of every store the Dask array ``x`` reads
    from (those opened through distconv), in the order of the layers of ``x``'s graph."""
    return _graph_records(x, _SOURCES)


def source_paths(x: da.Array) -> list[str]:
    """Absolute paths of the stores ``x`` reads from, in the order of :func:`sources`."""
    return [record["path"] for record in sources(x)]


def step_of(x: da.Array) -> dict[str, Any] | None:
    """The provenance record of the operation that produced the Dask array ``x`` itself, as the
    operation gave it to :func:`remember_provenance`, or None.

    Only the array an operation returned has one; an array derived from it by plain Dask
    (``y + 1``, ``y[:10]``) does not (use :func:`steps` for those).
    """
    return _STEPS.get(x.name)


def steps(x: da.Array) -> list[dict[str, Any]]:
    """Provenance records of the distconv operations that produced the Dask array ``x``.

    One record per operation in ``x``'s graph, in the order of its layers: what
    :func:`distconv.save` writes under ``attrs["distconv"]["steps"]``.
    """
    return _graph_records(x, _STEPS)


def engines_used(x: da.Array) -> list[str]:
    """Engines named by the operations that produced ``x``: the ``"engine"`` of each of
    :func:`steps`, each named once, in order of first use."""
    names: list[str] = []
    for step in steps(x):
        engine = step.get("engine")
        if isinstance(engine, str) and engine not in names:
            names.append(engine)
    return names


def remember_scratch(x: da.Array, record: dict[str, Any]) -> da.Array:
    """Record that the tasks of ``x`` read and write the working store ``record["path"]``
    (an object ``record["key"]`` the client wrote lies in it): the workers that run them must
    see it (:mod:`distconv.save.sight`), though it is neither an input nor the output."""
    _SCRATCH[x.name] = dict(record)
    return x


def scratch_stores(x: da.Array) -> list[dict[str, Any]]:
    """Records of the working stores :func:`remember_scratch` gave any layer of ``x``."""
    return _graph_records(x, _SCRATCH)


def _graph_records(x: da.Array, registry: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [registry[name] for name in x.__dask_graph__().layers if name in registry]
