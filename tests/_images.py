"""Test inputs written by the real tools: OME-Zarr images by ome-zarr-py, TIFFs by tifffile.

Also independent references for what distconv writes: a pyramid level as the 2× local mean
computed here with plain NumPy slicing, and NGFF validation by ome-zarr-models.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import zarr

DISTCONV = os.path.join(os.path.dirname(sys.executable), "distconv")

AXES = [
    {"name": "c", "type": "channel"},
    {"name": "z", "type": "space"},
    {"name": "y", "type": "space"},
    {"name": "x", "type": "space"},
]
UNITS = {"z": "micrometer", "y": "micrometer", "x": "micrometer"}
SCALE = {"c": 1.0, "z": 2.0, "y": 0.5, "x": 0.25}


def distconv(*args, cwd=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    """The installed ``distconv`` script in its own process."""
    return subprocess.run(
        [DISTCONV, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


_METADATA = {"zarr.json", ".zarray", ".zattrs", ".zgroup"}


def tree_digest(path, chunks_only: bool = False) -> str:
    """Hash of every file's name and bytes under ``path``: proves it was not touched (with
    ``chunks_only``, the stored data without metadata, whose provenance records times)."""
    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            if chunks_only and name in _METADATA:
                continue
            full = os.path.join(root, name)
            digest.update(os.path.relpath(full, path).encode())
            with open(full, "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()


def write_ome_image(path, data: np.ndarray, version: str, chunks, levels: int = 3) -> None:
    """An OME-Zarr image (axes c, z, y, x with units and scale) written by ome-zarr-py."""
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.io import parse_url
    from ome_zarr.writer import write_image

    fmt = FormatV04() if version == "0.4" else FormatV05()
    store = parse_url(str(path), mode="w", fmt=fmt).store
    root = zarr.group(store=store, zarr_format=2 if version == "0.4" else 3)
    write_image(
        data,
        root,
        axes=AXES,
        fmt=fmt,
        scale_factors=[2**k for k in range(1, levels)],
        scale=SCALE,
        axes_units=UNITS,
        storage_options={"chunks": tuple(chunks)},
    )


def mean_halved(values: np.ndarray, axes) -> np.ndarray:
    """2× local mean along ``axes`` in float64; a last odd sample is kept as it is."""
    out = np.asarray(values, dtype=np.float64)
    for axis in axes:
        out = np.moveaxis(out, axis, 0)
        pairs = (out[0 : len(out) - 1 : 2] + out[1::2]) / 2
        if len(out) % 2:
            pairs = np.concatenate([pairs, out[-1:]])
        out = np.moveaxis(pairs, 0, axis)
    return out


def validate_ngff(path, version: str):
    """Validate an image with ome-zarr-models (raises on invalid metadata); return its first
    multiscale."""
    group = zarr.open_group(str(path), mode="r")
    if version == "0.4":
        from ome_zarr_models.v04.image import Image

        return Image.from_zarr(group).attributes.multiscales[0]
    from ome_zarr_models.v05.image import Image

    return Image.from_zarr(group).ome_attributes.multiscales[0]


def read_with_ome_zarr(path):
    """ome-zarr-py's reader: (level arrays, coordinate transformations per level, axes)."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(iter(Reader(parse_url(str(path)))()))
    return (
        [np.asarray(level) for level in node.data],
        node.metadata["coordinateTransformations"],
        node.metadata["axes"],
    )
