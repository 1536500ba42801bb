"""xarray in and out: a DataArray given to an operation is unwrapped, its dims named, the result
wrapped back with the same dims, coords, name and attrs.

xarray stays optional: this module imports it only when a DataArray is passed
(:func:`is_labelled` looks at the type's module, not at xarray), or when a store is opened with
``xarray=True``.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from distconv.errors import DistconvError

__all__ = [
    "Labels",
    "labelled_apply",
    "SPACE_DIMS",
    "labelled_map_chunks",
    "labelled_open",
    "labelled_operation",
    "labelled_plan",
    "labelled_pair",
    "labelled_save",
    "is_labelled",
    "open_dataarray",
    "store_labels",
    "unwrap",
    "wrap",
]

SPACE_DIMS = ("z", "y", "x")
RECORD_KEY = "distconv"


def is_labelled(x) -> bool:
    """Whether ``x`` is an xarray DataArray (checked without importing xarray)."""
    return type(x).__module__.startswith("xarray") and hasattr(x, "dims") and hasattr(x, "coords")


@dataclass
class Labels:
    """What a DataArray carries besides its values.

    Parameters
    ----------
    dims : tuple of str
        The dimension names, in the array's order.
    coords : mapping
        The DataArray's coordinates.
    name : hashable
        The DataArray's name.
    attrs : dict
        Its attributes.
    """

    dims: tuple[str, ...]
    coords: Any
    name: Any = None
    attrs: dict[str, Any] = field(default_factory=dict)

    def axes(self, axes, weights_ndim: int | None = None) -> tuple[int, ...] | None:
        """``axes=`` as numbers: dim names looked up in :attr:`dims`, numbers kept.

        Without ``axes``, weights with fewer dimensions than the array filter its last space
        dims (``z, y, x``), as for an OME-Zarr image; else the op's default applies (None).

        Raises
        ------
        DistconvError
            A name the DataArray lacks (its dims are named).
        """
        ndim = len(self.dims)
        if axes is None:
            if weights_ndim is None or weights_ndim >= ndim:
                return None
            space = [i for i, d in enumerate(self.dims) if str(d).lower() in SPACE_DIMS]
            return tuple(space[-weights_ndim:]) if len(space) >= weights_ndim else None
        if isinstance(axes, (str, int)):
            axes = [a.strip() for a in axes.split(",")] if isinstance(axes, str) else [axes]
        result = []
        for axis in axes:
            if isinstance(axis, str) and not axis.lstrip("-").isdigit():
                if axis not in self.dims:
                    raise DistconvError(
                        f"the DataArray has no dim {axis!r}; its dims are {', '.join(self.dims)}"
                    )
                result.append(self.dims.index(axis))
            else:
                result.append(int(axis))
        return tuple(result)


def unwrap(x):
    """A DataArray's values as a Dask array (its chunks kept; NumPy values chunked as any array)
    and its :class:`Labels`."""
    import dask.array as da

    labels = Labels(tuple(map(str, x.dims)), x.coords, x.name, dict(x.attrs))
    data = x.data
    return (data if isinstance(data, da.Array) else da.from_array(data, chunks="auto")), labels


def wrap(y, labels: Labels, step: dict[str, Any]):
    """``y`` as a DataArray with ``labels`` and ``step`` appended to ``attrs["distconv"]``."""
    import xarray as xr

    before = labels.attrs.get(RECORD_KEY)
    applied = list(before.get("applied", [])) if isinstance(before, dict) else []
    attrs = {**labels.attrs, RECORD_KEY: {"applied": [*applied, step]}}
    coords = {
        k: v
        for k, v in labels.coords.items()
        if all(d in labels.dims and v.sizes[d] == y.shape[labels.dims.index(d)] for d in v.dims)
    }
    return xr.DataArray(y, dims=labels.dims, coords=coords, name=labels.name, attrs=attrs)


def _plain(value):
    """A JSON-friendly copy of a parameter for the ``distconv`` record."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(getattr(value, "shape", type(value).__name__))


