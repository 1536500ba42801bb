"""The Numba CPU engine (distconv.kernels.numba_cpu) against scipy.ndimage in float64.

Every input is random (never zeros). Kernel functions are checked directly against the per-chunk
contract, then end to end through distconv.correlate/convolve on Dask arrays with small, uneven
chunks in every boundary mode.
"""

from __future__ import annotations

import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest

numba = pytest.importorskip("numba")

import dask.array as da  # noqa: E402
import numpy as np  # noqa: E402
from conftest import MODES  # noqa: E402
from numpy.testing import assert_allclose  # noqa: E402
from scipy import ndimage  # noqa: E402

import distconv  # noqa: E402
from distconv import kernels  # noqa: E402
from distconv.kernels import numba_cpu  # noqa: E402

# Relative to the largest reference value (the float32 figure is distconv's float32 tolerance).
RTOL = {np.float32: 1e-5, np.float64: 1e-12}


def _rng(*key) -> np.random.Generator:
    """A generator seeded from the test's parameters (crc32: stable across processes)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _random_weights(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    """Random taps, with one zero tap when there are several (exercises tap skipping)."""
    weights = rng.uniform(-1.0, 1.0, shape)
    if weights.size > 2:
        weights.flat[weights.size // 2] = 0.0
    return weights.astype(dtype)


def _valid_reference(block: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The valid part of scipy.ndimage.correlate, computed in float64."""
    full = ndimage.correlate(block.astype(np.float64), weights.astype(np.float64), mode="constant")
    crop = tuple(slice(w // 2, w // 2 + b - w + 1) for b, w in zip(block.shape, weights.shape))
    return full[crop]


def _assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float) -> None:
    assert actual.shape == expected.shape
    assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


DIRECT_CASES = [
    ((64,), (3,)),
    ((57,), (4,)),
    ((3000,), (7,)),  # longer than one accumulator segment
    ((33, 40), (3, 3)),
    ((31, 28), (4, 6)),
    ((20, 2100), (2, 5)),  # rows longer than one segment
    ((17, 18, 19), (3, 3, 3)),
    ((14, 15, 16), (2, 5, 4)),
    ((16, 15, 3), (3, 4, 1)),  # trailing unfiltered axis merged into the row
    ((6, 7, 8, 9), (2, 3, 1, 2)),
    ((9, 11), (1, 1)),
    ((5, 12), (5, 1)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("shape", "wshape"), DIRECT_CASES)
def test_correlate_direct_matches_scipy(shape, wshape, dtype):
    rng = _rng("direct", shape, wshape, dtype)
    block = rng.standard_normal(shape).astype(dtype)
    weights = _random_weights(rng, wshape, dtype)
    out = numba_cpu.correlate_direct(block, weights)
    assert out.dtype == dtype
    assert out.flags.c_contiguous
    assert out.shape == tuple(b - w + 1 for b, w in zip(shape, wshape))
    _assert_close(out, _valid_reference(block, weights), RTOL[dtype])


def test_correlate_direct_float32_error_bounds():
    """Up to 128 taps float32 sums in float32 within taps·2⁻²⁴·Σ|w||x|; beyond, it rounds once."""
    rng = _rng("float32-accumulator")
    block = rng.standard_normal((70, 80)).astype(np.float32)
    small = rng.standard_normal((9, 9)).astype(np.float32)  # 81 taps: float32 accumulator
    out = numba_cpu.correlate_direct(block, small)
    bound = (small.size + 1) * 2.0**-24 * _valid_reference(np.abs(block), np.abs(small))
    assert np.all(np.abs(out - _valid_reference(block, small)) <= bound)

    large = rng.standard_normal((13, 11)).astype(np.float32)  # 143 taps: float64 accumulator
    out = numba_cpu.correlate_direct(block, large)
    assert_allclose(out, _valid_reference(block, large), rtol=2**-23, atol=1e-30)


def test_correlate_direct_non_contiguous_and_readonly_blocks():
    rng = _rng("layout")
    base = rng.standard_normal((40, 50))
    weights = _random_weights(rng, (3, 4), np.float64)
    view = base[3:37:2, 5:45]  # strided view, as the graph's window slicing can produce
    expected = _valid_reference(view, weights)
    _assert_close(numba_cpu.correlate_direct(view, weights), expected, 1e-12)
    _assert_close(numba_cpu.correlate_direct(np.asfortranarray(view), weights), expected, 1e-12)
    frozen = np.ascontiguousarray(view)
    frozen.flags.writeable = False
    _assert_close(numba_cpu.correlate_direct(frozen, weights), expected, 1e-12)


def test_correlate_direct_all_zero_weights_give_zeros():
    block = _rng("zeros").standard_normal((10, 12)).astype(np.float32)
    out = numba_cpu.correlate_direct(block, np.zeros((3, 3), np.float32))
    assert out.shape == (8, 10) and out.dtype == np.float32
    assert not out.any()


def test_correlate_direct_rejects_bad_input():
    block = np.ones((5, 5), np.float64) + _rng("bad").random((5, 5))
    with pytest.raises(ValueError):
        numba_cpu.correlate_direct(block, np.ones((3,)))
    with pytest.raises(ValueError):
        numba_cpu.correlate_direct(block, np.ones((7, 3)))
    with pytest.raises(TypeError):
        numba_cpu.correlate_direct(block.astype(np.int32), np.ones((3, 3), np.int32))


SEPARABLE_CASES = [
    ((50,), (5,)),
    ((30, 31), (3, 4)),
    ((30, 31), (None, 6)),
    ((25, 26), (7, None)),
    ((12, 13, 14), (3, 2, 5)),
    ((12, 13, 14), (4, None, 3)),
    ((6, 7, 8, 9), (2, 3, None, 3)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("shape", "sizes"), SEPARABLE_CASES)
def test_correlate_separable_matches_scipy(shape, sizes, dtype):
    rng = _rng("separable", shape, sizes, dtype)
    block = rng.standard_normal(shape).astype(dtype)
    factors = [None if s is None else rng.uniform(-1.0, 1.0, s).astype(dtype) for s in sizes]
    weights = np.ones((1,) * len(shape))
    for axis, factor in enumerate(factors):
        if factor is not None:
            view = [1] * len(shape)
            view[axis] = factor.shape[0]
            weights = weights * factor.astype(np.float64).reshape(view)
    out = numba_cpu.correlate_separable(block, factors)
    assert out.dtype == dtype
    assert out.flags.c_contiguous
    _assert_close(out, _valid_reference(block, weights), RTOL[dtype])


def test_correlate_separable_equals_direct_on_outer_product():
    rng = _rng("sep-vs-direct")
    block = rng.standard_normal((40, 45))
    fy, fx = rng.standard_normal(5), rng.standard_normal(4)
    direct = numba_cpu.correlate_direct(block, np.multiply.outer(fy, fx))
    _assert_close(numba_cpu.correlate_separable(block, [fy, fx]), direct, 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.complex128])
def test_multiply_equal_shapes_compiled(dtype):
    rng = _rng("multiply", dtype)
    a = (rng.standard_normal((13, 17)) * 50).astype(dtype)
    b = (rng.standard_normal((13, 17)) * 50).astype(dtype)
    out = numba_cpu.multiply(a, b)
    expected = np.multiply(a, b)
    assert out.dtype == expected.dtype and out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(
    ("ashape", "bshape", "adtype", "bdtype"),
    [
        ((4, 5), (5,), np.float32, np.float32),  # broadcasting
        ((4, 1), (1, 6), np.float64, np.float64),
        ((4, 5), (4, 5), np.float32, np.float64),  # mixed dtypes promote
        ((4, 5), (4, 5), np.float16, np.float16),
        ((3, 4), (3, 4), np.bool_, np.bool_),
    ],
)
def test_multiply_falls_back_to_numpy(ashape, bshape, adtype, bdtype):
    rng = _rng("multiply-fallback", ashape, bshape)
    a = (
        rng.standard_normal(ashape) > 0
        if adtype is np.bool_
        else rng.standard_normal(ashape).astype(adtype)
    )
    b = (
        rng.standard_normal(bshape) > 0
        if bdtype is np.bool_
        else rng.standard_normal(bshape).astype(bdtype)
    )
    out = numba_cpu.multiply(a, b)
    expected = np.multiply(a, b)
    assert out.dtype == expected.dtype
    np.testing.assert_array_equal(out, expected)


def test_supports_cost_and_device_info():
    spec = kernels.ENGINES["numba"]  # ranks, dtypes and cost live in the registry
    for ndim in (1, 2, 3, 4):
        for dtype in ("float32", "float64"):
            assert spec.supports("correlate_direct", ndim, dtype)
            assert spec.supports("correlate_separable", ndim, dtype)
    assert not spec.supports("correlate_direct", 2, "float16")
    assert not spec.supports("correlate_fft", 2, "float32")
    assert spec.supports("multiply", 2, "int32")
    assert set(spec.cost) == {"direct", "separable"}
    for per_pixel, per_unit in spec.cost.values():
        assert 0 <= per_pixel < 1e-6 and 0 < per_unit < 1e-6
    assert "numba" in numba_cpu.device_info()
    assert kernels.supports("numba", "correlate_direct", 3, np.float32)


def test_import_distconv_does_not_import_numba():
    code = (
        "import sys, distconv, distconv.kernels; "
        "assert 'numba' not in sys.modules, 'numba imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_correlate_direct_from_four_threads():
    """Dask runs tasks on worker threads: concurrent calls must each get their own result."""
    rng = _rng("threads")
    jobs = []
    for i in range(12):
        dtype = (np.float32, np.float64)[i % 2]
        block = rng.standard_normal((160 + i, 150 + 2 * i)).astype(dtype)
        weights = _random_weights(rng, (3 + i % 4, 2 + i % 5), dtype)
        jobs.append((block, weights))
    expected = [_valid_reference(b, w) for b, w in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            results = list(pool.map(lambda job: numba_cpu.correlate_direct(*job), jobs))
            for (block, _w), result, reference in zip(jobs, results, expected):
                assert result.dtype == block.dtype
                _assert_close(result, reference, RTOL[block.dtype.type])


# End to end: distconv's graph (halo exchange, edge padding, origin) with the numba engine.


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("function", ["correlate", "convolve"])
def test_end_to_end_2d_every_mode(function, mode):
    rng = _rng("e2e2", function, mode)
    x = rng.standard_normal((37, 29))
    weights = _random_weights(rng, (4, 3), np.float64)
    d = da.from_array(x, chunks=((10, 7, 12, 8), (9, 5, 15)))
    for origin in (0, (1, -1)):
        y = getattr(distconv, function)(
            d, weights, mode=mode, cval=1.5, origin=origin, engine="numba", method="direct"
        )
        expected = getattr(ndimage, function)(x, weights, mode=mode, cval=1.5, origin=origin)
        assert y.dtype == np.float64
        _assert_close(y.compute(scheduler="threads"), expected, 1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_end_to_end_3d_float32(mode):
    rng = _rng("e2e3", mode)
    x = rng.standard_normal((13, 16, 11)).astype(np.float32)
    weights = _random_weights(rng, (3, 2, 4), np.float64)
    d = da.from_array(x, chunks=((5, 8), (6, 4, 6), (7, 4)))
    y = distconv.correlate(
        d, weights, mode=mode, cval=-0.5, origin=(0, 0, 1), engine="numba", method="direct"
    )
    assert y.dtype == np.float32
    expected = ndimage.correlate(
        x.astype(np.float64), weights, mode=mode, cval=-0.5, origin=(0, 0, 1)
    )
    _assert_close(y.compute(scheduler="threads"), expected, 1e-5)


@pytest.mark.parametrize("mode", ["reflect", "wrap", "constant"])
def test_end_to_end_1d_and_axes(mode):
    rng = _rng("e2e1", mode)
    x = rng.standard_normal(101)
    weights = _random_weights(rng, (6,), np.float64)
    y = distconv.convolve(
        da.from_array(x, chunks=(30, 21, 40, 10)),
        weights,
        mode=mode,
        engine="numba",
        method="direct",
    )
    _assert_close(y.compute(scheduler="threads"), ndimage.convolve(x, weights, mode=mode), 1e-12)

    # A 1-D kernel along one axis of a 3-D array (weights of size 1 on the other axes).
    x3 = rng.standard_normal((9, 14, 12))
    y3 = distconv.correlate(
        da.from_array(x3, chunks=(4, 5, 7)),
        weights,
        mode=mode,
        axes=(1,),
        engine="numba",
        method="direct",
    )
    expected = ndimage.correlate1d(x3, weights, axis=1, mode=mode)
    _assert_close(y3.compute(scheduler="threads"), expected, 1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_end_to_end_separable(mode):
    rng = _rng("e2e-sep", mode)
    x = rng.standard_normal((31, 26)).astype(np.float32)
    weights = np.multiply.outer(rng.uniform(0.5, 1.5, 5), rng.uniform(-1.0, 1.0, 4))
    d = da.from_array(x, chunks=((12, 9, 10), (8, 11, 7)))
    y = distconv.correlate(d, weights, mode=mode, cval=2.0, engine="numba", method="separable")
    expected = ndimage.correlate(x.astype(np.float64), weights, mode=mode, cval=2.0)
    _assert_close(y.compute(scheduler="threads"), expected, 1e-5)


def test_end_to_end_auto_method_stays_on_numba():
    rng = _rng("e2e-auto")
    x = rng.standard_normal((40, 33))
    weights = _random_weights(rng, (5, 5), np.float64)
    y = distconv.correlate(da.from_array(x, chunks=(15, 11)), weights, engine="numba")
    _assert_close(y.compute(scheduler="threads"), ndimage.correlate(x, weights), 1e-12)
