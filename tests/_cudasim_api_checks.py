"""The public API on ``engine="numba-cuda"`` under numba's CUDA simulator, without CuPy.

Run in a subprocess by tests/test_numba_cuda_sim.py: ``python tests/_cudasim_api_checks.py
[NAME ...]`` sets ``NUMBA_ENABLE_CUDASIM=1``, makes ``import cupy`` fail (as on a machine
without it, even where it is installed), and runs ``dc.convolve``/``dc.correlate``,
``dc.matmul`` and ``dc.multiply`` with host (NumPy and Dask) arrays on tiny random inputs:
the conformance cases of tests/test_conformance.py (every mode, origins, convolve and
correlate, float32 and float64, ranks 1 to 3) and NumPy's matmul/multiply cases, against
scipy.ndimage in float64 and NumPy. One ``CUDASIM-RESULT {json}`` line per check.

This module must stay importable without numba: the test module imports it for the names.
"""

from __future__ import annotations

import os
import sys

from _cudasim_checks import _emit, run_checks  # tests/ is on sys.path

API_CHECKS = (
    "convolve_every_mode",
    "correlate_origins_and_float32",
    "ranks_1_and_3",
    "zarr_to_zarr",
    "matmul",
    "multiply",
    "apply_a_numba_cuda_function",
    "no_cupy_and_device_copies_only",
)


def _tolerance(np, x, w, dtype) -> float:
    scale = float(np.abs(np.asarray(w, np.float64)).sum() * max(np.abs(x).max(), 1.0))
    return scale * (1e-10 if np.dtype(dtype) == np.float64 else 1e-5)


def _filter(dc, da, np, ndimage, x, w, chunks, convolution, **kwargs):
    """distconv (numba-cuda, Dask input) against scipy.ndimage in float64."""
    ours = (dc.convolve if convolution else dc.correlate)(
        da.from_array(x, chunks=chunks), w, engine="numba-cuda", **kwargs
    )
    got = ours.compute(scheduler="threads")
    scipy_function = ndimage.convolve if convolution else ndimage.correlate
    expected = scipy_function(x.astype(np.float64), np.asarray(w, np.float64), **kwargs)
    assert type(got) is np.ndarray, type(got)
    assert got.shape == expected.shape
    np.testing.assert_allclose(
        got, expected, rtol=0, atol=_tolerance(np, x, w, x.dtype), err_msg=str(kwargs)
    )
    return ours


def convolve_every_mode(dc, da, np, ndimage, rng):
    """Every scipy.ndimage mode, convolve and correlate, chunks that do not divide the shape."""
    x = rng.random((9, 7))
    w = rng.standard_normal((3, 2))
    from conftest import MODES  # tests/ is on sys.path: this script's folder, or pytest's

    for mode in MODES:
        for convolution in (True, False):
            _filter(dc, da, np, ndimage, x, w, (5, 4), convolution, mode=mode, cval=0.7)


def correlate_origins_and_float32(dc, da, np, ndimage, rng):
    """Per-axis and scalar origins; float32 computes in float32 (the kernels' own dtype)."""
    x = rng.random((8, 9)).astype(np.float32)
    w = rng.standard_normal((4, 3))
    for origin in ((-2, 0), (1, -1), 0, 1):
        y = _filter(dc, da, np, ndimage, x, w, (5, 4), False, mode="reflect", origin=origin)
        assert y.dtype == np.float32, y.dtype
    x64 = rng.random((7, 6))
    _filter(dc, da, np, ndimage, x64, w, (3, 3), True, mode="mirror", origin=(1, 0))


def ranks_1_and_3(dc, da, np, ndimage, rng):
    """The 1-D and 3-D paths of the one tiled kernel (the 2-D one is above)."""
    _filter(dc, da, np, ndimage, rng.random(11), rng.standard_normal(4), 5, True, mode="wrap")
    x = rng.random((5, 6, 4))
    _filter(dc, da, np, ndimage, x, rng.standard_normal((3, 2, 2)), (3, 4, 2), False)


def zarr_to_zarr(dc, da, np, ndimage, rng):
    """A Zarr store in, the engine on every chunk, a Zarr store out (dc.save)."""
    import tempfile

    import zarr

    data = rng.random((10, 8), dtype=np.float32)
    w = rng.standard_normal((3, 3))
    with tempfile.TemporaryDirectory() as folder:
        source = zarr.create_array(f"{folder}/in.zarr", shape=data.shape, chunks=(4, 4), dtype="f4")
        source[:] = data
        y = dc.convolve(dc.open(f"{folder}/in.zarr"), w, engine="numba-cuda")
        dc.save(y, f"{folder}/out.zarr", progress=False)
        out = zarr.open_array(f"{folder}/out.zarr", mode="r")
        expected = ndimage.convolve(data.astype(np.float64), w)
        np.testing.assert_allclose(out[:], expected, rtol=0, atol=_tolerance(np, data, w, "f4"))
        step = out.attrs["distconv"]["steps"][-1]
        assert step["engine"] == "numba-cuda" and step["method"] == "direct", step


