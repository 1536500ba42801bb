"""OME-Zarr (NGFF 0.4 and 0.5) images: pick a level to read, describe the image to write.

An OME-Zarr image is a Zarr group whose ``multiscales`` metadata (``attrs["multiscales"]`` in
0.4, ``attrs["ome"]["multiscales"]`` in 0.5) lists its levels, highest resolution first, with
named axes (``t, c, z, y, x``), units and per-level scale and translation. Reading one level
keeps that description in the source record, so operations can take axes by name and
:func:`distconv.save` can write the result as an image with the same axes, units and scales.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import zarr

from distconv.errors import DistconvError

__all__ = [
    "NGFF_VERSIONS",
    "OutputImage",
    "describe_image",
    "group_attributes",
    "image_level",
    "image_of_array",
    "multiscale_of",
    "output_image",
    "spatial_axes",
    "valid_axes_order",
]

NGFF_VERSIONS = ("0.4", "0.5")
_TYPE_ORDER = {"time": 0, "channel": 1, "space": 3}  # any other type sits between channel and space


def multiscale_of(attrs: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(NGFF version, first multiscale) of a group's attributes, or None if it is no image.

    Parameters
    ----------
    attrs : mapping
        The group's attributes.
    """
    ome = attrs.get("ome")
    if isinstance(ome, Mapping) and isinstance(ome.get("multiscales"), list):
        found, version = ome["multiscales"], str(ome.get("version", "0.5"))
    elif isinstance(attrs.get("multiscales"), list):
        found = attrs["multiscales"]
        version = None
    else:
        return None
    if not found or not isinstance(found[0], Mapping) or not found[0].get("datasets"):
        return None
    multiscale = dict(found[0])
    return (version or str(multiscale.get("version", "0.4"))), multiscale


def _axes_of(multiscale: Mapping[str, Any], ndim: int) -> list[dict[str, Any]]:
    """Axis dicts (``name``, ``type``, ``unit``); 0.3 lists names, 0.1/0.2 imply ``tczyx``."""
    axes = multiscale.get("axes")
    if axes is None:
        axes = ["t", "c", "z", "y", "x"][-ndim:]
    result = []
    for axis in axes:
        entry = {"name": axis} if isinstance(axis, str) else dict(axis)
        if "type" not in entry and entry["name"] in ("t", "c", "z", "y", "x"):
            entry["type"] = {"t": "time", "c": "channel"}.get(entry["name"], "space")
        result.append(entry)
    return result


def _transform(transforms: Sequence[Mapping[str, Any]] | None, kind: str) -> list[float] | None:
    for transform in transforms or []:
        if transform.get("type") == kind and isinstance(transform.get(kind), list):
            return [float(v) for v in transform[kind]]
    return None


def _level_record(
    version: str, multiscale: dict[str, Any], level: int, image_url: str, shape
) -> dict[str, Any]:
    """What the source record keeps of an image: enough to write the result as the same image."""
    dataset = multiscale["datasets"][level]
    axes = _axes_of(multiscale, len(shape))
    if len(axes) != len(shape):
        raise DistconvError(
            f"{image_url}: the multiscales metadata names {len(axes)} axes but level {level} "
            f"has {len(shape)} dimensions"
        )
    transforms = dataset.get("coordinateTransformations")
    return {
        "image": image_url,
        "level": level,
        "levels": len(multiscale["datasets"]),
        "axes": axes,
        "ngff": {
            "version": version,
            "name": multiscale.get("name"),
            "scale": _transform(transforms, "scale") or [1.0] * len(shape),
            "translation": _transform(transforms, "translation"),
            "coordinateTransformations": multiscale.get("coordinateTransformations"),
        },
    }


def image_level(
    group: zarr.Group, image_url: str, level: int | None
) -> tuple[zarr.Array, dict[str, Any]]:
    """The array of one level of an OME-Zarr image and its source-record fields.

    Parameters
    ----------
    group : zarr.Group
        The image group.
    image_url : str
        Its location, for messages and records.
    level : int, optional
        0 (default) is the highest resolution.

    Raises
    ------
    DistconvError
        No multiscales metadata, a level out of range, or a missing level array.
    """
    found = multiscale_of(dict(group.attrs))
    if found is None:
        names = [name for name, _ in group.arrays()] + [f"{n}/..." for n, _ in group.groups()]
        hint = ", ".join(f"{image_url}/{n}" for n in names[:6]) or "none"
        raise DistconvError(
            f"{image_url} is a Zarr group without OME-Zarr multiscales metadata, not an "
            f"array or an image; arrays inside: {hint}"
        )
    version, multiscale = found
    datasets = multiscale["datasets"]
    chosen = 0 if level is None else int(level)
    if not 0 <= chosen < len(datasets):
        raise DistconvError(
            f"--level {chosen} is out of range: {image_url} has levels 0 to {len(datasets) - 1}"
        )
    path = str(datasets[chosen].get("path", ""))
    try:
        array = group[path]
    except KeyError:
        raise DistconvError(
            f"{image_url}: level {chosen} ({path!r}) is listed in the multiscales metadata "
            "but is not in the store"
        ) from None
    if not isinstance(array, zarr.Array):
        raise DistconvError(f"{image_url}: level {chosen} ({path!r}) is not an array")
    return array, _level_record(version, multiscale, chosen, image_url, array.shape)


