"""GPU engines (CuPy and numba-cuda) on a real CUDA device, against scipy.ndimage in float64.

Every test is marked ``gpu`` and skips, with the reason, unless CuPy is installed *and* reports
at least one CUDA device (the device count is checked, not just the import). The numba-cuda
tests also need numba and a real (not simulated) ``numba.cuda``; the simulator checks live in
tests/test_numba_cuda_sim.py. Inputs are random, never zeros.

Run on a GPU machine with ``pytest -m gpu tests/test_engine_gpu.py -v``.
"""

from __future__ import annotations

import importlib.util
import os
import zlib

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage

import distconv


def _no_gpu_reason() -> str | None:
    """Why the GPU tests cannot run here, or None when CuPy sees a CUDA device."""
    if importlib.util.find_spec("cupy") is None:
        return "no CUDA device: cupy not installed (pip install 'distconv[gpu]')"
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # no driver, driver too old, ...: CuPy raises CUDARuntimeError
        return (
            f"no CUDA device: cupy.cuda.runtime.getDeviceCount() failed "
            f"({type(error).__name__}: {error})"
        )
    if count == 0:
        return "no CUDA device: cupy.cuda.runtime.getDeviceCount() == 0"
    return None


def _no_numba_cuda_reason() -> str | None:
    """Why the numba-cuda device tests cannot run (checked without importing numba.cuda)."""
    if NO_GPU:
        return NO_GPU
    if importlib.util.find_spec("numba") is None:
        return "numba not installed (pip install 'distconv[gpu]')"
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return "NUMBA_ENABLE_CUDASIM is set: numba.cuda is the simulator in this process"
    return None


NO_GPU = _no_gpu_reason()
NO_NUMBA_CUDA = _no_numba_cuda_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(NO_GPU is not None, reason=NO_GPU or "")]
needs_numba_cuda = pytest.mark.skipif(NO_NUMBA_CUDA is not None, reason=NO_NUMBA_CUDA or "")

# Absolute tolerance as a fraction of the largest possible |output| (sum|w| * max|x|).
TOL = {np.float32: 1e-5, np.float64: 1e-10}
SHAPES = {2: (61, 47), 3: (19, 16, 13)}
KERNELS = {
    (2, "odd"): (5, 3),
    (2, "even"): (4, 6),
    (3, "odd"): (3, 5, 3),
    (3, "even"): (2, 4, 4),
}


@pytest.fixture(scope="module")
def cp():
    import cupy

    return cupy


@pytest.fixture(scope="module")
def cupy_engine():
    from distconv.kernels import cupy as engine

    return engine


@pytest.fixture(scope="module")
def nc():
    from numba import cuda

    if not cuda.is_available():
        pytest.skip("numba.cuda.is_available() is False (driver/toolkit mismatch?)")
    from distconv.kernels import numba_cuda

    assert not numba_cuda.SIMULATOR
    return numba_cuda


@pytest.fixture
def rng(request) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))  # stable seeds


