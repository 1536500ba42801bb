"""OME-Zarr in and out: images written by ome-zarr-py (NGFF 0.4 and 0.5), read by level, axes
by name, written back as images (validated by ome-zarr-models, read by ome-zarr-py), and
pyramids written in the same pass as the result."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
import zarr
from scipy import ndimage

import distconv as dc
from distconv.axes import axis_names
from tests._images import (
    SCALE,
    UNITS,
    distconv,
    mean_halved,
    read_with_ome_zarr,
    tree_digest,
    validate_ngff,
    write_ome_image,
)

SHAPE = (2, 3, 150, 130)  # c, z, y, x: odd-sized levels below level 1


@pytest.fixture(params=["0.4", "0.5"])
def image(request, tmp_path):
    version = request.param
    data = np.random.default_rng(17).random(SHAPE, dtype=np.float32)
    path = tmp_path / "cells.ome.zarr"
    write_ome_image(path, data, version, chunks=(1, 3, 32, 32))
    return path, version


def _level(path, level: int) -> np.ndarray:
    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    multiscale = (attrs.get("ome") or attrs)["multiscales"][0]
    return group[multiscale["datasets"][level]["path"]][:]


def _smoothed(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """scipy.ndimage in float64, the 2-D weights applied to every (c, z) plane."""
    return ndimage.convolve(values.astype(np.float64), weights[None, None], mode="reflect")


def test_open_reads_the_highest_resolution_and_any_level(image):
    path, _ = image
    x = dc.open(path)
    assert x.shape == SHAPE
    assert axis_names(x) == ["c", "z", "y", "x"]
    np.testing.assert_array_equal(x.compute(), _level(path, 0))
    second = dc.open(path, level=2)
    assert second.shape == _level(path, 2).shape and second.shape[2] < SHAPE[2] // 2
    np.testing.assert_array_equal(second.compute(), _level(path, 2))
    # A level opened by its path inside the image still knows its axes.
    assert axis_names(dc.open(path / ("s1" if (path / "s1").exists() else "1"))) == list("czyx")


def test_axes_by_name_and_the_default_for_a_smaller_kernel(image):
    path, _ = image
    weights = np.random.default_rng(3).standard_normal((5, 4))
    x = dc.open(path, level=1)
    expected = _smoothed(_level(path, 1), weights)
    for axes in (("y", "x"), "y,x", (2, 3), None):
        got = dc.convolve(x, weights, axes=axes).compute()
        np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=str(axes))
    along_z = dc.correlate(x, np.array([1.0, -2.0, 0.5]), axes=("z",)).compute()
    reference = ndimage.correlate1d(_level(path, 1).astype(np.float64), [1.0, -2.0, 0.5], axis=1)
    np.testing.assert_allclose(along_z, reference, atol=1e-5)
    with pytest.raises(dc.DistconvError, match="no axis 't'"):
        dc.convolve(x, weights, axes=("t", "x"))


def test_axes_by_name_need_an_image():
    plain = da.from_array(np.ones((8, 8)), chunks=4)
    with pytest.raises(dc.DistconvError, match="no axis names"):
        dc.convolve(plain, np.ones((3,)), axes=("x",))


def test_the_result_is_an_image_with_the_input_axes_units_and_scale(image):
    path, version = image
    out = path.parent / "smooth.ome.zarr"
    result = distconv(
        "convolve", path, "gaussian:sigma=1.5", "-o", out, "--level", "1", "--axes", "y,x",
        "--cluster", "threads", "-q",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    axes = validate_ngff(out, version).axes
    assert [a.name for a in axes] == ["c", "z", "y", "x"]
    assert [a.unit for a in axes] == [None, *(UNITS[n] for n in "zyx")]
    levels, transforms, _ = read_with_ome_zarr(out)
    assert len(levels) == 1
    input_transforms = read_with_ome_zarr(path)[1]
    assert transforms[0] == input_transforms[1]  # level 1's scale and translation
    assert transforms[0][0]["scale"] == [SCALE["c"], SCALE["z"], SCALE["y"] * 2, SCALE["x"] * 2]
    weights = dc.load_weights("gaussian:sigma=1.5", ndim=2)
    np.testing.assert_allclose(levels[0], _smoothed(_level(path, 1), weights), atol=1e-4)
    group = zarr.open_group(str(out), mode="r")
    assert group["0"].metadata.zarr_format == (2 if version == "0.4" else 3)
    assert group["0"].attrs["distconv"]["complete"] is True
    assert dc.info(out)["image"]["axes"] == ["c", "z", "y", "x"]


@pytest.mark.parametrize("method", ["mean", "nearest"])
def test_pyramid_written_in_the_same_pass(image, method):
    path, version = image
    out = path.parent / "pyramid.ome.zarr"
    result = distconv(
        "convolve", path, "box:size=3", "-o", out, "--pyramid", "4", "--pyramid-method", method,
        "--cluster", "threads", "-q",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    multiscale = validate_ngff(out, version)
    assert multiscale.type == method
    assert "one pass" in json.dumps(multiscale.metadata)
    levels, transforms, _ = read_with_ome_zarr(out)
    # A named kernel without --axes filters the space axes: z, y, x.
    box = dc.load_weights("box:size=3", ndim=3)[None]
    expected = ndimage.convolve(_level(path, 0).astype(np.float64), box).astype("f4")
    assert [lv.shape for lv in levels] == [
        (2, 3, 150, 130),
        (2, 3, 75, 65),
        (2, 3, 38, 33),
        (2, 3, 19, 17),
    ]
    for k, level in enumerate(levels):
        scale = transforms[k][0]["scale"]
        assert scale == [1.0, 2.0, 0.5 * 2**k, 0.25 * 2**k]
        np.testing.assert_allclose(level, expected, atol=1e-5, err_msg=f"level {k}")
        if method == "mean":
            translation = transforms[k][1]["translation"] if k else [0.0] * 4
            assert translation == [0.0, 0.0, (2**k - 1) / 2 * 0.5, (2**k - 1) / 2 * 0.25]
            expected = mean_halved(expected, (2, 3)).astype("f4")
        else:
            expected = expected[:, :, ::2, ::2]
    # Every level is chunked like level 0: each task wrote one chunk of the coarsest level.
    group = zarr.open_group(str(out), mode="r")
    assert [group[str(k)].chunks for k in range(4)] == [(1, 3, 32, 32)] * 3 + [(1, 3, 19, 17)]


def test_pyramid_of_a_plain_array_names_its_axes(tmp_path):
    data = np.random.default_rng(5).random((100, 70))
    zarr.create_array(str(tmp_path / "plain.zarr"), data=data, chunks=(16, 16))
    written = dc.save(dc.open(tmp_path / "plain.zarr"), tmp_path / "p.ome.zarr", pyramid=3)
    validate_ngff(tmp_path / "p.ome.zarr", "0.5")
    levels, _, axes = read_with_ome_zarr(tmp_path / "p.ome.zarr")
    assert [a["name"] for a in axes] == ["y", "x"]
    np.testing.assert_array_equal(written[:], data)
    np.testing.assert_allclose(levels[2], mean_halved(mean_halved(data, (0, 1)), (0, 1)))


def test_resume_of_a_pyramid_finishes_only_the_missing_tiles(image):
    path, _ = image
    out = path.parent / "r.ome.zarr"
    y = dc.convolve(dc.open(path), np.ones((3, 3)) / 9)
    dc.save(y, out, pyramid=3, progress=False)
    reference = tree_digest(out, chunks_only=True)
    # An interrupted job: one tile's level-0 chunk and its coarser chunks gone, not complete.
    group = zarr.open_group(str(out), mode="r+")
    attrs = dict(group["0"].attrs)
    attrs["distconv"]["complete"] = False
    group["0"].attrs.update(attrs)
    # Tile (1, 0, 0, 0) holds level-0 rows 0-128: chunk row 1 of levels 0 and 1, 0 of level 2.
    for level, chunk in (("0", (1, 0, 1, 0)), ("1", (1, 0, 1, 0)), ("2", (1, 0, 0, 0))):
        (out / level / group[level].metadata.encode_chunk_key(chunk)).unlink()
    with pytest.raises(dc.DistconvError, match="partial"):
        dc.open(out)
    written = dc.save(y, out, resume=True, pyramid=3, progress=False)
    assert written.attrs["distconv"]["resumed"][-1]["chunks_already_written"] == 7
    assert tree_digest(out, chunks_only=True) == reference
    assert dc.open(out).shape == SHAPE  # complete again
    with pytest.raises(dc.DistconvError, match="it has 3 levels, this job writes 2"):
        dc.save(y, out, resume=True, pyramid=2, progress=False)
    with pytest.raises(dc.DistconvError, match="pyramid differ"):
        dc.save(y, out, resume=True, pyramid=3, pyramid_method="nearest", progress=False)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--level", "9"], "--level 9 is out of range"),
        (["--axes", "t,x"], "no axis 't'"),
        (["--pyramid", "12"], "pyramid levels"),
    ],
)
def test_bad_image_arguments_are_one_line(image, args, words):
    path, _ = image
    before = tree_digest(path.parent)
    result = distconv("convolve", path, "box:size=3", *args, "--cluster", "threads", "-q")
    assert result.returncode == 2
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert tree_digest(path.parent) == before


def test_a_group_without_multiscales_is_refused(tmp_path):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("raw", shape=(8, 8), dtype="f4")[:] = 1.0
    before = tree_digest(tmp_path)
    result = distconv("convolve", tmp_path / "g.zarr", "box:size=3", "--cluster", "threads")
    assert result.returncode == 2
    assert "without OME-Zarr multiscales" in result.stderr
    assert f"{tmp_path / 'g.zarr'}/raw" in result.stderr
    assert tree_digest(tmp_path) == before


def test_nothing_is_written_inside_an_input_image(image):
    path, _ = image
    before = tree_digest(path)
    x = dc.open(path, level=1)
    for inside in ("s0", "0", "labels/new"):
        with pytest.raises(dc.DistconvError, match="inside the input"):
            dc.save(x, path / inside, overwrite=True, progress=False)
    assert tree_digest(path) == before


def test_the_cli_halves_the_pyramid_axes_it_is_given(tmp_path):
    data = np.random.default_rng(10).random((12, 20, 18)).astype(np.float32)
    zarr.create_array(str(tmp_path / "vol.zarr"), data=data, chunks=(6, 10, 9))
    job = ("convolve", tmp_path / "vol.zarr", "box:size=1", "--cluster", "threads", "-q")
    done = distconv(*job, "-o", tmp_path / "zyx.ome.zarr", "--pyramid", "2",
                    "--pyramid-axes", "z,y,x")  # fmt: skip
    assert done.returncode == 0, done.stderr
    level = zarr.open_group(str(tmp_path / "zyx.ome.zarr"), mode="r")["1"][:]
    np.testing.assert_allclose(level, mean_halved(data.astype(np.float64), (0, 1, 2)), rtol=1e-6)
    refused = distconv(*job, "-o", tmp_path / "no.zarr", "--pyramid-axes", "y,x")
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "distconv: error: --pyramid-axes needs --pyramid"
    ]
    assert not (tmp_path / "no.zarr").exists()


def test_pyramid_axes_may_include_z(tmp_path):
    data = np.random.default_rng(9).random((20, 36, 30))
    x = da.from_array(data, chunks=(5, 9, 10))
    both = dc.save(x, tmp_path / "zyx.ome.zarr", pyramid=2, pyramid_axes=("z", "y", "x"))
    plain = dc.save(x, tmp_path / "yx.ome.zarr", pyramid=2)
    level_zyx = zarr.open_group(str(tmp_path / "zyx.ome.zarr"), mode="r")["1"][:]
    level_yx = zarr.open_group(str(tmp_path / "yx.ome.zarr"), mode="r")["1"][:]
    np.testing.assert_allclose(level_zyx, mean_halved(data, (0, 1, 2)))
    np.testing.assert_allclose(level_yx, mean_halved(data, (1, 2)))
    assert both.shape == plain.shape == data.shape
    assert validate_ngff(tmp_path / "zyx.ome.zarr", "0.5").datasets[1].coordinateTransformations[
        0
    ].scale == [2.0, 2.0, 2.0]
    with pytest.raises(dc.DistconvError, match="not an axis"):
        dc.save(x, tmp_path / "bad.ome.zarr", pyramid=2, pyramid_axes=("t",))