def image_of_array(
    parent: zarr.Group | None, name: str, image_url: str, shape
) -> dict[str, Any] | None:
    """Source-record fields of an array opened by its path inside an image (``img.zarr/0``)."""
    if parent is None:
        return None
    found = multiscale_of(dict(parent.attrs))
    if found is None:
        return None
    version, multiscale = found
    for index, dataset in enumerate(multiscale["datasets"]):
        if str(dataset.get("path", "")).strip("/") == name:
            try:
                return _level_record(version, multiscale, index, image_url, shape)
            except DistconvError:
                return None
    return None


def spatial_axes(axes: Sequence[Mapping[str, Any]]) -> list[int]:
    """Indices of the axes of type ``space``."""
    return [i for i, axis in enumerate(axes) if axis.get("type") == "space"]


def valid_axes_order(axes: Sequence[Mapping[str, Any]]) -> bool:
    """NGFF's rule: 2 to 5 axes, time first, then channel or custom, then 2 or 3 space axes."""
    if not 2 <= len(axes) <= 5 or not 2 <= len(spatial_axes(axes)) <= 3:
        return False
    names = [a.get("name") for a in axes]
    ranks = [_TYPE_ORDER.get(a.get("type"), 2) for a in axes]
    return len(set(names)) == len(names) and ranks == sorted(ranks)