def valid_reference(x, w) -> np.ndarray:
    """scipy.ndimage.correlate in float64, cropped to the valid part (the engine contract)."""
    full = ndimage.correlate(np.asarray(x, np.float64), np.asarray(w, np.float64), mode="constant")
    return full[tuple(slice(s // 2, s // 2 + b - s + 1) for b, s in zip(x.shape, w.shape))]


def rank_one(rng, shape, dtype):
    """Random rank-1 weights and their 1-D factors (for the separable method)."""
    factors = [rng.standard_normal(size).astype(dtype) for size in shape]
    w = factors[0].astype(np.float64)
    for f in factors[1:]:
        w = np.multiply.outer(w, f.astype(np.float64))
    return w.astype(dtype), factors


def assert_close_to(got, expected, x, w, dtype, cp):
    assert isinstance(got, cp.ndarray), f"expected a CuPy array, got {type(got).__name__}"
    assert got.dtype == dtype and got.shape == expected.shape, (got.dtype, got.shape)
    scale = float(np.abs(np.asarray(w, np.float64)).sum() * np.abs(x).max())
    np.testing.assert_allclose(got.get(), expected, rtol=0, atol=TOL[dtype] * scale)


# ---- CuPy engine, one block -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", ["odd", "even"])
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("method", ["direct", "fft", "separable"])
def test_cupy_block_matches_scipy(cp, cupy_engine, rng, method, ndim, kind, dtype):
    x = rng.standard_normal(SHAPES[ndim]).astype(dtype)
    w, factors = rank_one(rng, KERNELS[ndim, kind], dtype)
    if method != "separable":
        w = rng.standard_normal(w.shape).astype(dtype)  # a full-rank kernel
    # The graph hands over a strided window of a CuPy chunk and NumPy weights.
    padded = cp.asarray(np.pad(x, 2))
    block = padded[(slice(2, -2),) * ndim]
    if method == "direct":
        got = cupy_engine.correlate_direct(block, w)
    elif method == "fft":
        got = cupy_engine.correlate_fft(block, w)
    else:
        got = cupy_engine.correlate_separable(block, factors)
    assert_close_to(got, valid_reference(x, w), x, w, dtype, cp)
    assert got.device.id == block.device.id


def test_cupy_fft_partial_axes_and_cache(cp, cupy_engine, rng):
    """Weights filtering one axis only; a second, different kernel must not reuse the spectrum."""
    x = rng.standard_normal((40, 33))
    for shape in ((1, 7), (1, 7), (6, 1)):
        w = rng.standard_normal(shape)
        got = cupy_engine.correlate_fft(cp.asarray(x), w)
        assert_close_to(got, valid_reference(x, w), x, w, np.float64, cp)
    device = cp.cuda.Device().id
    assert all(key[0] == device for key in cupy_engine._SPECTRA)


def test_cupy_numpy_block_round_trip(cupy_engine, rng):
    """A NumPy block is computed on the device and returned as NumPy."""
    x = rng.standard_normal((30, 20)).astype(np.float32)
    w = rng.standard_normal((3, 3)).astype(np.float32)
    got = cupy_engine.correlate_direct(x, w)
    assert type(got) is np.ndarray and got.dtype == np.float32
    np.testing.assert_allclose(
        got, valid_reference(x, w), rtol=0, atol=1e-5 * np.abs(w).sum() * np.abs(x).max()
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_cupy_matmul_multiply(cp, cupy_engine, rng, dtype):
    a = (rng.standard_normal((3, 40, 30)) * 10).astype(dtype)
    b = (rng.standard_normal((30, 20)) * 10).astype(dtype)
    got = cupy_engine.matmul(cp.asarray(a), cp.asarray(b))
    assert isinstance(got, cp.ndarray) and got.dtype == dtype
    np.testing.assert_allclose(
        got.get(), np.matmul(a, b), rtol=1e-5 if dtype == np.float32 else 1e-12
    )
    row = a[0, :1]  # a NumPy operand of shape (1, 30): broadcasts against (3, 40, 30)
    got = cupy_engine.multiply(cp.asarray(a), row)
    assert isinstance(got, cp.ndarray)
    np.testing.assert_array_equal(got.get(), a * row)


def test_cupy_device_info(cp, cupy_engine):
    info = cupy_engine.device_info()
    name = cp.cuda.runtime.getDeviceProperties(0)["name"]
    name = name.decode() if isinstance(name, bytes) else name
    assert name in info, info


# ---- end to end through distconv with CuPy chunks -------------------------------------------


@pytest.mark.parametrize("method", ["direct", "fft", "separable"])
@pytest.mark.parametrize("mode", ["reflect", "constant", "nearest", "mirror", "wrap"])
def test_cupy_end_to_end(cp, rng, method, mode):
    x = rng.standard_normal((70, 53))
    w, _ = rank_one(rng, (5, 4), np.float64)
    if method != "separable":
        w = rng.standard_normal((5, 4))
    chunks = da.from_array(x, chunks=(23, 19)).map_blocks(cp.asarray)
    y = distconv.correlate(chunks, w, mode=mode, cval=0.5, engine="cupy", method=method)
    assert isinstance(y._meta, cp.ndarray)
    got = y.compute(scheduler="threads")
    assert isinstance(got, cp.ndarray)
    expected = ndimage.correlate(x, w, mode=mode, cval=0.5)
    np.testing.assert_allclose(
        got.get(), expected, rtol=0, atol=1e-10 * np.abs(w).sum() * np.abs(x).max()
    )


@pytest.mark.parametrize("engine", ["auto", "cupy"])
def test_convolve_3d_float32_end_to_end(cp, rng, engine):
    x = rng.standard_normal((21, 18, 17)).astype(np.float32)
    w = rng.standard_normal((3, 4, 2))
    chunks = da.from_array(x, chunks=(8, 7, 9)).map_blocks(cp.asarray)
    got = distconv.convolve(chunks, w, mode="reflect", engine=engine).compute()
    assert isinstance(got, cp.ndarray) and got.dtype == np.float32
    expected = ndimage.convolve(x.astype(np.float64), w, mode="reflect")
    np.testing.assert_allclose(
        got.get(), expected, rtol=0, atol=1e-5 * np.abs(w).sum() * np.abs(x).max()
    )


# ---- numba-cuda kernels on the device -------------------------------------------------------


@needs_numba_cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    "shape,wshape",
    [
        ((200,), (7,)),
        ((200,), (4,)),
        ((61, 47), (5, 3)),
        ((61, 47), (4, 6)),
        ((300, 257), (9, 9)),
        ((19, 16, 13), (3, 5, 3)),
        ((19, 16, 13), (2, 4, 4)),
    ],
)
def test_numba_cuda_correlate_direct(cp, nc, rng, shape, wshape, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(wshape).astype(dtype)
    padded = cp.asarray(np.pad(x, 1))
    block = padded[(slice(1, -1),) * x.ndim]  # a strided view, as the graph passes
    got = nc.correlate_direct(block, w)
    assert_close_to(got, valid_reference(x, w), x, w, dtype, cp)
    for shared in (False, True):
        assert_close_to(
            nc.correlate_direct(block, w, shared=shared, threads=(4, 8)),
            valid_reference(x, w),
            x,
            w,
            dtype,
            cp,
        )


@needs_numba_cuda
def test_numba_cuda_large_kernel_uses_global_memory(cp, nc, rng):
    """A 64x64 float64 kernel's tile exceeds 48 KiB of shared memory: the fallback kernel runs."""
    x = rng.standard_normal((120, 100))
    w = rng.standard_normal((64, 64))
    got = nc.correlate_direct(cp.asarray(x), w)
    assert_close_to(got, valid_reference(x, w), x, w, np.float64, cp)
    assert any(key[0] == "correlate_global" for key in nc._KERNELS)


@needs_numba_cuda
def test_numba_cuda_on_a_cupy_stream(cp, nc, rng):
    """Kernels queue on CuPy's current (non-default) stream, after the work that made the input."""
    x = rng.standard_normal((512, 300))
    w = rng.standard_normal((5, 5))
    with cp.cuda.Stream(non_blocking=True) as stream:
        block = cp.asarray(x) * 2.0
        got = nc.correlate_direct(block, w)
        product = nc.multiply(got, got)
        stream.synchronize()
    expected = valid_reference(2.0 * x, w)
    assert_close_to(got, expected, 2.0 * x, w, np.float64, cp)
    np.testing.assert_allclose(product.get(), expected**2, rtol=1e-9, atol=1e-9)


@needs_numba_cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_numba_cuda_matmul_multiply(cp, nc, rng, dtype):
    cases = [((200, 150), (150, 170)), ((3, 1, 40, 30), (2, 30, 20)), ((33, 17), (2, 17, 9))]
    for a_shape, b_shape in cases:
        a = rng.standard_normal(a_shape).astype(dtype)
        b = rng.standard_normal(b_shape).astype(dtype)
        got = nc.matmul(cp.asarray(a), cp.asarray(b))
        assert isinstance(got, cp.ndarray) and got.dtype == dtype
        expected = np.matmul(a.astype(np.float64), b.astype(np.float64))
        scale = np.abs(a).max() * np.abs(b).max() * a.shape[-1]
        np.testing.assert_allclose(got.get(), expected, rtol=0, atol=TOL[dtype] * scale)
    a = rng.standard_normal((300, 257)).astype(dtype)
    b = rng.standard_normal((300, 257)).astype(dtype)
    got = nc.multiply(cp.asarray(a), cp.asarray(b).T.copy().T)  # Fortran-ordered operand
    assert isinstance(got, cp.ndarray)
    np.testing.assert_array_equal(got.get(), a * b)
    np.testing.assert_array_equal(nc.multiply(cp.asarray(a), cp.asarray(b[0])).get(), a * b[0])


@needs_numba_cuda
def test_numba_cuda_numpy_round_trip_and_info(cp, nc, rng):
    x = rng.standard_normal((40, 30))
    w = rng.standard_normal((3, 4))
    got = nc.correlate_direct(x, w)
    assert type(got) is np.ndarray
    np.testing.assert_allclose(
        got, valid_reference(x, w), rtol=0, atol=1e-10 * np.abs(w).sum() * np.abs(x).max()
    )
    name = cp.cuda.runtime.getDeviceProperties(0)["name"]
    name = name.decode() if isinstance(name, bytes) else name
    assert name in nc.device_info()


@needs_numba_cuda
def test_numba_cuda_second_device(cp, nc, rng):
    """Kernels run on the block's device (skips with one GPU)."""
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two CUDA devices")
    x = rng.standard_normal((50, 40))
    w = rng.standard_normal((3, 3))
    with cp.cuda.Device(1):
        block = cp.asarray(x)
    got = nc.correlate_direct(block, w)
    assert got.device.id == 1
    np.testing.assert_allclose(got.get(), valid_reference(x, w), rtol=0, atol=1e-9)


@needs_numba_cuda
@pytest.mark.parametrize("ndim", [2, 3])
def test_numba_cuda_end_to_end(cp, nc, rng, ndim):
    x = rng.standard_normal(SHAPES[ndim])
    w = rng.standard_normal(KERNELS[ndim, "even"])
    chunks = da.from_array(x, chunks=tuple(s // 2 for s in x.shape)).map_blocks(cp.asarray)
    y = distconv.correlate(chunks, w, mode="mirror", engine="numba-cuda", method="direct")
    got = y.compute(scheduler="threads")
    assert isinstance(got, cp.ndarray)
    np.testing.assert_allclose(
        got.get(),
        ndimage.correlate(x, w, mode="mirror"),
        rtol=0,
        atol=1e-10 * np.abs(w).sum() * np.abs(x).max(),
    )
