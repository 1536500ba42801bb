"""xarray in and out: DataArrays through every operation, labels kept, values as scipy.ndimage's.

Random data (never zeros), float64 references; stores written by distconv read back by xarray
and stores written by xarray read by distconv.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi

import distconv as dc
from distconv.errors import DistconvError

xr = pytest.importorskip("xarray")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")


@pytest.fixture
def rng():
    return np.random.default_rng(20261206)


def _image(rng, shape, dims, chunks=None, name="img"):
    values = rng.random(shape) + 0.5
    data = values if chunks is None else da.from_array(values, chunks=chunks)
    coords = {d: 0.25 + 0.37 * np.arange(n) for d, n in zip(dims, shape, strict=True) if d != "c"}
    return values, xr.DataArray(data, dims=dims, coords=coords, name=name, attrs={"units": "au"})


def _same_labels(y, x):
    assert isinstance(y, xr.DataArray)
    assert y.dims == x.dims and y.name == x.name
    assert y.attrs["units"] == x.attrs["units"] and "distconv" in y.attrs
    for k in x.coords:
        np.testing.assert_array_equal(y[k].values, x[k].values)


def test_2d_numpy_backed_convolve(rng):
    values, x = _image(rng, (37, 29), ("y", "x"))
    w = rng.random((5, 3)) - 0.3
    y = dc.convolve(x, w, mode="nearest")
    _same_labels(y, x)
    np.testing.assert_allclose(y.values, ndi.convolve(values, w, mode="nearest"), rtol=1e-10)
    assert y.attrs["distconv"]["applied"][-1]["operation"] == "convolve"


def test_3d_dask_backed_correlate_keeps_chunks(rng):
    values, x = _image(rng, (12, 30, 26), ("z", "y", "x"), chunks=(6, 15, 13))
    w = rng.random((3, 5, 3))
    y = dc.correlate(x, w)
    _same_labels(y, x)
    assert y.chunks == x.chunks
    np.testing.assert_allclose(y.values, ndi.correlate(values, w), rtol=1e-10)


def test_5d_tczyx_filters_z_y_x_by_default_and_by_name(rng):
    values, x = _image(rng, (2, 2, 6, 14, 12), ("t", "c", "z", "y", "x"), chunks=(1, 1, 3, 7, 6))
    w = rng.random((3, 3, 3))
    reference = ndi.convolve(values, w[None, None])
    y = dc.convolve(x, w)
    _same_labels(y, x)
    np.testing.assert_allclose(y.values, reference, rtol=1e-10)
    named = dc.convolve(x, w, axes=("z", "y", "x"))
    np.testing.assert_allclose(named.values, reference, rtol=1e-10)
    assert y.attrs["distconv"]["applied"][-1]["dims"] == ["z", "y", "x"]


def test_unusual_dim_order_by_name_and_weights_dataarray(rng):
    values, x = _image(rng, (16, 3, 18), ("x", "c", "y"), chunks=(8, 1, 9))
    w = rng.random((5, 3))  # (y, x)
    reference = ndi.correlate(values, w.T[:, None, :])  # the array's order: x, c, y
    y = dc.correlate(x, w, axes=("y", "x"))
    _same_labels(y, x)
    np.testing.assert_allclose(y.values, reference, rtol=1e-10)
    labelled_w = xr.DataArray(w, dims=("y", "x"))
    np.testing.assert_allclose(dc.correlate(x, labelled_w).values, reference, rtol=1e-10)
    with pytest.raises(DistconvError, match="no dim 'q'.*x, c, y"):
        dc.correlate(x, w, axes=("q", "x"))


def test_deconvolution_of_a_dataarray(rng):
    values, x = _image(rng, (4, 20, 22), ("z", "y", "x"), chunks=(2, 10, 11))
    psf = rng.random((3, 3)) + 0.1
    psf /= psf.sum()
    y = dc.richardson_lucy(x, psf, 4)  # a 2-D PSF over the last space dims: y, x
    _same_labels(y, x)
    reference = dc.richardson_lucy(values, psf[None], 4).compute()
    np.testing.assert_allclose(y.values, reference, rtol=1e-8)
    wz = dc.wiener(x, np.full((3, 3, 3), 1 / 27), 0.1)
    _same_labels(wz, x)
    np.testing.assert_allclose(
        wz.values, dc.wiener(values, np.full((3, 3, 3), 1 / 27), 0.1).compute(), rtol=1e-8
    )


def test_multiply_broadcasts_by_dim_name(rng):
    _, a = _image(rng, (10, 12), ("y", "x"), chunks=(5, 6), name="a")
    bv = rng.random((12, 3)) + 0.5
    b = xr.DataArray(bv, dims=("x", "c"), coords={"x": a.x.values}, name="b")
    y = dc.multiply(a, b)
    expected = a * b
    assert y.dims == expected.dims == ("y", "x", "c")
    np.testing.assert_allclose(y.values, expected.values, rtol=1e-12)
    np.testing.assert_array_equal(y.x.values, a.x.values)


def test_multiply_by_a_number_and_refusing_an_unlabelled_array(rng):
    values, a = _image(rng, (6, 8), ("y", "x"), chunks=(3, 4))
    y = dc.multiply(a, 2.5)
    _same_labels(y, a)
    np.testing.assert_allclose(y.values, values * 2.5)
    with pytest.raises(DistconvError, match="both as DataArrays"):
        dc.multiply(a, values)


def test_multiply_aligns_coords_as_xarray(rng):
    _, a = _image(rng, (6, 8), ("y", "x"), name="a")
    b = a.isel(x=slice(2, 7)) + 1.0
    y = dc.multiply(a, b)
    expected = a * b  # the inner join of the x coords
    np.testing.assert_array_equal(y.x.values, expected.x.values)
    np.testing.assert_allclose(y.values, expected.values, rtol=1e-12)


def test_matmul_by_dim_names_and_a_refusal_naming_them(rng):
    av, bv = rng.random((3, 8, 6)) + 0.5, rng.random((6, 5)) + 0.5
    a = xr.DataArray(da.from_array(av, chunks=(1, 4, 3)), dims=("t", "i", "k"), name="a")
    b = xr.DataArray(bv, dims=("k", "j"), coords={"j": np.linspace(0.1, 0.9, 5)})
    y = dc.matmul(a, b)
    assert y.dims == ("t", "i", "j")
    np.testing.assert_allclose(y.values, np.matmul(av, bv), rtol=1e-12)
    np.testing.assert_array_equal(y.j.values, b.j.values)
    wrong = b.rename(k="m")
    with pytest.raises(DistconvError, match="'k' and 'm'"):
        dc.matmul(a, wrong)


def test_map_chunks_keeps_labels(rng):
    values, x = _image(rng, (20, 16), ("y", "x"), chunks=(10, 8))
    y = dc.map_chunks(np.sqrt, x)
    _same_labels(y, x)
    np.testing.assert_allclose(y.values, np.sqrt(values))


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_save_is_read_back_labelled_by_xarray(rng, tmp_path, zarr_format):
    values, x = _image(rng, (6, 20, 18), ("z", "y", "x"), chunks=(3, 10, 9))
    w = rng.random((3, 3))
    out = tmp_path / "out.zarr"
    dc.save(dc.convolve(x, w), out, zarr_format=zarr_format)
    reference = ndi.convolve(values, w[None])
    ds = xr.open_zarr(out)
    assert ds["img"].dims == ("z", "y", "x")
    np.testing.assert_allclose(ds["img"].values, reference, rtol=1e-10)
    np.testing.assert_array_equal(ds["x"].values, x.x.values)
    assert ds["img"].attrs["units"] == "au"
    one = xr.open_dataarray(out, engine="zarr")
    assert one.dims == ("z", "y", "x") and one.name == "img"
    back = dc.open(out, xarray=True)
    assert back.dims == ("z", "y", "x") and isinstance(back.data, da.Array)
    np.testing.assert_allclose(back.values, reference, rtol=1e-10)
    np.testing.assert_array_equal(back.y.values, x.y.values)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_open_a_store_written_by_xarray(rng, tmp_path, zarr_format):
    values, x = _image(rng, (5, 16, 14), ("z", "y", "x"), chunks=(5, 8, 7), name="stack")
    path = tmp_path / "stack.zarr"
    x.to_dataset().to_zarr(path, zarr_format=zarr_format)
    back = dc.open(path, xarray=True)
    assert back.dims == x.dims and back.name == "stack"
    np.testing.assert_array_equal(back.values, values)
    for d in x.dims:
        np.testing.assert_array_equal(back[d].values, x[d].values)
    plain = dc.open(path)  # the group's one variable; axes by name, as the CLI's --axes
    w = rng.random((3, 3))
    y = dc.convolve(plain, w, axes=("y", "x"))
    np.testing.assert_allclose(y.compute(), ndi.convolve(values, w[None]), rtol=1e-10)


def test_open_xarray_of_a_plain_distconv_output_and_an_unnamed_dataarray(rng, tmp_path):
    values = rng.random((12, 10)) + 0.5
    dc.save(da.from_array(values, chunks=6), tmp_path / "plain.zarr")
    plain = dc.open(tmp_path / "plain.zarr", xarray=True)
    assert plain.dims == ("dim_0", "dim_1")
    np.testing.assert_array_equal(plain.values, values)
    unnamed = xr.DataArray(values, dims=("y", "x"), coords={"x": np.linspace(-1, 1, 10)})
    dc.save(unnamed, tmp_path / "unnamed.zarr")
    back = dc.open(tmp_path / "unnamed.zarr", xarray=True)
    assert back.name == "data" and back.dims == ("y", "x")
    np.testing.assert_array_equal(back.x.values, unnamed.x.values)


def _same_plan(plan, expected):
    assert plan.describe() == expected.describe()
    assert plan.operation == expected.operation and plan.input_shape == expected.input_shape
    assert plan.weights_shape == expected.weights_shape
    assert plan.tile_shape == expected.tile_shape and plan.tasks == expected.tasks
    assert plan.correlation.depth == expected.correlation.depth


def test_plan_of_a_dataarray_is_the_plan_of_its_values(rng):
    values, x = _image(rng, (2, 6, 28, 24), ("c", "z", "y", "x"), chunks=(1, 3, 14, 12))
    w = rng.random((5, 3))
    plain = da.from_array(values, chunks=(1, 3, 14, 12))
    for plan, numeric in ((dc.plan_convolve, (2, 3)), (dc.plan_correlate, (2, 3))):
        expected = plan(plain, w, axes=numeric, mode="nearest")
        _same_plan(plan(x, w, axes=("y", "x"), mode="nearest"), expected)
        _same_plan(plan(x, w, mode="nearest"), expected)  # a smaller kernel: the last y, x
        _same_plan(plan(x, xr.DataArray(w, dims=("y", "x")), mode="nearest"), expected)
    across = dc.plan_correlate(x, w, axes=("z", "x"))
    _same_plan(across, dc.plan_correlate(plain, w, axes=(1, 3)))
    assert across.correlation.depth != dc.plan_correlate(plain, w, axes=(2, 3)).correlation.depth
    with pytest.raises(DistconvError, match="no dim 'q'"):
        dc.plan_convolve(x, w, axes=("q", "x"))


def test_map_chunks_depth_by_dim_name(rng):
    values, x = _image(rng, (3, 30, 26), ("z", "y", "x"), chunks=(3, 10, 9))
    plain = da.from_array(values, chunks=(3, 10, 9))
    size = (1, 5, 3)  # a halo of 2 on y and 1 on x

    def smooth(block):
        return ndi.uniform_filter(block, size=size, mode="nearest")

    y = dc.map_chunks(smooth, x, depth={"y": 2, "x": 1}, boundary="nearest")
    _same_labels(y, x)
    numeric = dc.map_chunks(smooth, plain, depth={1: 2, 2: 1}, boundary="nearest")
    np.testing.assert_array_equal(y.values, numeric.compute())
    reference = ndi.uniform_filter(values, size=size, mode="nearest")
    np.testing.assert_allclose(y.values, reference, rtol=1e-12)
    assert y.chunks == x.chunks
    with pytest.raises(DistconvError, match="no dim 'q'"):
        dc.map_chunks(smooth, x, depth={"q": 2})


def test_map_chunks_drop_axis_by_dim_name(rng):
    values, x = _image(rng, (4, 12, 10), ("z", "y", "x"), chunks=(2, 6, 5))
    y = dc.map_chunks(lambda b: b.sum(axis=0), x, drop_axis="z")
    assert y.dims == ("y", "x") and y.name == x.name
    np.testing.assert_allclose(y.values, values.sum(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(y.x.values, x.x.values)
    assert "z" not in y.coords and y.attrs["distconv"]["applied"][-1]["dropped"] == ["z"]


@pytest.mark.parametrize(("zarr_format", "dims"), [(2, ("z", "y", "x")), (3, ("y", "x"))])
def test_cli_on_a_store_written_by_xarray_keeps_dims_and_coords(rng, tmp_path, zarr_format, dims):
    from conftest import distconv

    shape = (4, 22, 18)[-len(dims) :]
    values, x = _image(rng, shape, dims, chunks=tuple(max(1, n // 2) for n in shape), name="cells")
    x.to_dataset().to_zarr(tmp_path / "in.zarr", zarr_format=zarr_format)
    w = rng.random((3, 5))
    np.save(tmp_path / "k.npy", w)
    args = ("convolve", "in.zarr", "k.npy", "-o", "out.zarr", "--axes", "y,x")
    result = distconv(*args, "--mode", "nearest", "--cluster", "threads", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    reference = ndi.convolve(values, w.reshape((1,) * (len(dims) - 2) + w.shape), mode="nearest")
    ds = xr.open_zarr(tmp_path / "out.zarr")
    assert list(ds.data_vars) == ["cells"] and ds["cells"].dims == dims
    np.testing.assert_allclose(ds["cells"].values, reference, rtol=1e-10)
    assert ds["cells"].attrs["units"] == "au"
    back = dc.open(tmp_path / "out.zarr", xarray=True)
    assert back.dims == dims and back.name == "cells" and "_FillValue" not in back.attrs
    np.testing.assert_allclose(back.values, reference, rtol=1e-10)
    for d in dims:
        np.testing.assert_array_equal(ds[d].values, x[d].values)
        np.testing.assert_array_equal(back[d].values, x[d].values)
    assert back.attrs["distconv"]["complete"] is True