@dataclass(frozen=True)
class OutputImage:
    """The OME-Zarr image :func:`distconv.save` writes.

    Attributes
    ----------
    version : str
        NGFF version, ``"0.4"`` (Zarr v2) or ``"0.5"`` (Zarr v3).
    axes : list of dict
        Axis dicts, as the input's.
    scale, translation : list of float
        Level 0's coordinate transformations.
    levels : int
        Levels written, 1 without a pyramid.
    downsampled : tuple of int
        Axes halved at each level.
    method : str
        ``"mean"`` or ``"nearest"``.
    """

    version: str
    axes: list[dict[str, Any]]
    scale: list[float]
    translation: list[float] | None = None
    name: str | None = None
    levels: int = 1
    downsampled: tuple[int, ...] = ()
    method: str = "mean"
    extra_transforms: list[dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def zarr_format(self) -> int:
        return 2 if self.version == "0.4" else 3

    def level_transforms(self, level: int) -> list[dict[str, Any]]:
        """The ``coordinateTransformations`` of one level: scale, then translation if any."""
        factor = [2**level if i in self.downsampled else 1 for i in range(len(self.axes))]
        scale = [s * f for s, f in zip(self.scale, factor)]
        base = self.translation or [0.0] * len(self.axes)
        # A 2^k mean's sample sits at the centre of the pixels it averages; nearest keeps the
        # first pixel's position.
        shift = [
            (f - 1) / 2 * s if self.method == "mean" else 0.0 for f, s in zip(factor, self.scale)
        ]
        transforms = [{"type": "scale", "scale": scale}]
        if self.translation is not None or any(shift):
            translation = [t + d for t, d in zip(base, shift)]
            transforms.append({"type": "translation", "translation": translation})
        return transforms


def output_image(
    read: Sequence[Mapping[str, Any]],
    shape: Sequence[int],
    *,
    pyramid: int | None,
    method: str,
    axes_to_halve: Sequence[str] | None,
    ome: bool | None,
    zarr_format: int | None,
) -> OutputImage | None:
    """Whether (and as which image) a result of ``shape`` is written as OME-Zarr.

    An OME-Zarr output follows the first image source of the same shape (same axes, units,
    scale, NGFF version); a pyramid of a result whose sources are no image names its axes
    ``y, x`` or ``z, y, x``.

    Raises
    ------
    DistconvError
        A pyramid without spatial axes, an impossible level count, an unknown axis or method.
    """
    if method not in ("mean", "nearest"):
        raise DistconvError(f"unknown pyramid method {method!r}; choose mean or nearest")
    source = next(
        (r for r in read if r.get("ngff") and list(r.get("shape", ())) == list(shape)), None
    )
    if ome is False or (source is None and not pyramid and not ome):
        if pyramid:
            raise DistconvError("a pyramid is written as an OME-Zarr image: drop ome=False")
        return None
    if source is not None:
        ngff, axes = source["ngff"], [dict(a) for a in source["axes"]]
        version = ngff["version"] if ngff["version"] in NGFF_VERSIONS else "0.4"
        scale, translation, name = ngff["scale"], ngff["translation"], ngff.get("name")
        extra = ngff.get("coordinateTransformations")
    else:
        axes = next(
            (
                [dict(a) for a in r["axes"]]
                for r in read
                if r.get("axes") and list(r.get("shape", ())) == list(shape)
            ),
            None,
        ) or _default_axes(len(shape))
        version, scale, translation, name, extra = "0.5", [1.0] * len(shape), None, None, None
    if zarr_format is not None:
        version = "0.4" if zarr_format == 2 else "0.5"
    if not valid_axes_order(axes):
        raise DistconvError(
            f"axes {', '.join(str(a.get('name')) for a in axes)} cannot be an OME-Zarr image "
            "(2 to 5 axes: time, channel, then 2 or 3 space axes)"
        )
    levels = int(pyramid or 1)
    halve = _axes_to_halve(axes, axes_to_halve)
    if levels < 1:
        raise DistconvError(f"a pyramid needs 1 level or more, got {levels}")
    largest = max(shape[i] for i in halve)
    if levels > 1 and 2 ** (levels - 2) >= largest:
        raise DistconvError(
            f"{levels} pyramid levels halve a {largest}-pixel axis below one pixel; "
            f"at most {max(1, largest - 1).bit_length() + 1}"
        )
    return OutputImage(
        version, axes, list(scale), translation, name, levels, tuple(halve), method, extra
    )


def _default_axes(ndim: int) -> list[dict[str, Any]]:
    if ndim not in (2, 3):
        raise DistconvError(
            f"a {ndim}-D result read from no OME-Zarr image has no named axes; an OME-Zarr "
            "output (a pyramid) needs a 2-D or 3-D array or an OME-Zarr input"
        )
    return [{"name": n, "type": "space"} for n in "zyx"[-ndim:]]


def _axes_to_halve(axes: Sequence[Mapping[str, Any]], names: Sequence[str] | None) -> list[int]:
    """Halved axes: those named, else the space axes other than ``z`` (as ome-zarr-py does)."""
    spatial = spatial_axes(axes)
    if names is None:
        chosen = [i for i in spatial if axes[i].get("name") != "z"] or spatial
        return chosen
    known = [a.get("name") for a in axes]
    result = []
    for name in names:
        if name not in known:
            raise DistconvError(
                f"pyramid axis {name!r} is not an axis of the image ({', '.join(map(str, known))})"
            )
        if known.index(name) not in spatial:
            raise DistconvError(f"pyramid axis {name!r} is not a space axis")
        result.append(known.index(name))
    return sorted(set(result))


def group_attributes(image: OutputImage, paths: Sequence[str]) -> dict[str, Any]:
    """The image group's attributes in the image's NGFF version."""
    multiscale: dict[str, Any] = {
        "name": image.name or "image",
        "axes": image.axes,
        "datasets": [
            {"path": path, "coordinateTransformations": image.level_transforms(level)}
            for level, path in enumerate(paths)
        ],
    }
    if image.extra_transforms:
        multiscale["coordinateTransformations"] = image.extra_transforms
    if image.levels > 1:
        halved = ", ".join(str(image.axes[i]["name"]) for i in image.downsampled)
        multiscale["type"] = image.method
        multiscale["metadata"] = {
            "description": f"2x {'local mean' if image.method == 'mean' else 'nearest sample'} "
            f"per level along {halved}, written with level 0 in one pass by distconv",
            "method": f"distconv.save.pyramid.downsample_{image.method}",
            "kwargs": {"factor": 2, "axes": [image.axes[i]["name"] for i in image.downsampled]},
        }
    if image.version == "0.4":
        return {"multiscales": [{"version": "0.4", **multiscale}]}
    return {"ome": {"version": image.version, "multiscales": [multiscale]}}


def describe_image(location, image: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What ``distconv info`` shows of an image: NGFF version, axes, every level's shape and
    scale, and which level was described.

    Parameters
    ----------
    location : distconv.stores.Location
        Where the image or its level was opened (its storage options reach the group).
    image : mapping, optional
        The source-record fields of the level (:func:`image_level`); None for a plain array.
    """
    if not image:
        return None
    from distconv.stores import Location

    levels = []
    with contextlib.suppress(Exception):  # a level listed but unreadable is shown as missing
        group = zarr.open_group(Location.parse(image["image"]).zarr_store(), mode="r")
        _, multiscale = multiscale_of(dict(group.attrs)) or (None, {"datasets": []})
        for dataset in multiscale["datasets"]:
            path = str(dataset.get("path", ""))
            shape = list(group[path].shape) if path in group else None
            scale = _transform(dataset.get("coordinateTransformations"), "scale")
            levels.append({"path": path, "shape": shape, "scale": scale})
    return {
        "ngff": image["ngff"]["version"],
        "axes": [a.get("name") for a in image["axes"]],
        "units": [a.get("unit") for a in image["axes"]],
        "level": image["level"],
        "levels": levels,
    }
