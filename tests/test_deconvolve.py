"""Richardson–Lucy and Wiener deconvolution against scikit-image and float64 SciPy references.

Random non-negative images, odd and even PSF sizes, 2-D and 3-D, every strategy. Tiles are the
input's chunks here (a planner told of many threads does not merge them), so the halos between
tiles are exercised; a few cases use the planner's own choice.
"""

from __future__ import annotations

import importlib.util
import os

import dask.array as da
import numpy as np
import pytest
import zarr
from scipy import ndimage

import distconv as dc
from distconv.clusters.resources import Resources
from distconv.errors import DistconvError, InputValueError
from distconv.ops.deconvolve import plan_for, richardson_lucy_with_plan
from distconv.ops.deconvolve_measure import measure_halo_difference
from distconv.ops.deconvolve_passes import open_scratch, pass_markers

restoration = pytest.importorskip("skimage.restoration")

# Many threads: the cost model keeps the input's chunks as tiles instead of merging them.
SMALL_TILES = Resources(64, 1, 2**30, "tests: small tiles")
RTOL = 1e-4  # the bound for float32 against scikit-image


def relative(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def random_psf(rng, shape):
    psf = rng.random(shape) + 0.05
    return psf / psf.sum()


def rl(image, psf, iterations, *, chunks, strategy=None, scratch=None, **kwargs):
    """distconv's Richardson–Lucy on a dask array of ``chunks``, tiles = chunks."""
    x = da.from_array(image, chunks=chunks)
    defaults = {"clip": False, "filter_epsilon": None, "mode": "constant", "halo": "exact"}
    plan = plan_for(
        x,
        psf,
        "richardson-lucy",
        iterations=iterations,
        resources=SMALL_TILES,
        strategy=strategy,
        **{**defaults, **kwargs},
    )
    y = richardson_lucy_with_plan(x, plan, psf, scratch=scratch)
    return y.compute(scheduler="threads"), plan


def rl_reference(image, psf, iterations, mode, clip=False):
    """Float64 Richardson–Lucy with scipy.ndimage's boundary modes (skimage's centring)."""
    u = np.full(image.shape, 0.5)
    for _ in range(iterations):
        blur = ndimage.correlate(u, np.flip(psf), mode=mode) + 1e-12
        u *= ndimage.correlate(image / blur, psf, mode=mode)
    return np.clip(u, -1, 1) if clip else u


@pytest.mark.parametrize("strategy", ["tiles", "passes"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("iterations", [1, 7, 50])
@pytest.mark.parametrize(
    "psf_shape, chunks", [((5, 5), (16, 16)), ((4, 6), (7, 40)), ((3, 8), (48, 13))]
)
def test_richardson_lucy_2d_equals_skimage(tmp_path, psf_shape, chunks, iterations, clip, strategy):
    rng = np.random.default_rng(sum(psf_shape) + iterations)
    image = rng.random((48, 40), dtype=np.float32)
    psf = random_psf(rng, psf_shape)
    expected = restoration.richardson_lucy(image.astype(np.float64), psf, iterations, clip=clip)
    out, plan = rl(
        image, psf, iterations, chunks=chunks, clip=clip, strategy=strategy, scratch=tmp_path / "s"
    )
    assert plan.strategy == strategy and plan.exact
    assert out.dtype == np.float32 and out.shape == image.shape
    assert relative(out, expected) < RTOL


@pytest.mark.parametrize("strategy", ["tiles", "passes"])
@pytest.mark.parametrize("iterations", [1, 12])
@pytest.mark.parametrize("psf_shape", [(3, 4, 5), (5, 5, 5), (1, 3, 2)])
def test_richardson_lucy_3d_equals_skimage(tmp_path, psf_shape, iterations, strategy):
    rng = np.random.default_rng(7)
    image = rng.random((18, 20, 22), dtype=np.float32)
    psf = random_psf(rng, psf_shape)
    expected = restoration.richardson_lucy(image.astype(np.float64), psf, iterations, clip=False)
    out, _ = rl(image, psf, iterations, chunks=(9, 8, 11), strategy=strategy, scratch=tmp_path)
    assert relative(out, expected) < RTOL


def test_fft_blurs_on_exact_tiles_equal_skimage():
    """Large non-separable PSF: FFT blurs, tiles that keep their FFT length between blurs."""
    rng = np.random.default_rng(21)
    image = rng.random((150, 130), dtype=np.float32)
    psf = random_psf(rng, (9, 12))
    expected = restoration.richardson_lucy(image.astype(np.float64), psf, 12, clip=False)
    out, plan = rl(image, psf, 12, chunks=(50, 65), engine="scipy")
    assert plan.forward.method_for([50, 65]) == "fft" and plan.layout.tasks == 6
    assert relative(out, expected) < RTOL


def test_filter_epsilon_as_skimage():
    rng = np.random.default_rng(3)
    image = rng.random((40, 36), dtype=np.float32)
    psf = random_psf(rng, (5, 4))
    expected = restoration.richardson_lucy(
        image.astype(np.float64), psf, 10, clip=False, filter_epsilon=0.3
    )
    out, _ = rl(image, psf, 10, chunks=(13, 12), filter_epsilon=0.3)
    assert relative(out, expected) < RTOL
    assert 0.01 < np.mean(expected == 0) < 0.5  # the threshold zeroed some pixels, not all


def test_public_api_with_the_planners_own_tiles():
    rng = np.random.default_rng(11)
    image = rng.random((70, 66), dtype=np.float32)
    psf = random_psf(rng, (6, 5))
    expected = restoration.richardson_lucy(image.astype(np.float64), psf, 20, clip=True)
    y = dc.richardson_lucy(image, psf, 20, mode="constant", halo="exact")
    assert isinstance(y, da.Array) and y.chunks == da.from_array(image, chunks="auto").chunks
    assert relative(y.compute(), expected) < RTOL


@pytest.mark.parametrize("strategy", ["tiles", "passes"])
@pytest.mark.parametrize("mode", ["reflect", "nearest", "mirror", "wrap"])
def test_boundary_modes_match_scipy_reference(tmp_path, mode, strategy):
    rng = np.random.default_rng(5)
    image = rng.random((45, 38), dtype=np.float32)
    psf = random_psf(rng, (5, 6))
    expected = rl_reference(image.astype(np.float64), psf, 9, mode)
    out, _ = rl(image, psf, 9, chunks=(15, 19), mode=mode, strategy=strategy, scratch=tmp_path)
    assert relative(out, expected) < RTOL


ENGINES = ["scipy", "numba", "tensorflow"]


@pytest.mark.parametrize("engine", ENGINES)
def test_every_cpu_engine_gives_the_same_numbers(engine):
    needs = {"numba": "numba", "tensorflow": "tensorflow"}.get(engine)
    if needs and importlib.util.find_spec(needs) is None:
        pytest.skip(f"{needs} is not installed")
    rng = np.random.default_rng(2)
    image = rng.random((40, 44), dtype=np.float32)
    for psf in (random_psf(rng, (5, 5)), dc.load_weights("gaussian:sigma=1.2", ndim=2)):
        expected = restoration.richardson_lucy(image.astype(np.float64), psf, 8, clip=False)
        out, plan = rl(image, psf, 8, chunks=(20, 22), engine=engine)
        assert set(plan.engines_used()) == {engine}
        assert relative(out, expected) < RTOL


def _skip_without_a_cuda_device() -> None:
    if importlib.util.find_spec("cupy") is None:
        pytest.skip("CuPy is not installed")
    from distconv.clusters.resources import gpu_count

    if gpu_count() == 0:
        pytest.skip("no CUDA device: the CuPy engine's deconvolution needs a GPU")


@pytest.mark.gpu
def test_cupy_engine_keeps_the_estimate_on_the_device():
    _skip_without_a_cuda_device()
    import cupy

    rng = np.random.default_rng(4)
    image = rng.random((64, 48), dtype=np.float32)
    psf = random_psf(rng, (5, 4))
    expected = restoration.richardson_lucy(image.astype(np.float64), psf, 10, clip=False)
    x = da.from_array(cupy.asarray(image), chunks=(32, 24), asarray=False)
    y = dc.richardson_lucy(x, psf, 10, clip=False, mode="constant", halo="exact", engine="cupy")
    out = y.compute()
    assert isinstance(out, cupy.ndarray)
    assert relative(cupy.asnumpy(out), expected) < RTOL
    w = dc.wiener(x, psf, 0.1, clip=False, halo="exact", engine="cupy").compute()
    reference = restoration.wiener(image.astype(np.float64), psf, 0.1, clip=False)
    assert relative(cupy.asnumpy(w), reference) < RTOL


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", ["tiles", "passes"])
def test_cupy_engine_on_a_cluster_uploads_host_tiles_in_the_tasks(tmp_path, strategy):
    """Host chunks on a distributed cluster: the client leaves them on the host (it imports no
    CuPy), each task uploads its tile once, and the result equals scikit-image's."""
    _skip_without_a_cuda_device()
    from distributed import Client, LocalCluster

    rng = np.random.default_rng(5)
    image = rng.random((96, 80), dtype=np.float32)
    psf = random_psf(rng, (5, 5))
    expected = restoration.richardson_lucy(image.astype(np.float64), psf, 8, clip=False)
    x = da.from_array(image, chunks=(48, 40))
    defaults = {"clip": False, "filter_epsilon": None, "mode": "constant", "halo": "exact"}
    plan = plan_for(
        x,
        psf,
        "richardson-lucy",
        iterations=8,
        resources=SMALL_TILES,
        strategy=strategy,
        engine="cupy",
        **defaults,
    )
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster:
        with Client(cluster):
            y = richardson_lucy_with_plan(x, plan, psf, scratch=tmp_path / "scratch")
            assert isinstance(y._meta, np.ndarray)
            out = y.compute()
    assert isinstance(out, np.ndarray)
    assert relative(out, expected) < RTOL


def beads(rng, shape, count=150):
    """Non-negative synthetic beads blurred and Poisson-noised: what deconvolution is for."""
    truth = np.zeros(shape)
    truth[tuple(rng.integers(0, s, count) for s in shape)] = rng.uniform(50, 200, count)
    truth = ndimage.gaussian_filter(truth, 1.0) + 1.0
    psf = dc.load_weights("gaussian:sigma=1.5", ndim=len(shape))
    return rng.poisson(ndimage.convolve(truth, psf, mode="reflect")).astype(np.float32), psf


def test_a_smaller_halo_is_exact_far_from_tile_borders_and_close_near_them():
    rng = np.random.default_rng(8)
    image, psf = beads(rng, (120, 120))
    exact, _ = rl(image, psf, 3, chunks=60, mode="reflect")
    approximate, plan = rl(image, psf, 3, chunks=60, mode="reflect", halo=6)
    assert not plan.exact and plan.halo == (6, 6)
    reach = plan.dependence[0] - 6  # pixels this far from the inner border are exact
    far = np.ones(image.shape, bool)
    far[60 - reach : 60 + reach, :] = False
    far[:, 60 - reach : 60 + reach] = False
    assert relative(approximate[far], exact[far]) < 1e-5
    assert 1e-6 < relative(approximate, exact) < 0.1  # near the borders: close, not equal


def test_measured_difference_of_the_smaller_halo():
    rng = np.random.default_rng(9)
    image, psf = beads(rng, (160, 160))
    x = da.from_array(image, chunks=80)
    plan = plan_for(x, psf, "richardson-lucy", iterations=30, clip=False, halo=24)
    measured = measure_halo_difference(x, plan)
    assert measured["measured"] and 0 < measured["max_relative"] < 1e-3
    exact = plan_for(x, psf, "richardson-lucy", iterations=30, clip=False, halo="exact")
    assert measure_halo_difference(x, exact) == {"measured": False, "reason": "the plan is exact"}


def test_auto_chooses_by_cost():
    psf = np.ones((31, 31))
    few = plan_for(da.zeros((4096, 4096), chunks=1024), psf, "richardson-lucy", iterations=2)
    assert few.exact and few.strategy == "tiles"  # a 60-pixel halo costs little
    resources = Resources(16, 1, 2**30, "tests")
    many = plan_for(
        da.zeros((65536, 65536), chunks=1024),
        psf,
        "richardson-lucy",
        iterations=200,
        resources=resources,
    )
    assert not many.exact and many.strategy == "tiles" and many.halo == (60, 60)
    exact = plan_for(
        da.zeros((65536, 65536), chunks=1024),
        psf,
        "richardson-lucy",
        iterations=200,
        halo="exact",
        resources=resources,
    )
    assert exact.strategy == "passes"  # a 6000-pixel halo does not fit 1 GiB
    assert "passes, exact" in exact.describe() and "<- chosen" in exact.describe()


def test_saved_with_provenance(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.random((32, 30), dtype=np.float32)
    psf = random_psf(rng, (3, 3))
    out = dc.save(dc.richardson_lucy(image, psf, 5, halo="exact"), tmp_path / "rl.zarr")
    step = out.attrs["distconv"]["steps"][-1]
    assert step["operation"] == "richardson_lucy"
    assert step["parameters"]["iterations"] == 5 and step["parameters"]["halo"] == "exact"
    assert step["strategy"] in ("tiles", "passes") and step["halo"] == list(step["halo"])
    assert len(step["psf_sha256"]) == 64 and out.attrs["distconv"]["complete"] is True
    expected = rl_reference(image.astype(np.float64), psf, 5, "reflect", clip=True)
    assert relative(out[:], expected) < RTOL


def test_passes_resume_from_the_last_complete_estimate(tmp_path):
    rng = np.random.default_rng(6)
    image = rng.random((40, 40), dtype=np.float32)
    psf = random_psf(rng, (5, 5))
    x = da.from_array(image, chunks=10)
    plan = plan_for(
        x, psf, "richardson-lucy", iterations=8, mode="constant", clip=False,
        halo="exact", resources=SMALL_TILES, strategy="passes",
    )  # fmt: skip
    store = open_scratch(tmp_path / "scratch", plan, x)
    pass_markers(x, plan, store, 5).compute(scheduler="threads")  # as if stopped in pass 6
    assert store.complete("estimate-5") and store.complete("image")
    # Passes delete the estimate two behind them: at most three stay on disk.
    assert not os.path.exists(store.path("estimate-2")) or not store.complete("estimate-2")
    resumed = richardson_lucy_with_plan(x, plan, psf, scratch=tmp_path / "scratch")
    layers = [name for name in resumed.dask.layers if "pass" in name]
    assert not any("pass-1-" in name for name in layers)  # the image is not read again
    expected = restoration.richardson_lucy(image.astype(np.float64), psf, 8, clip=False)
    assert relative(resumed.compute(scheduler="threads"), expected) < RTOL
    other = plan_for(
        x, psf, "richardson-lucy", iterations=9, mode="constant", halo="exact",
        resources=SMALL_TILES, strategy="passes",
    )  # fmt: skip
    with pytest.raises(DistconvError, match="another job"):
        richardson_lucy_with_plan(x, other, psf, scratch=tmp_path / "scratch")


@pytest.mark.parametrize("value", [-0.5, np.nan, np.inf])
def test_images_richardson_lucy_cannot_take_stop_the_job(tmp_path, value):
    image = np.ones((30, 30), dtype=np.float32)
    image[20, 7] = value
    with pytest.raises(InputValueError, match=r"\[15:30, 0:15\]"):
        rl(image, np.ones((3, 3)) / 9, 3, chunks=15)
    with pytest.raises(InputValueError):
        dc.save(dc.richardson_lucy(image, np.ones((3, 3)) / 9, 3), tmp_path / "out.zarr")
    assert not os.path.exists(tmp_path / "out.zarr")  # nothing left behind


@pytest.mark.parametrize(
    "psf, iterations, words",
    [
        (np.array([[1.0, np.nan], [0.0, 1.0]]), 5, "NaN or infinity"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), 5, "NaN or infinity"),
        (np.zeros((3, 3)), 5, "all zeros"),
        (np.array([[1.0, -0.1], [0.5, 1.0]]), 5, "negative values"),
        (np.ones((3, 3, 3)), 5, "more than the 2-D image"),
        (np.ones(3), 5, "give the PSF the image's dimensions"),
        (np.ones((41, 3)), 5, "larger than the image on axis 0"),
        (np.ones((3, 3)), 0, "at least 1"),
        (np.ones((3, 3)), -2, "at least 1"),
        (np.ones((3, 3)), 10**6, "more than the 10000"),
        (np.ones((3, 3)), 2.5, "whole number"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(psf, iterations, words):
    image = np.ones((40, 30), dtype=np.float32)
    with pytest.raises(DistconvError, match=words.replace("(", r"\(")):
        dc.richardson_lucy(image, psf, iterations)


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("balance", [0.0005, 0.1, 5.0])
@pytest.mark.parametrize(
    "shape, psf_shape", [((64, 50), (5, 5)), ((64, 50), (4, 6)), ((20, 24, 18), (3, 4, 5))]
)
def test_wiener_whole_image_equals_skimage(shape, psf_shape, balance, clip):
    rng = np.random.default_rng(len(shape) + psf_shape[0])
    image = rng.random(shape, dtype=np.float32)
    psf = random_psf(rng, psf_shape)
    expected = restoration.wiener(image.astype(np.float64), psf, balance, clip=clip)
    y = dc.wiener(da.from_array(image, chunks=16), psf, balance, clip=clip, halo="exact")
    assert y.chunks == da.from_array(image, chunks=16).chunks
    assert relative(y.compute(), expected) < RTOL


@pytest.mark.parametrize("ducc0", [True, False], ids=["ducc0", "scipy.fft"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wiener_filter_op_on_both_fft_libraries(monkeypatch, ducc0, dtype):
    from distconv.kernels import scipy as engine

    if ducc0 and importlib.util.find_spec("ducc0") is None:
        pytest.skip("ducc0 not installed (a core dependency: pip install ducc0)")
    monkeypatch.setattr(engine, "_DUCC0_INSTALLED", ducc0)
    rng = np.random.default_rng(15)
    block = rng.random((33, 28, 10)).astype(dtype)
    psf = random_psf(rng, (3, 5, 2))
    got = engine.wiener_filter(block, psf.astype(dtype), 0.2)
    want = restoration.wiener(block.astype(np.float64), psf, 0.2, clip=False)
    assert got.dtype == dtype and got.shape == block.shape
    assert relative(got, want) < (1e-5 if dtype == np.float32 else 1e-12)


def test_wiener_custom_regulariser_as_skimage():
    rng = np.random.default_rng(12)
    image = rng.random((40, 42), dtype=np.float32)
    psf, reg = random_psf(rng, (5, 5)), rng.standard_normal((3, 3))
    expected = restoration.wiener(image.astype(np.float64), psf, 0.3, reg=reg, clip=False)
    assert relative(dc.wiener(image, psf, 0.3, reg=reg, clip=False).compute(), expected) < RTOL


def test_tiled_wiener_difference_is_small_with_a_periodic_halo():
    rng = np.random.default_rng(13)
    truth = ndimage.gaussian_filter(rng.random((256, 256)), 3)
    psf = dc.load_weights("gaussian:sigma=1.5", ndim=2)
    blurred = ndimage.convolve(truth, psf, mode="wrap").astype(np.float32)
    expected = restoration.wiener(blurred.astype(np.float64), psf, 0.05, clip=False)
    x = da.from_array(blurred, chunks=64)
    tiled = dc.wiener(x, psf, 0.05, clip=False, mode="wrap", halo=4 * psf.shape[0])
    assert relative(tiled.compute(), expected) < 1e-4
    assert (
        relative(dc.wiener(x, psf, 0.05, clip=False, mode="wrap", halo=0).compute(), expected)
        > 1e-2
    )


def test_wiener_auto_is_the_whole_image_when_it_is_small():
    plan = plan_for(da.zeros((256, 256), chunks=64), np.ones((5, 5)), "wiener", balance=0.1)
    assert plan.strategy == "whole" and plan.exact
    big = plan_for(
        da.zeros((32768, 32768), chunks=2048), np.ones((5, 5)), "wiener", balance=0.1,
        resources=Resources(8, 1, 2**30, "tests"),
    )  # fmt: skip
    assert big.strategy == "tiles" and big.halo == (20, 20)
    with pytest.raises(DistconvError, match="no exact strategy fits"):
        plan_for(
            da.zeros((32768, 32768), chunks=2048), np.ones((5, 5)), "wiener", balance=0.1,
            halo="exact", resources=Resources(8, 1, 2**30, "tests"),
        )  # fmt: skip


def test_wiener_saved_on_a_local_cluster(tmp_path):
    rng = np.random.default_rng(14)
    image = rng.random((96, 80), dtype=np.float32)
    zarr.create_array(str(tmp_path / "in.zarr"), shape=image.shape, chunks=(32, 40), dtype="f4")[
        :
    ] = image
    psf = random_psf(rng, (5, 5))
    with dc.cluster("local", workers=2, threads_per_worker=1, quiet=True):
        w = dc.save(
            dc.wiener(dc.open(tmp_path / "in.zarr"), psf, 0.2, clip=False), tmp_path / "w.zarr"
        )
        r = dc.save(
            dc.richardson_lucy(dc.open(tmp_path / "in.zarr"), psf, 6, clip=False, halo=20),
            tmp_path / "r.zarr",
        )
    assert w.chunks == (32, 40) and r.chunks == (32, 40)
    expected = restoration.wiener(image.astype(np.float64), psf, 0.2, clip=False)
    assert relative(w[:], expected) < RTOL  # small: the whole image is one task
    expected = rl_reference(image.astype(np.float64), psf, 6, "reflect")
    assert relative(r[:], expected) < RTOL  # halo 20 >= 6 iterations x 2 x 2: exact
