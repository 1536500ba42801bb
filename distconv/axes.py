"""Axes by name: ``axes=("y", "x")`` for an input that carries axis names (OME-Zarr, TIFF).

The names come from the source record of the store the input was read from
(:func:`distconv.provenance.source_of`); an array computed from it with the same shape keeps
them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask.array as da

from distconv.errors import DistconvError
from distconv.provenance import source_of, sources

__all__ = [
    "axes_record",
    "axis_names",
    "axis_type",
    "data_variable",
    "default_filter_ndim",
    "dims_of",
    "resolve_axes",
]

_AXIS_TYPES = {"z": "space", "y": "space", "x": "space", "t": "time", "time": "time"}
_AXIS_TYPES.update({"c": "channel", "channel": "channel"})


def axes_record(x: da.Array) -> list[dict[str, Any]] | None:
    """Axis dicts (``name``, ``type``, ``unit``) of ``x``, or None when it has no names.

    Parameters
    ----------
    x : dask.array.Array
        An array read by :func:`distconv.open`, or computed from one without changing its shape.
    """
    own = source_of(x)
    candidates = [own] if own else [r for r in sources(x) if list(r.get("shape", ())) == [*x.shape]]
    for record in candidates:
        axes = record.get("axes") if record else None
        if axes and len(axes) == x.ndim:
            return [dict(a) for a in axes]
    return None


def axis_names(x: da.Array) -> list[str] | None:
    """The names of ``x``'s axes (``["c", "z", "y", "x"]``), or None."""
    axes = axes_record(x)
    return None if axes is None else [str(a.get("name")) for a in axes]


def resolve_axes(axes, x: da.Array, weights_ndim: int) -> tuple[int, ...] | None:
    """Axes as integers: names looked up in ``x``'s axis names.

    Without ``axes``, weights with fewer dimensions than a named input filter its last
    ``weights_ndim`` space axes (a 2-D kernel on a ``czyx`` image filters ``y, x``).

    Parameters
    ----------
    axes : int, str, sequence of int or str, or None
        Integers pass through; names (``"y"``, or ``"y,x"``) are looked up.
    x : dask.array.Array
        The input.
    weights_ndim : int
        Dimensions of the weights.

    Returns
    -------
    tuple of int or None
        None only when ``axes`` is None and the default of every axis applies.

    Raises
    ------
    DistconvError
        Names for an input without axis names, or a name the input lacks.
    """
    if axes is None:
        record = axes_record(x)
        if record is None or weights_ndim >= x.ndim:
            return None
        spatial = [i for i, axis in enumerate(record) if axis.get("type") == "space"]
        return tuple(spatial[-weights_ndim:]) if len(spatial) >= weights_ndim else None
    if isinstance(axes, str):
        axes = [a.strip() for a in axes.split(",")]
    if not isinstance(axes, Sequence):
        return axes
    if not any(isinstance(a, str) for a in axes):
        return tuple(axes)
    names = axis_names(x)
    if names is None:
        raise DistconvError(
            f"axes {', '.join(map(str, axes))} are given by name but the input has no axis "
            "names (only OME-Zarr and TIFF inputs do); give axis numbers"
        )
    result = []
    for axis in axes:
        if isinstance(axis, str) and not axis.lstrip("-").isdigit():
            if axis not in names:
                raise DistconvError(
                    f"the image has no axis {axis!r}; its axes are {', '.join(names)}"
                )
            result.append(names.index(axis))
        else:
            result.append(int(axis))
    return tuple(result)


def default_filter_ndim(x: da.Array) -> int:
    """How many axes a named kernel (``gaussian:sigma=2``) filters without ``axes``: the space
    axes of a named input, else every axis."""
    record = axes_record(x)
    if record is None:
        return x.ndim
    spatial = sum(1 for axis in record if axis.get("type") == "space")
    return spatial or x.ndim


def axis_type(name: str) -> str | None:
    """The OME-Zarr type of a dim named ``name`` (``x, y, z``: space; ``t``: time; ``c``:
    channel), or None."""
    return _AXIS_TYPES.get(str(name).lower())


def dims_of(array) -> list[str] | None:
    """The dim names a Zarr array stores (``dimension_names`` in v3, ``_ARRAY_DIMENSIONS`` in
    v2, as xarray writes them), or None."""
    names = getattr(array.metadata, "dimension_names", None)
    if names and all(n is not None for n in names):
        return [str(n) for n in names]
    names = dict(array.attrs).get("_ARRAY_DIMENSIONS")
    return [str(n) for n in names] if isinstance(names, list) else None


def data_variable(group, shown: str) -> str:
    """The one array of ``group`` that is not a coordinate (xarray's Dataset of one variable)."""
    arrays = dict(group.arrays())
    if not arrays or any(dims_of(a) is None for a in arrays.values()):
        # Not xarray's layout (every array of a Dataset names its dims): a plain group.
        raise DistconvError(f"{shown} is a Zarr group whose arrays do not all name their dims")
    dims = {d for a in arrays.values() for d in (dims_of(a) or ())}
    named = set()
    for a in arrays.values():
        named.update(str(dict(a.attrs).get("coordinates", "")).split())
    data = [n for n in arrays if n not in dims and n not in named]
    if len(data) != 1:
        raise DistconvError(
            f"{shown} holds {len(data)} data variables ({', '.join(data) or 'none'}); "
            "open one of them as path/name"
        )
    return data[0]
