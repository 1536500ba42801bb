"""map_chunks: halos and boundaries vs scipy.ndimage, trimming, inferred shapes and dtypes,
errors that name the chunk (threads and a real LocalCluster), TensorFlow graphs traced once per
signature, Numba CUDA under the simulator, and provenance in the saved Zarr.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import traceback

import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi
import zarr

import distconv as dc
from distconv.errors import DistconvError, EngineError


def box3(block):
    """Mean over 3x3 neighbours, valid part only (the halo is consumed)."""
    return ndi.uniform_filter(block, 3, mode="constant")


@pytest.fixture
def image(rng):
    # Chunks of 16 x 10 with a thin last chunk (2 x 7) so halos cross several chunks.
    a = rng.random((50, 37))
    return a, da.from_array(a, chunks=(16, 10))


@pytest.mark.parametrize(
    "boundary, mode, cval",
    [
        ("reflect", "reflect", 0.0),
        ("mirror", "mirror", 0.0),
        ("nearest", "nearest", 0.0),
        ("wrap", "wrap", 0.0),
        ("periodic", "wrap", 0.0),
        (0.5, "constant", 0.5),
        ("grid-mirror", "reflect", 0.0),
    ],
)
def test_halo_and_boundary_match_scipy(image, boundary, mode, cval):
    a, x = image
    y = dc.map_chunks(box3, x, depth=2, boundary=boundary)
    assert y.chunks == x.chunks and y.dtype == np.float64
    expected = ndi.uniform_filter(a, 3, mode=mode, cval=cval)
    np.testing.assert_allclose(y.compute(), expected, rtol=0, atol=1e-12)


def test_constant_boundary_uses_cval(image):
    a, x = image
    y = dc.map_chunks(box3, x, depth={0: 1, 1: 1}, boundary="constant", cval=-2.0)
    np.testing.assert_allclose(
        y.compute(), ndi.uniform_filter(a, 3, mode="constant", cval=-2.0), atol=1e-12
    )


def test_boundary_none_gives_edge_blocks_no_outer_halo(image):
    _, x = image

    def mark(block):  # the shape of every block fn sees, broadcast over it
        return np.full(block.shape, block.shape[0] * 100 + block.shape[1], dtype=np.float64)

    ours = dc.map_chunks(mark, x, depth=1, boundary="none", dtype="f8", trim=False)
    # Dask's own halo with boundary="none" is the reference for which sides get a halo.
    theirs = da.overlap.overlap(x, depth=1, boundary="none").map_blocks(mark, dtype="f8")
    assert ours.chunks == theirs.chunks == ((17, 18, 18, 3), (11, 12, 12, 8))
    np.testing.assert_array_equal(ours.compute(), theirs.compute())
    # Trimmed, the outer edges keep what the function computed there, as in dask.
    trimmed = dc.map_chunks(box3, x, depth=1, boundary="none")
    expected = da.map_overlap(box3, x, depth=1, boundary="none", dtype="f8")
    assert trimmed.chunks == x.chunks
    np.testing.assert_allclose(trimmed.compute(), expected.compute(), atol=1e-12)


def test_trim_false_valid_output_and_haloed_output(image):
    a, x = image
    valid = dc.map_chunks(lambda b: b[1:-1, 1:-1] * 2, x, depth=1, trim=False)
    np.testing.assert_array_equal(valid.compute(), 2 * a)
    haloed = dc.map_chunks(lambda b: b + 1, x, depth=1, trim=False)
    assert haloed.chunks == tuple(tuple(c + 2 for c in axis) for axis in x.chunks)
    assert haloed.compute().shape == haloed.shape


def test_same_function_on_two_arrays_gives_two_results(rng):
    a, b = rng.random((20, 20)), rng.random((20, 20))
    x, y = da.from_array(a, chunks=10), da.from_array(b, chunks=10)
    fx, fy = dc.map_chunks(np.sqrt, x), dc.map_chunks(np.sqrt, y)
    assert fx.name != fy.name
    out_x, out_y = da.compute(fx, fy)
    np.testing.assert_array_equal(out_x, np.sqrt(a))
    np.testing.assert_array_equal(out_y, np.sqrt(b))


def test_multiple_arrays_are_aligned(rng):
    a, b = rng.random((40, 30)), rng.random((40, 30))
    x = da.from_array(a, chunks=(16, 16))
    y = da.from_array(b, chunks=(10, 30))  # rechunked like x
    out = dc.map_chunks(lambda p, q: box3(p) * q, x, y, depth=1)
    np.testing.assert_allclose(
        out.compute(), ndi.uniform_filter(a, 3, mode="reflect") * b, atol=1e-12
    )
    with pytest.raises(DistconvError, match="same shape"):
        dc.map_chunks(np.add, x, da.ones((40, 31)))


def test_shapes_and_dtypes_inferred_by_the_probe(rng):
    rgb = rng.integers(0, 256, (30, 20, 3)).astype(np.uint8)
    x = da.from_array(rgb, chunks=(8, 8, 3))
    gray = dc.map_chunks(lambda b: (b @ np.array([0.3, 0.6, 0.1]))[..., None], x)
    assert gray.shape == (30, 20, 1) and gray.dtype == np.float64
    np.testing.assert_allclose(gray.compute()[..., 0], rgb @ np.array([0.3, 0.6, 0.1]))

    summed = dc.map_chunks(lambda b: b.sum(axis=2, dtype=np.int32), x, drop_axis=2)
    assert summed.shape == (30, 20) and summed.dtype == np.int32
    np.testing.assert_array_equal(summed.compute(), rgb.sum(axis=2))
    rows = dc.map_chunks(lambda b: b.max(axis=1), x[..., 1], drop_axis=1)  # 3 chunks: read whole
    assert rows.chunks == ((8, 8, 8, 6),)
    np.testing.assert_array_equal(rows.compute(), rgb[..., 1].max(axis=1))

    stacked = dc.map_chunks(lambda b: np.stack([b, b], axis=0), x[..., 0], new_axis=0)
    assert stacked.shape == (2, 30, 20)
    np.testing.assert_array_equal(stacked.compute(), np.stack([rgb[..., 0]] * 2))

    as_int = dc.map_chunks(lambda b: b * 2.6, x[..., 0], dtype="int16")
    assert as_int.dtype == np.int16
    np.testing.assert_array_equal(as_int.compute(), (rgb[..., 0] * 2.6).astype(np.int16))


def test_unsupported_arguments_are_one_line_errors(image):
    _, x = image
    with pytest.raises(EngineError, match="unknown map_chunks engine"):
        dc.map_chunks(box3, x, engine="fortran")
    with pytest.raises(DistconvError, match="unknown boundary"):
        dc.map_chunks(box3, x, depth=1, boundary="bounce")
    with pytest.raises(DistconvError, match="depth has 3 values"):
        dc.map_chunks(box3, x, depth=(1, 1, 1))
    with pytest.raises(DistconvError, match="returned a 1-D array"):
        dc.map_chunks(lambda b: b.sum(axis=0), x)
    with pytest.raises(DistconvError, match="cannot infer the output chunks"):
        dc.map_chunks(lambda b: b[:3], x)


def test_wrong_block_shape_is_reported(image):
    _, x = image
    y = dc.map_chunks(lambda b: b[:5], x, dtype="f8", chunks=x.chunks)
    pattern = r"returned shape \(5, \d+\) on chunk \(\d, \d\); expected \(1\d, \d+\)"
    with pytest.raises(dc.ChunkError, match=pattern):
        y.compute()


def failing_function(block):
    if block.shape[0] < 16:
        raise KeyError("the thin chunk")
    return block


def _check_chunk_error(error: dc.ChunkError) -> None:
    assert error.block_index == (3, 0)
    assert error.function.endswith("failing_function")
    assert isinstance(error.__cause__, KeyError)
    text = "".join(traceback.format_exception(error))
    assert 'raise KeyError("the thin chunk")' in text  # the function's own traceback
    assert "failed on chunk (3, 0)" in str(error)


def test_error_names_the_chunk_and_chains_the_original(image):
    _, x = image
    y = dc.map_chunks(failing_function, x[:, :10], dtype="f8", chunks=x[:, :10].chunks)
    with pytest.raises(dc.ChunkError) as info:
        y.compute(scheduler="threads")
    _check_chunk_error(info.value)


def test_error_crosses_a_local_cluster(image):
    from distributed import Client, LocalCluster

    _, x = image
    y = dc.map_chunks(failing_function, x[:, :10], depth=1, dtype="f8", chunks=x[:, :10].chunks)
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster),
    ):
        with pytest.raises(dc.ChunkError) as info:
            y.compute()
    _check_chunk_error(info.value)


def test_probe_error_says_what_to_pass(image):
    _, x = image
    with pytest.raises(dc.ChunkError, match="failed on the probe block"):
        dc.map_chunks(lambda b: 1 / 0, x)


def test_save_records_map_chunks_provenance(tmp_path, rng):
    a = rng.random((32, 24)).astype(np.float32)
    zarr.create_array(tmp_path / "in.zarr", shape=a.shape, chunks=(16, 8), dtype=a.dtype)[:] = a
    y = dc.map_chunks(box3, dc.open(tmp_path / "in.zarr"), depth=1, boundary="nearest")
    dc.save(y, tmp_path / "out.zarr")
    out = zarr.open_array(tmp_path / "out.zarr")
    np.testing.assert_allclose(
        out[:], ndi.uniform_filter(a.astype(np.float64), 3, mode="nearest"), rtol=1e-6
    )
    record = out.attrs["distconv"]
    assert record["complete"] is True
    step = record["steps"][-1]
    assert step["operation"] == "map_chunks" and step["function"].endswith("box3")
    assert step["parameters"]["depth"] == [1, 1] and step["parameters"]["boundary"] == "nearest"


def test_numba_engine_calls_a_jitted_function(image):
    numba = pytest.importorskip("numba")

    @numba.njit(nogil=True, cache=False)
    def laplace(block):  # valid 5-point Laplacian: consumes the 1-sample halo
        out = np.empty((block.shape[0] - 2, block.shape[1] - 2))
        for i in range(out.shape[0]):
            for j in range(out.shape[1]):
                out[i, j] = (
                    block[i, j + 1]
                    + block[i + 2, j + 1]
                    + block[i + 1, j]
                    + block[i + 1, j + 2]
                    - 4 * block[i + 1, j + 1]
                )
        return out

    a, x = image
    y = dc.map_chunks(laplace, x, depth=1, boundary="mirror", engine="numba", trim=False)
    np.testing.assert_allclose(y.compute(), ndi.laplace(a, mode="mirror"), atol=1e-12)


# --- TensorFlow ---------------------------------------------------------------------------------

# Not a module-level importorskip: that would also skip the GPU tests below on a machine
# without TensorFlow.
try:
    import tensorflow as tf
except ImportError:
    tf = None
needs_tensorflow = pytest.mark.skipif(tf is None, reason="the tensorflow engine is not installed")
SOBEL = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)


def tf_edges(x):
    """Sobel magnitude of a haloed chunk; VALID convolutions consume the 1-sample halo."""
    kx = tf.constant(SOBEL[:, :, None, None], dtype=x.dtype)
    ky = tf.constant(SOBEL.T[:, :, None, None], dtype=x.dtype)
    gx = tf.nn.conv2d(x[None, ..., None], kx, 1, "VALID")
    gy = tf.nn.conv2d(x[None, ..., None], ky, 1, "VALID")
    return tf.sqrt(gx**2 + gy**2)[0, ..., 0]


@needs_tensorflow
def test_tensorflow_edges_match_scipy_and_trace_once_per_signature(rng):
    from distconv.kernels import tensorflow as ktf

    def new_traces(before):
        return {
            k[2]: n for k, n in ktf.TRACES.items() if k[0] == "map_chunks" and n != before.get(k, 0)
        }

    a = rng.random((70, 45)).astype(np.float32)
    x = da.from_array(a, chunks=(32, 20))  # 3 x 3 chunks of 4 different shapes
    before = dict(ktf.TRACES)
    y = dc.map_chunks(
        tf_edges, x, depth=1, boundary="reflect", engine="tensorflow", dtype="float32", trim=False
    )
    expected = np.hypot(
        ndi.correlate(a.astype(np.float64), SOBEL, mode="reflect"),
        ndi.correlate(a.astype(np.float64), SOBEL.T, mode="reflect"),
    )
    np.testing.assert_allclose(y.compute(scheduler="threads"), expected, rtol=1e-5, atol=1e-5)
    assert new_traces(before) == {((2, "float32"),): 1}  # probe + 9 chunks: one trace

    # The same function on float64 chunks: one more trace, for the new signature only.
    before = dict(ktf.TRACES)
    y64 = dc.map_chunks(tf_edges, x.astype(np.float64), depth=1, engine="tensorflow", trim=False)
    np.testing.assert_allclose(y64.compute(scheduler="threads"), expected, rtol=1e-12)
    y.compute(scheduler="threads")
    assert new_traces(before) == {((2, "float64"),): 1}


@needs_tensorflow
def test_tensorflow_rgb_to_grayscale(rng):
    rgb = rng.integers(0, 256, (40, 30, 3)).astype(np.uint8)
    gray = dc.map_chunks(
        tf.image.rgb_to_grayscale, da.from_array(rgb, chunks=(16, 16, 3)), engine="tensorflow"
    )
    assert gray.shape == (40, 30, 1) and gray.dtype == np.uint8
    expected = rgb.astype(np.float64) @ np.array([0.2989, 0.5870, 0.1140])
    assert np.abs(gray.compute()[..., 0] - expected).max() <= 1.0  # uint8 rounding


@needs_tensorflow
def test_tensorflow_error_names_the_chunk(image):
    _, x = image
    y = dc.map_chunks(
        lambda t: tf.reshape(t, [3, -1]), x, engine="tensorflow", dtype="f8", chunks=x.chunks
    )
    with pytest.raises(dc.ChunkError, match=r"failed on chunk \(\d, \d\)") as info:
        y.compute(scheduler="single-threaded")
    assert isinstance(info.value.__cause__, tf.errors.InvalidArgumentError)


# --- GPU engines ----------------------------------------------------------------------------------

NUMBA_CUDA_SCRIPT = textwrap.dedent("""
    import numpy as np, dask.array as da
    from numba import cuda
    import distconv as dc

    @cuda.jit
    def scale_add(x, out):
        i, j = cuda.grid(2)
        if i < out.shape[0] and j < out.shape[1]:
            out[i, j] = 2 * x[i + 1, j + 1] + x[i, j + 1]  # uses the halo above

    def run(x):
        out = cuda.device_array((x.shape[0] - 2, x.shape[1] - 2), dtype=x.dtype)
        scale_add[(1, 1), (8, 8)](x, out)
        return out

    a = np.random.default_rng(0).random((12, 10)).astype(np.float32)
    y = dc.map_chunks(run, da.from_array(a, chunks=(6, 5)), depth=1, boundary="nearest",
                      engine="numba-cuda", trim=False)
    padded = np.pad(a, 1, mode="edge")
    expected = 2 * a + padded[:-2, 1:-1]
    assert y.dtype == np.float32, y.dtype
    np.testing.assert_allclose(y.compute(scheduler="threads"), expected, rtol=1e-6)
    print("ok")
