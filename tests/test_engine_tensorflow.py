"""TensorFlow engine: per-chunk functions and whole graphs against SciPy/NumPy in float64.

Also checks what makes the engine usable on a cluster: one trace per (operation, rank, dtype)
whatever the chunk shapes and kernels, thread pools sized to the Dask worker, and no TensorFlow
import from ``import distconv``.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import dask.array as da  # noqa: E402
from conftest import random_weights, tolerance  # noqa: E402
from scipy import ndimage  # noqa: E402

import distconv as dc  # noqa: E402
from distconv import kernels  # noqa: E402
from distconv.kernels import tensorflow as engine  # noqa: E402

DTYPES = [np.float32, np.float64]

# (block shape, kernel shape): 1-D/2-D/3-D, odd and even sizes, unfiltered axes in the middle
# and at the end, and 4-D blocks whose kernels filter four axes (peeled to three per call).
CASES = [
    ((41,), (5,)),
    ((40,), (6,)),
    ((30, 27), (5, 3)),
    ((29, 26), (4, 6)),
    ((13, 11, 12), (3, 4, 5)),
    ((12, 9, 10), (3, 1, 4)),
    ((10, 9, 8), (1, 1, 5)),
    ((9, 8, 7, 6), (2, 3, 3, 2)),
    ((9, 8, 7, 6), (1, 3, 1, 4)),
]


def valid_reference(block: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The contract's valid correlation, from scipy.ndimage in float64."""
    full = ndimage.correlate(block.astype(np.float64), weights.astype(np.float64), mode="constant")
    return full[
        tuple(slice(w // 2, w // 2 + b - w + 1) for b, w in zip(block.shape, weights.shape))
    ]


def factors_of(rng, shape, dtype):
    factors = [rng.standard_normal(s).astype(dtype) if s > 1 else None for s in shape]
    weights = np.ones([1] * len(shape))
    for axis, factor in enumerate(factors):
        if factor is not None:
            weights = weights * factor.reshape([-1 if a == axis else 1 for a in range(len(shape))])
    return factors, weights


def case_id(case) -> str:
    return "x".join(map(str, case[0])) + "-k" + "x".join(map(str, case[1]))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("method", ["direct", "fft", "separable"])
def test_kernel_functions_match_scipy(rng, method, case, dtype):
    shape, kshape = case
    block = rng.standard_normal(shape).astype(dtype)
    if method == "separable":
        factors, weights = factors_of(rng, kshape, dtype)
        out = engine.correlate_separable(block, factors)
    else:
        weights = rng.standard_normal(kshape).astype(dtype)
        out = getattr(engine, f"correlate_{method}")(block, weights)
    expected = valid_reference(block, weights)
    assert out.dtype == np.dtype(dtype)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=0, atol=tolerance(block, weights, dtype))


def test_kernel_functions_edge_cases(rng):
    block = rng.standard_normal((7, 5)).astype(np.float32)
    # A kernel that filters no axis is a scale factor; separable with no factors is a copy.
    np.testing.assert_allclose(
        engine.correlate_direct(block, np.full((1, 1), 2.0, np.float32)), 2 * block
    )
    np.testing.assert_allclose(
        engine.correlate_fft(block, np.full((1, 1), 2.0, np.float32)), 2 * block
    )
    assert np.array_equal(engine.correlate_separable(block, [None, None]), block)
    # Non-contiguous input and a kernel as large as the block (one output sample).
    view = rng.standard_normal((12, 10))[::2, ::2]
    w = rng.standard_normal((6, 5))
    for method in ("direct", "fft"):
        out = getattr(engine, f"correlate_{method}")(view, w)
        np.testing.assert_allclose(out, valid_reference(view, w), rtol=0, atol=1e-12)
        assert out.shape == (1, 1)


def test_direct_bands_large_blocks(rng, monkeypatch):
    """Blocks above DIRECT_TILE outputs run in bands (rows, or whole batch items) and agree."""
    monkeypatch.setattr(engine, "DIRECT_TILE", 50)
    block = rng.standard_normal((23, 19))
    w = rng.standard_normal((5, 4))
    np.testing.assert_allclose(
        engine.correlate_direct(block, w), valid_reference(block, w), rtol=0, atol=1e-12
    )
    batched = rng.standard_normal((6, 9, 8))  # unfiltered leading axis: the batch
    w = rng.standard_normal((1, 3, 3))
    np.testing.assert_allclose(
        engine.correlate_direct(batched, w), valid_reference(batched, w), rtol=0, atol=1e-12
    )


MODES = ["reflect", "constant", "nearest", "mirror", "wrap", "grid-wrap"]


@pytest.mark.parametrize("method", ["direct", "fft", "separable"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("convolution", [False, True], ids=["correlate", "convolve"])
def test_end_to_end_2d(rng, method, mode, convolution):
    x = rng.random((23, 18))
    w = random_weights(rng, (5, 4), separable=method == "separable")
    function, reference = (
        (dc.convolve, ndimage.convolve) if convolution else (dc.correlate, ndimage.correlate)
    )
    for origin in [(0, 0), (-2, 1), (2, -2)]:
        got = function(
            da.from_array(x, chunks=(7, 5)),
            w,
            mode=mode,
            cval=0.3,
            origin=origin,
            engine="tensorflow",
            method=method,
        ).compute(scheduler="sync")
        expected = reference(x, w, mode=mode, cval=0.3, origin=origin)
        assert got.dtype == np.float64
        np.testing.assert_allclose(
            got, expected, rtol=0, atol=tolerance(x, w, np.float64), err_msg=f"origin {origin}"
        )


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("method", ["auto", "direct", "fft", "separable"])
@pytest.mark.parametrize(
    "shape,chunks,kshape,axes",
    [
        ((57,), (10,), (7,), None),
        ((17, 14, 11), (6, 5, 4), (3, 4, 3), None),
        ((16, 13, 5), (5, 4, 5), (5, 2), (0, 1)),
        ((11, 7, 12), (4, 3, 5), (4, 3), (2, 0)),
    ],
    ids=["1d", "3d", "3d-axes01", "3d-axes20"],
)
def test_end_to_end_ranks(rng, method, dtype, shape, chunks, kshape, axes):
    x = rng.random(shape).astype(dtype)
    w = random_weights(rng, kshape, separable=method == "separable")
    got = dc.convolve(
        da.from_array(x, chunks=chunks),
        w,
        mode="mirror",
        axes=axes,
        engine="tensorflow",
        method=method,
    ).compute(scheduler="threads")
    if axes is None:
        full_w = w
    else:  # scipy.ndimage needs the kernel spread over all axes, in the input's axis order
        order = sorted(range(len(axes)), key=lambda i: axes[i])
        full_w = w.transpose(order).reshape(
            [w.shape[axes.index(a)] if a in axes else 1 for a in range(x.ndim)]
        )
    expected = ndimage.convolve(x.astype(np.float64), full_w, mode="mirror")
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance(x, w, dtype))


def test_trace_once_per_op_rank_dtype(rng):
    """Many chunk shapes and a second kernel reuse one graph per (operation, rank, dtype)."""
    x = da.from_array(
        rng.random((61, 53)).astype(np.float32), chunks=((9, 14, 11, 16, 11), (8, 13, 15, 17))
    )
    kernel_a = rng.standard_normal((5, 5))
    kernel_b = rng.standard_normal((3, 6))
    separable = np.outer(rng.standard_normal(5), rng.standard_normal(4))
    ops = {"direct": "correlate_direct", "fft": "correlate_fft", "separable": "correlate_separable"}
    for method, op in ops.items():
        first = kernel_a if method != "separable" else separable
        second = kernel_b if method != "separable" else separable[::-1, :3]
        dc.correlate(x, first, method=method, engine="tensorflow").compute(scheduler="threads")
        key = (op, 2, "float32")
        assert engine.TRACES[key] == 1, engine.TRACES
        dc.correlate(x, second, mode="wrap", method=method, engine="tensorflow").compute(
            scheduler="threads"
        )
        assert engine.TRACES[key] == 1, engine.TRACES
    for key, count in engine.TRACES.items():
        assert count == 1, key


def _against_numpy(ours, numpy_function, a, b):
    """``ours(a, b)`` and NumPy's result, after checking that their dtypes and shapes agree."""
    got, expected = ours(a, b), numpy_function(a, b)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    return got, expected


@pytest.mark.parametrize(
    "a_shape,b_shape",
    [
        ((5, 7), (7, 3)),
        ((4, 5, 7), (7, 2)),
        ((3, 1, 5, 6), (2, 6, 4)),
        ((7,), (7, 3)),
        ((4, 5, 7), (7,)),
        ((6,), (6,)),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.complex64])
def test_matmul_matches_numpy(rng, a_shape, b_shape, dtype):
    a = (rng.standard_normal(a_shape) * 10).astype(dtype)
    b = (rng.standard_normal(b_shape) * 10).astype(dtype)
    got, expected = _against_numpy(engine.matmul, np.matmul, a, b)
    np.testing.assert_allclose(
        got, expected, rtol=1e-5 if dtype in (np.float32, np.complex64) else 1e-12
    )


def test_matmul_dtypes_and_errors(rng):
    a = rng.integers(-128, 127, (8, 9), dtype=np.int8)
    b = rng.integers(-128, 127, (9, 4), dtype=np.int8)
    np.testing.assert_array_equal(engine.matmul(a, b), np.matmul(a, b))  # wraps like NumPy
    u = rng.integers(0, 2**32, (3, 4), dtype=np.uint32)
    v = rng.integers(0, 2**32, (4, 2), dtype=np.uint32)
    np.testing.assert_array_equal(engine.matmul(u, v), np.matmul(u, v))
    mixed = engine.matmul(a.astype(np.float32), b.astype(np.float64))
    assert mixed.dtype == np.float64
    with pytest.raises(ValueError):
        engine.matmul(np.ones((2, 3)), np.ones((4, 2)))
    with pytest.raises(ValueError):
        engine.matmul(np.ones((2, 2, 3)), np.ones((3, 3, 2)))
    with pytest.raises(ValueError):
        engine.matmul(np.float64(2.0), np.ones(2))


@pytest.mark.parametrize(
    "a_shape,b_shape",
    [
        ((6, 5), (6, 5)),
        ((6, 5), (5,)),
        ((4, 1, 3), (2, 1)),
        ((), (3, 2)),
    ],
)
@pytest.mark.parametrize(
    "dtype", [np.float16, np.float32, np.float64, np.int8, np.uint64, np.complex128, np.bool_]
)
def test_multiply_matches_numpy(rng, a_shape, b_shape, dtype):
    a = (rng.standard_normal(a_shape) * 50).astype(dtype)
    b = (rng.standard_normal(b_shape) * 50).astype(dtype)
    got, expected = _against_numpy(engine.multiply, np.multiply, a, b)
    np.testing.assert_array_equal(got, expected)


def test_multiply_in_a_dask_graph(rng):
    a = rng.standard_normal((40, 30)).astype(np.float32)
    b = rng.standard_normal((30,)).astype(np.float32)
    got = da.map_blocks(
        engine.multiply,
        da.from_array(a, chunks=(7, 11)),
        da.from_array(b, chunks=11),
        dtype=np.float32,
    )
    np.testing.assert_array_equal(got.compute(scheduler="threads"), a * b)


def test_supports_and_registry():
    spec = kernels.ENGINES["tensorflow"]  # ranks, dtypes and cost live in the registry
    assert "tensorflow" in kernels.installed_engines()
    for op in ("correlate_direct", "correlate_fft", "correlate_separable"):
        for ndim in (1, 2, 3, 4):
            assert spec.supports(op, ndim, np.float32)
            assert spec.supports(op, ndim, np.float64)
            assert kernels.supports("tensorflow", op, ndim, np.float64)
        assert not spec.supports(op, 2, np.float16)
        assert not spec.supports(op, 2, np.int32)
        assert not spec.supports(op, 0, np.float32)
    assert spec.supports("matmul", 2, np.int8)
    assert not spec.supports("matmul", 2, np.uint64)
    assert not spec.supports("matmul", 0, np.float32)
    assert spec.supports("multiply", 0, np.bool_)
    assert not spec.supports("no_such_op", 2, np.float32)
    assert kernels.get_op("tensorflow", "correlate_fft") is engine.correlate_fft
    assert set(spec.cost) == {"direct", "fft", "separable"}
    for per_pixel, per_unit in spec.cost.values():  # (s per output pixel, s per unit)
        assert per_pixel >= 0 and per_unit > 0
    info = engine.device_info()
    assert "TensorFlow" in info and tf.__version__ in info


def test_import_distconv_does_not_import_tensorflow():
    code = (
        "import sys, distconv, distconv.kernels, distconv.plan; "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_threads_follow_the_dask_worker(rng):
    """In a worker process the pools get the worker's nthreads, and the graph is traced there."""
    from distributed import Client, LocalCluster

    def worker_state():
        from distconv.kernels import tensorflow as worker_engine

        return (
            tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads(),
            dict(worker_engine.TRACES),
        )

    x = rng.random((40, 30)).astype(np.float32)
    w = rng.standard_normal((3, 3))
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        got = dc.correlate(
            da.from_array(x, chunks=(13, 9)), w, method="direct", engine="tensorflow"
        ).compute()
        ((intra, inter, traces),) = client.run(worker_state).values()
    np.testing.assert_allclose(
        got,
        ndimage.correlate(x.astype(np.float64), w, mode="reflect"),
        rtol=0,
        atol=tolerance(x, w, np.float32),
    )
    assert (intra, inter) == (1, 1)
    assert traces == {("correlate_direct", 2, "float32"): 1}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["auto", "fft"])
def test_large_image_31x31(method):
    """8192² float32 in 2048² chunks with a 31×31 kernel (one array like this broke TF's conv)."""
    n, half, tile = 8192, 15, 64
    rng = np.random.default_rng(31)
    x = rng.random((n, n), dtype=np.float32)
    w = rng.standard_normal((31, 31))
    y = dc.convolve(
        da.from_array(x, chunks=2048), w, mode="reflect", method=method, engine="tensorflow"
    ).compute()
    assert y.shape == (n, n) and y.dtype == np.float32
    corners = [(0, 0), (n - tile, n - tile), (0, n - tile)]
    corners += [tuple(rng.integers(0, n - tile, 2)) for _ in range(2)]
    corners.append((2048 - tile // 2, 4096 - tile // 2))  # straddles chunk boundaries
    for r, c in corners:
        # A window with the full halo, clipped at the array's edges where scipy's own reflect
        # reproduces the padding of the whole array.
        r0, c0 = max(r - half, 0), max(c - half, 0)
        r1, c1 = min(r + tile + half, n), min(c + tile + half, n)
        window = x[r0:r1, c0:c1].astype(np.float64)
        expected = ndimage.convolve(window, w, mode="reflect")[
            r - r0 : r - r0 + tile, c - c0 : c - c0 + tile
        ]
        np.testing.assert_allclose(
            y[r : r + tile, c : c + tile],
            expected,
            rtol=0,
            atol=tolerance(x, w, np.float32),
            err_msg=f"tile {(r, c)}",
        )
