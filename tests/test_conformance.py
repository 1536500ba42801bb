"""Conformance: distconv.correlate/convolve equal scipy.ndimage (float64) for every CPU engine.

Parametrised over the engines installed here and the methods each implements; each case runs the
real graph (overlap, edge padding per chunk, engine call) on random data with awkward chunking.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr
from conftest import MODES, engine_method_params, random_weights, tolerance
from scipy import ndimage

import distconv as dc


def reference(x, w, convolution, **kwargs):
    function = ndimage.convolve if convolution else ndimage.correlate
    return function(np.asarray(x, dtype=np.float64), np.asarray(w, dtype=np.float64), **kwargs)


def run(x, w, convolution, chunks, **kwargs):
    function = dc.convolve if convolution else dc.correlate
    return function(da.from_array(x, chunks=chunks), w, **kwargs).compute(scheduler="sync")


@pytest.mark.parametrize("engine,method", engine_method_params())
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", [3, 4, 5])
@pytest.mark.parametrize("convolution", [False, True], ids=["correlate", "convolve"])
def test_modes_sizes_origins(rng, engine, method, mode, size, convolution):
    x = rng.random((23, 17))
    w = random_weights(rng, (size, size - 1), separable=method == "separable")
    for origin in {(-(size // 2), 0), (0, 0), ((size - 1) // 2, -((size - 1) // 2))}:
        expected = reference(x, w, convolution, mode=mode, cval=0.7, origin=origin)
        got = run(
            x,
            w,
            convolution,
            (7, 5),
            mode=mode,
            cval=0.7,
            origin=origin,
            method=method,
            engine=engine,
        )
        np.testing.assert_allclose(
            got, expected, rtol=0, atol=tolerance(x, w, np.float64), err_msg=f"origin {origin}"
        )


@pytest.mark.parametrize("engine,method", engine_method_params())
@pytest.mark.parametrize(
    "chunks",
    [
        (2, 3),  # thinner than the halo: merged first
        (10, 4),  # uneven edge chunks
        (50, 50),  # one chunk
        ((1, 8, 2, 12), (16, 1)),  # explicit irregular chunks, a 1-wide chunk
    ],
    ids=["thin", "uneven", "single", "irregular"],
)
@pytest.mark.parametrize("mode", ["reflect", "wrap", "constant", "mirror"])
def test_chunkings(rng, engine, method, chunks, mode):
    x = rng.random((23, 17))
    w = random_weights(rng, (7, 6), separable=method == "separable")
    got = run(x, w, False, chunks, mode=mode, method=method, engine=engine)
    np.testing.assert_allclose(
        got, reference(x, w, False, mode=mode), rtol=0, atol=tolerance(x, w, np.float64)
    )


@pytest.mark.parametrize("engine,method", engine_method_params())
@pytest.mark.parametrize("mode", MODES)
def test_kernel_larger_than_image(rng, engine, method, mode):
    """scipy extends tiny inputs by repeated reflection/wrapping; so must the per-chunk padding."""
    x = rng.random((3, 5))
    w = random_weights(rng, (9, 8), separable=method == "separable")
    got = run(x, w, True, (2, 2), mode=mode, method=method, engine=engine)
    np.testing.assert_allclose(
        got, reference(x, w, True, mode=mode), rtol=0, atol=tolerance(x, w, np.float64)
    )


@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
@pytest.mark.parametrize("method", ["direct", "fft", "separable"])
def test_ranks(rng, ndim, method):
    from conftest import cpu_engines_for

    engines = cpu_engines_for(method, ndim)
    shape = (29, 13, 9, 6)[:ndim]
    sizes = (5, 4, 3, 2)[:ndim]
    x = rng.random(shape)
    w = random_weights(rng, sizes, separable=method == "separable")
    chunks = tuple(max(2, s // 3) for s in shape)
    for engine in engines:
        for convolution in (False, True):
            got = run(
                x,
                w,
                convolution,
                chunks,
                mode="mirror",
                origin=(1,) + (0,) * (ndim - 1),
                method=method,
                engine=engine,
            )
            expected = reference(x, w, convolution, mode="mirror", origin=(1,) + (0,) * (ndim - 1))
            np.testing.assert_allclose(
                got,
                expected,
                rtol=0,
                atol=tolerance(x, w, np.float64),
                err_msg=f"{engine} convolve={convolution}",
            )


@pytest.mark.parametrize("engine,method", engine_method_params(ndim=3))
@pytest.mark.parametrize(
    "axes,wshape", [((1, 2), (5, 4)), ((2, 0), (3, 6)), ((-1,), (7,)), ((0,), (2,))]
)
def test_axes_with_fewer_weight_dims(rng, engine, method, axes, wshape):
    x = rng.random((11, 14, 13))
    w = random_weights(rng, wshape, separable=method == "separable")
    origin = tuple(-(s // 2) for s in wshape)
    # The reference: the same kernel placed on the named axes of a full-rank kernel.
    positive = [a % 3 for a in axes]
    full = np.transpose(w, np.argsort(positive)).reshape(
        [w.shape[positive.index(a)] if a in positive else 1 for a in range(3)]
    )
    full_origin = [origin[positive.index(a)] if a in positive else 0 for a in range(3)]
    expected = reference(x, full, True, mode="nearest", origin=full_origin)
    got = run(
        x,
        w,
        True,
        (4, 5, 6),
        mode="nearest",
        origin=origin,
        axes=axes,
        method=method,
        engine=engine,
    )
    np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance(x, w, np.float64))


def saturated(result: np.ndarray, dtype) -> np.ndarray:
    """The expected integer output for a float result: truncated toward zero, then clipped."""
    info = np.iinfo(dtype)
    exact = np.trunc(np.asarray(result, dtype=np.float64))
    return np.clip(np.nan_to_num(exact), info.min, info.max).astype(dtype)


@pytest.mark.parametrize("engine,method", engine_method_params(dtype=np.float32))
@pytest.mark.parametrize("dtype", ["uint8", "int16", "int32", "float16", "float32", "float64"])
def test_input_dtypes(rng, engine, method, dtype):
    """Every engine computes every input dtype in float32 (float64 for float64) and returns
    the input's dtype, as scipy.ndimage does (float16, which scipy refuses, included)."""
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    x = (
        rng.integers(info.min // 2 if info.min else 0, info.max // 2, (30, 20))
        if info
        else rng.standard_normal((30, 20))
    ).astype(dtype)
    w = random_weights(rng, (5, 5), separable=method == "separable")
    chunks = da.from_array(x, chunks=(8, 7))
    compute = np.float64 if dtype == "float64" else np.float32
    as_float = dc.correlate(chunks, w, compute, method=method, engine=engine)
    got = as_float.compute(scheduler="sync")
    np.testing.assert_allclose(
        got, reference(x, w, False), rtol=0, atol=tolerance(x.astype(float), w, compute)
    )
    y = dc.correlate(chunks, w, method=method, engine=engine)
    assert y.dtype == np.dtype(dtype)
    expected = saturated(got, dtype) if info else got.astype(dtype)
    np.testing.assert_array_equal(y.compute(scheduler="sync"), expected)


@pytest.mark.parametrize("out_dtype", ["uint8", "int16", "int32", "float32"])
def test_integer_output_truncates_and_saturates(rng, out_dtype):
    """Integer output: truncated toward zero (as scipy.ndimage) and clipped to the dtype's
    range where scipy wraps."""
    x = rng.integers(0, 256, (40, 30)).astype(np.uint8)
    w = np.ones((3, 3)) * 2.0 - rng.random((3, 3))  # sums far beyond 255: must clip, not wrap
    w[1, 1] = -9.0  # and go negative: must clip at 0 for uint
    got = dc.correlate(x, w, output=out_dtype).compute(scheduler="sync")
    assert got.dtype == np.dtype(out_dtype)
    exact = reference(x, w, False)
    if np.dtype(out_dtype).kind in "iu":
        info = np.iinfo(out_dtype)
        expected = saturated(exact, out_dtype)
        # float32 arithmetic may land on the other side of an integer: allow one unit there.
        assert np.abs(got.astype(np.float64) - expected).max() <= 1
        assert (got == info.max).any() or info.max > exact.max()
        assert (got == 0).any() or info.min < 0  # negative sums saturate at 0, never wrap
    else:
        np.testing.assert_allclose(got, exact, rtol=0, atol=tolerance(x, w, np.float32))


def test_int32_output_near_the_limit_does_not_wrap():
    x = np.full((8, 8), 2**30, dtype=np.int32)
    got = dc.correlate(x, np.full((3, 3), 1.0), output="int32").compute(scheduler="sync")
    assert (got == np.iinfo(np.int32).max).all()  # 9 · 2**30 saturates at the maximum


def test_input_kinds_give_the_same_result(tmp_path, rng):
    x = rng.random((40, 33)).astype(np.float32)
    w = rng.random((5, 3))
    z = zarr.create_array(str(tmp_path / "x.zarr"), shape=x.shape, chunks=(16, 16), dtype=x.dtype)
    z[:] = x
    expected = reference(x, w, True)
    for given in (
        x,
        da.from_array(x, chunks=(9, 9)),
        z,
        str(tmp_path / "x.zarr"),
        tmp_path / "x.zarr",
    ):
        y = dc.convolve(given, w)
        assert isinstance(y, da.Array)
        np.testing.assert_allclose(
            y.compute(scheduler="sync"), expected, rtol=0, atol=tolerance(x, w, np.float32)
        )
    assert dc.convolve(z, w).chunks == da.from_zarr(z).chunks  # chunked like the input


@pytest.mark.parametrize("fft_library", ["scipy.fft", "ducc0"])
def test_auto_method_is_per_chunk_cost_model(rng, monkeypatch, fft_library):
    from distconv.kernels import registry
    from distconv.plan import method_costs, plan_correlation

    fft_cost = registry.FFT_COST_DUCC0 if fft_library == "ducc0" else registry.FFT_COST_SCIPY
    monkeypatch.setitem(registry.ENGINES["scipy"].cost, "fft", (0.0, fft_cost))

    tiny = plan_correlation((512, 512), np.float32, rng.random((3, 3)), engine="scipy")
    large = plan_correlation((512, 512), np.float32, rng.random((31, 31)), engine="scipy")
    box = plan_correlation((512, 512), np.float32, dc.load_weights("box:size=3", 2), engine="scipy")
    assert large.method_for((512, 512)) == "fft"
    if fft_library == "scipy.fft":
        assert tiny.method_for((512, 512)) == "direct"
        assert box.method_for((512, 512)) == "separable"
    else:  # ducc0's FFTs are as cheap as two 3-tap ndimage passes (benchmarks/RESULTS.md)
        assert tiny.method_for((512, 512)) == "fft"
        assert box.method_for((512, 512)) in ("separable", "fft")
    for plan in (tiny, large, box):  # the choice is the cheapest estimate, per block shape
        for shape in ((512, 512), (40, 700)):
            costs = method_costs(plan.weights, shape, plan.engines)
            assert plan.method_for(shape) == min(costs, key=costs.get)