def labelled_operation(function: Callable, *, axes: bool) -> Callable:
    """``function(input, weights, ...)`` taking a DataArray ``input`` (and ``weights``); names in
    ``axes=`` are its dims; the result is a DataArray with the input's labels.

    Parameters
    ----------
    function : callable
        convolve, correlate, richardson_lucy or wiener (``axes=False``: no ``axes`` keyword; a
        smaller PSF gets size-1 axes on the dims it does not cover).
    axes : bool
        Whether ``function`` takes ``axes=``.
    """

    @functools.wraps(function)
    def wrapper(input, weights, *args, **kwargs):
        if not is_labelled(input):
            return function(input, weights, *args, **kwargs)
        import numpy as np

        x, labels, weights, chosen = _filter_arguments(input, weights, kwargs, axes)
        if axes:
            y = function(x, weights, *args, axes=chosen, **kwargs)
        else:
            weights = _psf_for(np.asarray(weights), x.ndim, chosen)
            y = function(x, weights, *args, **kwargs)
        step = {"operation": function.__name__}
        if chosen is not None:
            step["dims"] = [labels.dims[i] for i in chosen]
        step.update({k: _plain(v) for k, v in kwargs.items() if k != "scratch"})
        return wrap(y, labels, step)

    return wrapper


def _filter_arguments(input, weights, kwargs: dict, axes: bool = True):
    """A DataArray ``input`` (and ``weights``) as the Dask array, its :class:`Labels`, NumPy
    weights and ``axes=`` (popped from ``kwargs``) as numbers: names its dims, default the
    last ``z, y, x`` dims for smaller weights."""
    import numpy as np

    x, labels = unwrap(input)
    given = kwargs.pop("axes", None) if axes else None
    if is_labelled(weights):
        given = tuple(map(str, weights.dims)) if given is None else given
        weights = np.asarray(weights.data)
    return x, labels, weights, labels.axes(given, np.ndim(weights))


def labelled_plan(function: Callable) -> Callable:
    """plan_convolve / plan_correlate taking a DataArray: the plan of the unwrapped array with
    ``axes=`` as numbers, chosen as :func:`labelled_operation` chooses them."""

    @functools.wraps(function)
    def wrapper(input, weights, *args, **kwargs):
        if not is_labelled(input):
            return function(input, weights, *args, **kwargs)
        x, _, weights, chosen = _filter_arguments(input, weights, kwargs)
        return function(x, weights, *args, axes=chosen, **kwargs)

    return wrapper


CHANNEL_DIMS = ("c", "channel", "channels")


def labelled_apply(function: Callable) -> Callable:
    """:func:`distconv.apply` taking a DataArray: ``axes=`` names dims (default: its ``z, y,
    x`` dims), a ``c``/``channel`` dim is the model's channels; the result keeps the input's
    dims and coords, its channel dim (added last, named ``channel``, where the input had none)
    sized by the model."""

    @functools.wraps(function)
    def wrapper(model, input, *args, **kwargs):
        if not is_labelled(input):
            return function(model, input, *args, **kwargs)
        channel = next((d for d in input.dims if str(d).lower() in CHANNEL_DIMS), None)
        ordered = input if channel is None else input.transpose(..., channel)
        x, labels = unwrap(ordered)
        given = kwargs.pop("axes", None)
        if given is None:
            space = [i for i, d in enumerate(labels.dims) if str(d).lower() in SPACE_DIMS]
            chosen = tuple(space) or None
        else:
            chosen = labels.axes(given)
        y = function(model, x, *args, axes=chosen, **kwargs)
        step = {"operation": "apply", "model": str(getattr(model, "name", model))}
        if chosen is not None:
            step["dims"] = [labels.dims[i] for i in chosen]
        if channel is None:
            labels = Labels((*labels.dims, "channel"), labels.coords, labels.name, labels.attrs)
        result = wrap(y, labels, step)
        return result if channel is None else result.transpose(*input.dims)

    return wrapper


def _psf_for(psf, ndim: int, chosen: Sequence[int] | None):
    """A PSF over ``chosen`` axes as an ``ndim``-D PSF (size 1 on the other axes)."""
    if chosen is None or psf.ndim == ndim:
        return psf
    shape = [1] * ndim
    order = sorted(range(len(chosen)), key=lambda i: chosen[i])
    for i in order:
        shape[chosen[i]] = psf.shape[i]
    return psf.transpose(order).reshape(shape)