""")


def _cuda_devices() -> int:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


def _run_numba_cuda_script(simulator: bool) -> None:
    pytest.importorskip("numba")
    env = dict(os.environ)
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    else:
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    proc = subprocess.run(
        [sys.executable, "-c", NUMBA_CUDA_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_numba_cuda_engine_under_the_simulator():
    _run_numba_cuda_script(simulator=True)


@pytest.mark.gpu
@pytest.mark.skipif(_cuda_devices() == 0, reason="no CUDA device (CuPy missing or it sees 0 GPUs)")
def test_numba_cuda_engine_on_a_gpu():
    _run_numba_cuda_script(simulator=False)  # chunks uploaded by CuPy, kernels on the device


@pytest.mark.gpu
@pytest.mark.skipif(_cuda_devices() == 0, reason="no CUDA device (CuPy missing or it sees 0 GPUs)")
def test_cupy_engine_on_a_gpu(image):
    import cupy
    import cupyx.scipy.ndimage as cndi

    a, x = image
    y = dc.map_chunks(
        lambda b: cndi.uniform_filter(b, 3, mode="constant"), x, depth=1, engine="cupy"
    )
    assert isinstance(y._meta, np.ndarray)  # host in, host out
    np.testing.assert_allclose(y.compute(), ndi.uniform_filter(a, 3, mode="reflect"), atol=1e-12)
    on_gpu = dc.map_chunks(lambda b: b * 2, x.map_blocks(cupy.asarray), engine="cupy")
    assert type(on_gpu._meta).__module__.startswith("cupy")
    np.testing.assert_allclose(on_gpu.compute().get(), 2 * a)