def matmul(dc, da, np, ndimage, rng):
    """2-D, batched with broadcasting, 1-D operands, and split contraction (summed partials)."""
    cases = [
        ((9, 7), (7, 5), ((4, 3), (3, 2))),
        ((2, 5, 6), (6, 4), ((1, 3, 3), (3, 2))),
        ((7,), (7, 3), ((4,), (4, 3))),
    ]
    for a_shape, b_shape, (a_chunks, b_chunks) in cases:
        for dtype in (np.float64, np.float32):
            a = rng.standard_normal(a_shape).astype(dtype)
            b = rng.standard_normal(b_shape).astype(dtype)
            got = dc.matmul(
                da.from_array(a, chunks=a_chunks),
                da.from_array(b, chunks=b_chunks),
                engine="numba-cuda",
            ).compute(scheduler="threads")
            expected = np.matmul(a.astype(np.float64), b.astype(np.float64))
            assert got.dtype == np.dtype(dtype) and got.shape == expected.shape
            atol = 1e-12 if dtype == np.float64 else 1e-5
            np.testing.assert_allclose(got, expected, rtol=0, atol=atol * a_shape[-1] * 4)
    # NumPy arrays straight in, as scipy users pass them.
    a, b = rng.standard_normal((6, 4)), rng.standard_normal((4, 6))
    got = dc.matmul(a, b, engine="numba-cuda").compute(scheduler="threads")
    np.testing.assert_allclose(got, a @ b, rtol=0, atol=1e-12)


def multiply(dc, da, np, ndimage, rng):
    """Equal shapes (the CUDA kernel), broadcasting and a scalar (the array library)."""
    a = rng.standard_normal((7, 6))
    b = rng.standard_normal((7, 6))
    got = dc.multiply(
        da.from_array(a, chunks=(3, 4)), da.from_array(b, chunks=(4, 3)), engine="numba-cuda"
    ).compute(scheduler="threads")
    np.testing.assert_array_equal(got, a * b)
    row = rng.standard_normal(6).astype(np.float32)
    a32 = a.astype(np.float32)
    got = dc.multiply(a32, row, engine="numba-cuda").compute(scheduler="threads")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, a32 * row)
    got = dc.multiply(a32, 0.5, engine="numba-cuda").compute(scheduler="threads")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, a32 * np.float32(0.5))


def _mean_of_three_rows(tile):
    """A tile function for dc.apply on numba-cuda: each pixel the mean of its row and the rows
    above and below (the nearest row at the tile's edges), on a Numba device array."""
    from numba import cuda

    out = cuda.device_array_like(tile)
    threads = (8, 8)
    blocks = tuple(-(-n // t) for n, t in zip(tile.shape, threads))
    _mean_kernel()[blocks, threads](tile, out)
    return out


def _mean_kernel():
    # The simulator swaps the *module global* ``cuda`` of a kernel's module while it runs: the
    # kernel must find ``cuda`` among this module's globals, not in a closure.
    global _KERNEL, cuda
    if "_KERNEL" not in globals():
        from numba import cuda

        @cuda.jit
        def kernel(source, target):
            i, j = cuda.grid(2)
            if i < source.shape[0] and j < source.shape[1]:
                total = 0.0
                for di in range(-1, 2):
                    total += source[min(max(i + di, 0), source.shape[0] - 1), j]
                target[i, j] = total / 3.0

        _KERNEL = kernel
    return _KERNEL


def apply_a_numba_cuda_function(dc, da, np, ndimage, rng):
    """dc.apply of a Numba CUDA function: the halo is measured by probing (1 row), and the
    tiled result equals the function on the whole image (scipy's nearest-mode mean filter)."""
    x = rng.standard_normal((20, 18)).astype(np.float32)
    plan = dc.plan_apply(_mean_of_three_rows, x, engine="numba-cuda")
    assert plan.facts.receptive_field == (1, 0), plan.facts
    got = dc.apply(_mean_of_three_rows, da.from_array(x, chunks=8), engine="numba-cuda", tile=8)
    got = got.compute(scheduler="threads")
    expected = ndimage.uniform_filter1d(x.astype(np.float64), 3, axis=0, mode="nearest")
    np.testing.assert_allclose(got[..., 0], expected, rtol=1e-6, atol=1e-6)


def no_cupy_and_device_copies_only(dc, da, np, ndimage, rng):
    """CuPy stayed out: every result above came through numba.cuda device arrays."""
    from distconv import kernels
    from distconv.kernels import numba_cuda as nc

    assert sys.modules.get("cupy") is None, "cupy was imported"
    assert kernels.is_installed("numba-cuda") and nc.SIMULATOR and nc.usable()
    assert kernels.resolve_engine("numba-cuda", "correlate_direct", 2, np.float32) == "numba-cuda"


def main(names: list[str]) -> int:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # before numba.cuda is imported anywhere
    sys.modules["cupy"] = None  # `import cupy` fails and find_spec("cupy") is None: no CuPy
    try:
        from numba import cuda  # noqa: F401
    except Exception as error:
        _emit(unavailable=f"numba CUDA simulator unavailable: {type(error).__name__}: {error}")
        return 0
    import dask.array as da
    import numpy as np
    from scipy import ndimage

    import distconv as dc

    names = names or list(API_CHECKS)
    unknown = [n for n in names if n not in API_CHECKS]
    if unknown:
        print(f"unknown checks: {unknown}; known: {API_CHECKS}", file=sys.stderr)
        return 2
    return run_checks(
        names, API_CHECKS, 2000, lambda name, rng: globals()[name](dc, da, np, ndimage, rng), 8
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