def _aligned(a, b):
    """``a`` and ``b`` aligned as xarray's arithmetic aligns them (its ``arithmetic_join``)."""
    import xarray as xr

    join = xr.get_options()["arithmetic_join"]
    try:
        return xr.align(a, b, join=join)
    except ValueError as exc:
        raise DistconvError(f"cannot align the operands by dim name: {exc}") from None


def labelled_pair(function: Callable, *, matrix: bool) -> Callable:
    """``function(a, b)`` (multiply, matmul) taking DataArrays, matched by dim name.

    multiply broadcasts as xarray does: the result's dims are ``a``'s, then ``b``'s others.
    matmul contracts ``a``'s last dim with ``b``'s second-to-last, which must have the same
    name; the batch dims broadcast by name as multiply's.
    """

    @functools.wraps(function)
    def wrapper(a, b, **kwargs):
        if not (is_labelled(a) or is_labelled(b)):
            return function(a, b, **kwargs)
        if not matrix and (is_labelled(a) != is_labelled(b)):
            labelled, other = (a, b) if is_labelled(a) else (b, a)
            if _is_scalar(other):  # a DataArray times a number keeps its labels
                x, labels = unwrap(labelled)
                y = function(x, other, **kwargs) if labelled is a else function(other, x, **kwargs)
                return wrap(y, labels, {"operation": function.__name__, "scalar": float(other)})
        if not (is_labelled(a) and is_labelled(b)):
            raise DistconvError(
                f"{function.__name__} of a DataArray and an unlabelled array: give both as "
                "DataArrays (their dims are matched by name)"
            )
        if matrix:
            if a.ndim < 2 or b.ndim < 2:
                raise DistconvError("matmul of DataArrays needs two dims on each operand")
            (i, k), (k2, j) = a.dims[-2:], b.dims[-2:]
            if k != k2:
                raise DistconvError(
                    f"matmul contracts a's last dim with b's second-to-last: {k!r} and {k2!r} "
                    f"disagree (a's dims {', '.join(a.dims)}; b's dims {', '.join(b.dims)})"
                )
            if j in a.dims or i in b.dims:
                raise DistconvError(
                    f"matmul's output dims {i!r} and {j!r} must each belong to one operand "
                    f"(a's dims {', '.join(a.dims)}; b's dims {', '.join(b.dims)})"
                )
        a, b = _aligned(a, b)
        core = 2 if matrix else 0
        batch_a, batch_b = a.dims[: a.ndim - core], b.dims[: b.ndim - core]
        batch = (*batch_a, *(d for d in batch_b if d not in batch_a))
        xa, la = unwrap(a)
        xb, lb = unwrap(b)
        xa = _expanded(xa, a.dims, batch, core)
        xb = _expanded(xb, b.dims, batch, core)
        y = function(xa, xb, **kwargs)
        dims = (*batch, *(a.dims[-2:-1] + b.dims[-1:] if matrix else ()))
        coords = {**dict(lb.coords.items()), **dict(la.coords.items())}
        if matrix:
            k = a.dims[-1]
            coords = {n: c for n, c in coords.items() if k not in c.dims}
        labels = Labels(tuple(map(str, dims)), coords, la.name, la.attrs)
        return wrap(y, labels, {"operation": function.__name__, "dims": list(dims)})

    return wrapper


def _is_scalar(value) -> bool:
    """Whether ``value`` is a plain number (0-d)."""
    import numpy as np

    return not hasattr(value, "chunks") and np.ndim(value) == 0


def _expanded(x, dims, batch: Sequence[str], core: int):
    """``x`` (dims ``dims``) transposed to ``batch`` order with size-1 axes for the batch dims
    it lacks, its ``core`` last dims kept last (NumPy broadcasting then matches names)."""
    own = [d for d in batch if d in dims]
    order = [dims.index(d) for d in own] + list(range(len(dims) - core, len(dims)))
    x = x.transpose(order)
    index = tuple(slice(None) if d in dims else None for d in batch) + (slice(None),) * core
    return x[index]


