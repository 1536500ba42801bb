"""TIFF and OME-TIFF inputs written by tifffile: read lazily, tile by tile, and convolved to the
same values as the array loaded in memory; an OME-TIFF's result is an OME-Zarr image."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage

import distconv as dc
from distconv.axes import axis_names
from tests._images import distconv, read_with_ome_zarr, tree_digest, validate_ngff


@pytest.fixture
def tiffs(tmp_path):
    rng = np.random.default_rng(23)
    plain = rng.random((300, 200)).astype(np.float32)
    tifffile.imwrite(tmp_path / "plain.tif", plain, tile=(64, 64))
    tifffile.imwrite(tmp_path / "striped.tif", plain, rowsperstrip=7)
    stack = rng.integers(0, 4000, (9, 80, 70), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack)  # one page per plane
    cells = rng.integers(0, 60000, (3, 256, 192), dtype=np.uint16)
    with tifffile.TiffWriter(tmp_path / "cells.ome.tif") as tif:
        options = {
            "tile": (64, 64),
            "metadata": {"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5},
        }
        tif.write(cells, subifds=2, **options)
        tif.write(cells[:, ::2, ::2], subfiletype=1, **options)
        tif.write(cells[:, ::4, ::4], subfiletype=1, **options)
    return tmp_path, {"plain": plain, "stack": stack, "cells": cells}


def test_plain_striped_and_stacked_tiffs_read_lazily(tiffs):
    folder, arrays = tiffs
    for name in ("plain", "striped"):
        x = dc.open(folder / f"{name}.tif")
        assert axis_names(x) == ["y", "x"]
        np.testing.assert_array_equal(x.compute(), arrays["plain"])
    stack = dc.open(folder / "stack.tif")
    assert stack.shape == (9, 80, 70) and stack.dtype == np.uint16
    np.testing.assert_array_equal(stack.compute(), tifffile.imread(folder / "stack.tif"))


def test_convolved_tiffs_match_the_array_in_memory(tiffs):
    folder, arrays = tiffs
    weights = np.random.default_rng(1).standard_normal((5, 3))
    got = dc.convolve(dc.open(folder / "plain.tif"), weights).compute()
    in_memory = tifffile.imread(folder / "plain.tif").astype(np.float64)
    np.testing.assert_allclose(got, ndimage.convolve(in_memory, weights), atol=1e-4)
    cube = np.random.default_rng(2).standard_normal((3, 3, 3))
    # uint16 input: float output asked for (scipy's rule keeps the input's dtype by default)
    got = dc.correlate(dc.open(folder / "stack.tif"), cube, np.float64, mode="nearest").compute()
    in_memory = tifffile.imread(folder / "stack.tif").astype(np.float64)
    expected = ndimage.correlate(in_memory, cube, mode="nearest")
    np.testing.assert_allclose(got, expected, atol=1e-5 * np.abs(expected).max())


def test_reading_one_block_does_not_load_the_file(tmp_path):
    big = np.random.default_rng(3).random((4096, 4096)).astype(np.float32)  # 64 MiB
    tifffile.imwrite(tmp_path / "big.tif", big, tile=(256, 256))
    del big
    x = dc.open(tmp_path / "big.tif")
    assert x.npartitions > 1 and all(c % 256 == 0 for c in x.chunksize)  # whole tiles
    tracemalloc.start()
    corner = x[:256, :256].compute(scheduler="threads")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert corner.shape == (256, 256)
    assert peak < 40 * 2**20, f"{peak / 2**20:.0f} MiB read for a 256 KiB corner"


def test_ome_tiff_pyramid_level_to_an_ome_zarr_image(tiffs):
    folder, arrays = tiffs
    x = dc.open(folder / "cells.ome.tif", level=1)
    assert x.shape == (3, 128, 96)
    np.testing.assert_array_equal(x.compute(), arrays["cells"][:, ::2, ::2])
    result = distconv(
        "convolve", folder / "cells.ome.tif", "gaussian:sigma=1", "--level", "1",
        "--axes", "y,x", "--dtype", "uint16", "--cluster", "local", "--workers", "2",
        "--threads-per-worker", "1", "-q",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = folder / "cells.convolved.ome.zarr"
    multiscale = validate_ngff(out, "0.5")
    assert [a.name for a in multiscale.axes] == ["c", "y", "x"]
    assert [a.unit for a in multiscale.axes] == [None, "micrometer", "micrometer"]
    levels, transforms, _ = read_with_ome_zarr(out)
    assert transforms[0][0]["scale"] == [1.0, 1.0, 1.0]  # 0.5 µm pixels, halved once
    weights = dc.load_weights("gaussian:sigma=1", ndim=2)
    level = arrays["cells"][:, ::2, ::2].astype(np.float64)
    expected = np.clip(np.rint(ndimage.convolve(level, weights[None])), 0, 65535)
    assert np.abs(levels[0].astype(np.int64) - expected).max() <= 1


def test_a_plain_tiff_result_is_a_bare_array_unless_a_pyramid_is_asked(tiffs):
    folder, _ = tiffs
    result = distconv("convolve", folder / "plain.tif", "box:size=3", "--cluster", "threads")
    assert result.returncode == 0, result.stderr
    assert isinstance(zarr.open(str(folder / "plain.convolved.zarr"), mode="r"), zarr.Array)
    pyramid = folder / "plain.pyramid.zarr"
    result = distconv(
        "convolve", folder / "plain.tif", "box:size=3", "-o", pyramid, "--pyramid", "3",
        "--cluster", "threads", "-q",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [lv.shape for lv in read_with_ome_zarr(pyramid)[0]] == [(300, 200), (150, 100), (75, 50)]


@pytest.mark.parametrize(
    "name, args, words",
    [
        ("fake.tif", [], "is not a TIFF file"),
        ("cells.ome.tif", ["--level", "3"], "--level 3 is out of range"),
        ("stack.tif", ["--axes", "c,x"], "no axis 'c'"),
        ("missing.tif", [], "no such file"),
    ],
)
def test_bad_tiff_inputs_are_one_line(tiffs, name, args, words):
    folder, _ = tiffs
    (folder / "fake.tif").write_text("not a TIFF at all")
    before = tree_digest(folder)
    result = distconv("convolve", folder / name, "box:size=3", *args, "--cluster", "threads")
    assert result.returncode == 2, result.stderr
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert tree_digest(folder) == before