def labelled_map_chunks(function: Callable) -> Callable:
    """map_chunks taking DataArrays: ``depth={"y": 2, "x": 1}`` and ``drop_axis`` name the
    first one's dims; the result keeps its labels where its shape allows (the dims of unchanged
    size keep their coords; a dropped dim leaves the others labelled)."""

    @functools.wraps(function)
    def wrapper(fn, *arrays, **kwargs):
        if not any(is_labelled(a) for a in arrays):
            return function(fn, *arrays, **kwargs)
        first = next(a for a in arrays if is_labelled(a))
        _, labels = unwrap(first)
        plain = [unwrap(a)[0] if is_labelled(a) else a for a in arrays]
        depth = kwargs.get("depth")
        if isinstance(depth, dict):  # {"y": 2, "x": 1}: widths by dim name
            kwargs["depth"] = {labels.axes([k])[0]: v for k, v in depth.items()}
        dropped: tuple[int, ...] = ()
        if kwargs.get("drop_axis") is not None:  # names or numbers of the dims fn removes
            dropped = labels.axes(kwargs["drop_axis"]) or ()
            kwargs["drop_axis"] = list(dropped)
        y = function(fn, *plain, **kwargs)
        step = {"operation": "map_chunks", "function": getattr(fn, "__name__", str(fn))}
        if dropped and kwargs.get("new_axis") is None:  # the other dims keep their labels
            gone = {a % len(labels.dims) for a in dropped}
            step["dropped"] = [labels.dims[a] for a in sorted(gone)]
            dims = tuple(d for i, d in enumerate(labels.dims) if i not in gone)
            labels = Labels(dims, labels.coords, labels.name, labels.attrs)
        if y.ndim == len(labels.dims):
            return wrap(y, labels, step)
        import xarray as xr

        return xr.DataArray(y, name=labels.name, attrs={RECORD_KEY: {"applied": [step]}})

    return wrapper


def labelled_save(save: Callable) -> Callable:
    """save taking a DataArray: a Zarr group that :func:`xarray.open_zarr` reads, the values
    (written by distconv) at ``path/<name>`` and the coords (written by xarray) beside them."""

    @functools.wraps(save)
    def wrapper(x, path, **kwargs):
        if not is_labelled(x):
            return save(x, path, **kwargs)
        return _save_dataarray(save, x, path, **kwargs)

    return wrapper


def _save_dataarray(save: Callable, x, path, **kwargs):
    import zarr

    from distconv.provenance import source_paths, sources
    from distconv.save.outputs import OUTPUT_DIMENSIONS
    from distconv.save.steps import check_output_path
    from distconv.stores import Location

    data, labels = unwrap(x)
    name = str(labels.name) if labels.name is not None else "data"
    options = kwargs.get("storage_options")
    zarr_format = kwargs.pop("zarr_format", None) or next(
        (r["zarr_format"] for r in sources(data) if r.get("zarr_format")), 3
    )
    location = Location.parse(os.fspath(path), options)
    overwrite, resume = kwargs.get("overwrite", False), kwargs.get("resume", False)
    check_output_path(location, source_paths(data), overwrite, resume)
    if overwrite and location.exists():
        location.remove()
    group = zarr.open_group(location.zarr_store(read_only=False), mode="a", zarr_format=zarr_format)
    kwargs["overwrite"] = False  # the group was removed above; the values are new in it
    if not kwargs.get("pyramid"):
        kwargs.setdefault("ome", False)  # a bare array beside its coords, as xarray reads
    token = OUTPUT_DIMENSIONS.set(labels.dims)
    try:
        array = save(data, location.child(name).url, zarr_format=zarr_format, **kwargs)
    finally:
        OUTPUT_DIMENSIONS.reset(token)
    _write_coords(labels, location, zarr_format)
    user = {k: v for k, v in labels.attrs.items() if k != RECORD_KEY}
    if user:
        array.attrs.update(user)
    with warnings.catch_warnings():  # zarr: consolidated metadata is not in the v3 spec
        warnings.simplefilter("ignore", UserWarning)
        zarr.consolidate_metadata(group.store, zarr_format=zarr_format)
    return array


def _write_coords(labels: Labels, location, zarr_format: int) -> None:
    """The coords as xarray writes them, beside the values (no consolidated metadata yet)."""
    import xarray as xr

    coords = {k: v.variable for k, v in labels.coords.items()}
    if not coords:
        return
    with warnings.catch_warnings():  # zarr: a string coord's dtype has no v3 spec yet
        warnings.simplefilter("ignore", UserWarning)
        xr.Dataset(coords=coords).to_zarr(
            location.zarr_store(read_only=False),
            mode="a",
            consolidated=False,
            zarr_format=zarr_format,
        )


def labelled_open(open_array: Callable) -> Callable:
    """:func:`distconv.io.open` with ``xarray=True`` answered by :func:`open_dataarray`."""

    @functools.wraps(open_array)
    def wrapper(path, *, xarray: bool = False, storage_options=None, **kwargs):
        if xarray:
            return open_dataarray(open_array, path, storage_options, **kwargs)
        return open_array(path, storage_options=storage_options, **kwargs)

    return wrapper


def open_dataarray(open_array: Callable, path, storage_options=None, **kwargs):
    """A store as a DataArray: values read by distconv, dims and coords from xarray's
    conventions (a group written by xarray, a distconv output, an OME-Zarr image).

    Parameters
    ----------
    open_array : callable
        :func:`distconv.open` (reads the values).
    path : str or os.PathLike
        A group with one data variable, an array (inside such a group or not), or an image.
    storage_options : dict, optional
        fsspec options.
    **kwargs
        More of :func:`distconv.open`'s keywords.
    """
    import numpy as np
    import xarray as xr
    import zarr

    from distconv.axes import axis_names, data_variable, dims_of
    from distconv.ome import multiscale_of
    from distconv.provenance import source_of
    from distconv.stores import Location

    location = Location.parse(os.fspath(path), storage_options)
    node = zarr.open(location.zarr_store(read_only=True), mode="r")
    if isinstance(node, zarr.Group) and multiscale_of(dict(node.attrs)) is None:
        variable = data_variable(node, location.shown)
        location, node = location.child(variable), node[variable]
    x = open_array(location.url, storage_options=storage_options, **kwargs)
    dims = (dims_of(node) if isinstance(node, zarr.Array) else None) or axis_names(x)
    dims = dims or [f"dim_{i}" for i in range(x.ndim)]
    coords: dict[str, Any] = {}
    parent = location.parent()
    if isinstance(node, zarr.Array) and parent is not None:
        try:
            group = zarr.open_group(parent.zarr_store(), mode="r")
        except Exception:  # no group above: a bare array, no coords
            group = None
        if group is not None:
            coords = _coords_of(group, node, dims, location.name)
    record = source_of(x) or {}
    ngff = record.get("ngff") or {}
    if not coords and ngff.get("scale"):
        offset = ngff.get("translation") or [0.0] * x.ndim
        coords = {
            d: offset[i] + ngff["scale"][i] * np.arange(n)
            for i, (d, n) in enumerate(zip(dims, x.shape, strict=True))
            if record["axes"][i].get("type") == "space"
        }
    attrs = {} if not isinstance(node, zarr.Array) else dict(node.attrs)
    for encoding in ("_ARRAY_DIMENSIONS", "_FillValue"):  # xarray's encoding, not attrs
        attrs.pop(encoding, None)
    return xr.DataArray(x, dims=dims, coords=coords, name=location.name, attrs=attrs)


def store_labels(open_array: Callable, path, storage_options=None, **kwargs) -> Labels | None:
    """The :class:`Labels` of a store xarray wrote (a Zarr group of one data variable, not an
    OME-Zarr image) as :func:`open_dataarray` reads them; None for any other input, or without
    xarray."""
    import importlib.util

    if importlib.util.find_spec("xarray") is None:
        return None
    import zarr

    from distconv.ome import multiscale_of
    from distconv.stores import Location

    try:
        location = Location.parse(os.fspath(path), storage_options)
        node = zarr.open(location.zarr_store(read_only=True), mode="r")
    except Exception:  # not a Zarr store (a TIFF): no labels
        return None
    if not isinstance(node, zarr.Group) or multiscale_of(dict(node.attrs)) is not None:
        return None
    return unwrap(open_dataarray(open_array, path, storage_options, **kwargs))[1]


def _coords_of(group, node, dims: Sequence[str], name: str) -> dict[str, Any]:
    """Coords of ``node`` from its group as xarray stored them (CF-decoded by xarray)."""
    import xarray as xr

    wanted = set(dims) | set(str(dict(node.attrs).get("coordinates", "")).split())
    present = {n for n, _ in group.arrays()} & wanted
    if not present:
        return {}
    ds = xr.open_zarr(group.store, consolidated=False, chunks=None, drop_variables=[name])
    return {n: ds[n].variable for n in ds.variables if n in present}
