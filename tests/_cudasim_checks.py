"""Checks of the numba-cuda engine, run in a subprocess by tests/test_numba_cuda_sim.py.

``python tests/_cudasim_checks.py [NAME ...]`` runs the named checks (all by default) under
numba's CUDA simulator on tiny random arrays and prints one ``CUDASIM-RESULT {json}`` line per
check. The simulator must be switched on before ``numba.cuda`` is first imported, which is why
this runs in its own process (the variable is forced here too, before any numba import).

``python tests/_cudasim_checks.py --ptx`` instead compiles every kernel to PTX for sm_80 and
sm_90 with NVVM (no device needed) and prints one ``CUDASIM-RESULT`` line; it reports
``unavailable`` when no NVVM toolchain is installed.

This module must stay importable without numba: the test module imports it for the check names.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

PREFIX = "CUDASIM-RESULT "
SIM_CHECKS = (
    "correlate_2d_multi_tile",
    "correlate_2d_default_threads",
    "correlate_2d_global_kernel",
    "correlate_grid_stride",
    "correlate_3d",
    "correlate_1d",
    "correlate_strided_input",
    "correlate_shared_limit_fallback",
    "correlate_weights_are_arguments",
    "correlate_rejects_bad_input",
    "matmul_2d",
    "matmul_batched",
    "matmul_fallbacks",
    "multiply",
    "supports_and_device_info",
)


def _reference(x, w):
    """scipy.ndimage.correlate in float64, cropped to the valid part."""
    import numpy as np
    from scipy import ndimage

    full = ndimage.correlate(np.asarray(x, np.float64), np.asarray(w, np.float64), mode="constant")
    return full[tuple(slice(s // 2, s // 2 + b - s + 1) for b, s in zip(x.shape, w.shape))]


def _close(got, expected, x, w, dtype, what=""):
    """float64: 1e-12, float32: 1e-5 of the largest possible |output| (sum|w| * max|x|)."""
    import numpy as np

    assert type(got) is np.ndarray, f"{what}: returned {type(got).__name__}, not numpy.ndarray"
    assert got.dtype == dtype, f"{what}: dtype {got.dtype}, expected {np.dtype(dtype)}"
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    scale = float(np.abs(np.asarray(w, np.float64)).sum() * np.abs(x).max())
    atol = scale * (1e-12 if np.dtype(dtype) == np.float64 else 1e-5)
    np.testing.assert_allclose(got, expected, rtol=0, atol=atol, err_msg=what)


def _corr_case(nc, rng, shape, wshape, dtype, **options):
    import numpy as np

    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(wshape).astype(dtype)
    got = nc.correlate_direct(x, w, **options)
    _close(got, _reference(x, w), x, w, dtype, f"{shape} * {wshape} {np.dtype(dtype)} {options}")


# ---- correlation ----------------------------------------------------------------------------


def correlate_2d_multi_tile(nc, rng, np):
    """12x10 blocks with 4x4 thread blocks: several tiles, partial tiles at the far edges."""
    for dtype in (np.float64, np.float32):
        for wshape in ((3, 3), (4, 4), (2, 5), (1, 1)):
            _corr_case(nc, rng, (12, 10), wshape, dtype, threads=(4, 4))


def correlate_2d_default_threads(nc, rng, np):
    """The production launch shape (8x32 threads) on a block smaller than one tile."""
    for wshape in ((3, 3), (4, 4)):
        _corr_case(nc, rng, (12, 10), wshape, np.float64)


def correlate_2d_global_kernel(nc, rng, np):
    """The no-shared-memory kernel (used when the haloed tile exceeds shared memory)."""
    for dtype in (np.float64, np.float32):
        _corr_case(nc, rng, (12, 10), (3, 4), dtype, threads=(4, 4), shared=False)


def correlate_grid_stride(nc, rng, np):
    """max_grid=1 forces the grid-stride loops over planes and row tiles (CUDA's 65535 cap)."""
    _corr_case(nc, rng, (12, 10), (3, 3), np.float64, threads=(2, 4), max_grid=1)
    _corr_case(nc, rng, (5, 4, 3), (2, 2, 2), np.float64, threads=(2, 2), max_grid=1)
    _corr_case(nc, rng, (5, 4, 3), (2, 2, 2), np.float64, threads=(2, 2), max_grid=1, shared=False)


def correlate_3d(nc, rng, np):
    """5x4x3 blocks, odd and even kernels, both kernels, both dtypes."""
    for dtype in (np.float64, np.float32):
        for wshape in ((3, 2, 2), (2, 3, 3), (1, 3, 1)):
            _corr_case(nc, rng, (5, 4, 3), wshape, dtype, threads=(2, 2))
        _corr_case(nc, rng, (5, 4, 3), (3, 2, 2), dtype, threads=(2, 2), shared=False)


def correlate_1d(nc, rng, np):
    """1-D blocks run as (1, 1, n)."""
    for wshape in ((5,), (4,)):
        _corr_case(nc, rng, (20,), wshape, np.float64, threads=(1, 8))
    _corr_case(nc, rng, (20,), (3,), np.float32, threads=(1, 8))


def correlate_strided_input(nc, rng, np):
    """Non-contiguous views (what correlate_block's window slicing produces) are accepted."""
    big = rng.standard_normal((24, 21))
    w = rng.standard_normal((3, 4))
    for x in (big[::2, 1::2], big[1:13, 2:12].T, np.asfortranarray(big[:12, :10])):
        got = nc.correlate_direct(x, w, threads=(4, 4))
        _close(got, _reference(x, w), x, w, np.float64, f"view {x.shape} {x.strides}")


def correlate_shared_limit_fallback(nc, rng, np):
    """A tile larger than SHARED_LIMIT switches to the global-memory kernel automatically."""
    saved = nc.SHARED_LIMIT
    nc.SHARED_LIMIT = 64  # bytes: (4+2)*(4+3)*8 = 336 does not fit
    try:
        for key in [key for key in nc._KERNELS if key[0] == "correlate_global"]:
            del nc._KERNELS[key]  # so that its reappearance shows this call used it
        _corr_case(nc, rng, (12, 10), (3, 4), np.float64, threads=(4, 4))
        assert any(key[0] == "correlate_global" for key in nc._KERNELS), (
            "the global-memory kernel was not used"
        )
    finally:
        nc.SHARED_LIMIT = saved


def correlate_weights_are_arguments(nc, rng, np):
    """Different weights (values and shapes) reuse one compiled kernel per (device, dtype)."""
    for wshape in ((3, 3), (3, 3), (2, 4)):
        _corr_case(nc, rng, (12, 10), wshape, np.float64, threads=(4, 4))
    shared = [key for key in nc._KERNELS if key[0] == "correlate_shared" and key[2] == "<f8"]
    assert len(shared) == 1, f"expected one compiled float64 kernel, found {shared}"


def correlate_rejects_bad_input(nc, rng, np):
    x = rng.standard_normal((6, 5))
    cases = [
        (lambda: nc.correlate_direct(x, np.ones(3)), ValueError),  # rank mismatch
        (lambda: nc.correlate_direct(x, np.ones((7, 2))), ValueError),  # weights too large
        (lambda: nc.correlate_direct(x.astype(np.int32), np.ones((3, 3), np.int32)), TypeError),
        (lambda: nc.correlate_direct(np.ones((2, 2, 2, 2)), np.ones((1, 1, 1, 1))), ValueError),
    ]
    for call, error in cases:
        try:
            call()
        except error:
            continue
        raise AssertionError(f"expected {error.__name__}")


# ---- matmul and multiply --------------------------------------------------------------------


def _matmul_case(nc, a, b, **options):
    import numpy as np

    got = nc.matmul(a, b, **options)
    expected = np.matmul(a.astype(np.float64), b.astype(np.float64))
    dtype = np.result_type(a.dtype, b.dtype)
    assert type(got) is np.ndarray and got.dtype == dtype, (type(got), got.dtype)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    scale = float(np.abs(a).max() * np.abs(b).max() * a.shape[-1])
    atol = scale * (1e-12 if dtype == np.float64 else 1e-5)
    np.testing.assert_allclose(
        got, expected, rtol=0, atol=atol, err_msg=f"{a.shape} @ {b.shape} {options}"
    )


def matmul_2d(nc, rng, np):
    """9x7 @ 7x5 with a tile of 4 (partial tiles on every axis) and with the default tile."""
    for dtype in (np.float64, np.float32):
        a = rng.standard_normal((9, 7)).astype(dtype)
        b = rng.standard_normal((7, 5)).astype(dtype)
        _matmul_case(nc, a, b, tile=4)
    _matmul_case(nc, rng.standard_normal((9, 7)), rng.standard_normal((7, 5)))
    _matmul_case(
        nc, rng.standard_normal((9, 7)), rng.standard_normal((7, 5)).T.copy().T, tile=4
    )  # Fortran-ordered operand
    _matmul_case(
        nc, rng.standard_normal((5, 3)).astype(np.float32), rng.standard_normal((3, 2)), tile=4
    )  # mixed dtypes promote to float64


def matmul_batched(nc, rng, np):
    """Batches along grid z, broadcasting as numpy.matmul, grid-stride with max_grid=1."""
    _matmul_case(nc, rng.standard_normal((2, 9, 7)), rng.standard_normal((7, 5)), tile=4)
    _matmul_case(
        nc, rng.standard_normal((3, 1, 4, 6)), rng.standard_normal((2, 6, 3)), tile=4, max_grid=1
    )
    _matmul_case(
        nc,
        rng.standard_normal((5, 4)).astype(np.float32),
        rng.standard_normal((2, 4, 3)).astype(np.float32),
        tile=2,
    )


def matmul_fallbacks(nc, rng, np):
    """1-D operands and integer dtypes use numpy.matmul (same semantics)."""
    a = rng.standard_normal((4, 3))
    v = rng.standard_normal(3)
    np.testing.assert_allclose(nc.matmul(a, v), a @ v, rtol=1e-12)
    ints = rng.integers(-5, 5, (3, 4))
    assert np.array_equal(nc.matmul(ints, ints.T), ints @ ints.T)
    try:
        nc.matmul(a, rng.standard_normal((4, 2)))
    except ValueError:
        pass
    else:
        raise AssertionError("inner-dimension mismatch was not rejected")


def multiply(nc, rng, np):
    """Equal shapes through the kernel (grid-stride with 2 blocks of 8), fallbacks otherwise."""
    for dtype in (np.float64, np.float32):
        for shape in ((5, 7), (3, 4, 5)):
            a = rng.standard_normal(shape).astype(dtype)
            b = rng.standard_normal(shape).astype(dtype)
            got = nc.multiply(a, b, threads=8, max_blocks=2)
            assert type(got) is np.ndarray and got.dtype == dtype and got.shape == shape
            np.testing.assert_array_equal(got, a * b)
    a = rng.standard_normal((6, 4))
    np.testing.assert_array_equal(nc.multiply(a.T, a.T, threads=8), a.T * a.T)  # views
    mixed = nc.multiply(a.astype(np.float32), a, threads=8)
    assert mixed.dtype == np.float64
    np.testing.assert_array_equal(mixed, a.astype(np.float32) * a)
    np.testing.assert_array_equal(nc.multiply(a, a[0]), a * a[0])  # broadcasting fallback
    ints = rng.integers(-9, 9, (4, 3))
    np.testing.assert_array_equal(nc.multiply(ints, ints), ints * ints)


def supports_and_device_info(nc, rng, np):
    from distconv.kernels.registry import ENGINES

    spec = ENGINES["numba-cuda"]  # ranks and dtypes live in the registry
    assert nc.SIMULATOR, "numba.cuda is not the simulator in this process"
    assert spec.supports("correlate_direct", 3, np.float32)
    assert spec.supports("correlate_direct", 1, np.float64)
    assert not spec.supports("correlate_direct", 4, np.float64)
    assert not spec.supports("correlate_direct", 2, np.int32)
    assert not spec.supports("correlate_fft", 2, np.float64)
    assert spec.supports("matmul", 3, np.float32) and spec.supports("multiply", 2, np.float64)
    assert "simulator" in nc.device_info()


# ---- drivers ----------------------------------------------------------------------------------


def _emit(**result) -> None:
    print(PREFIX + json.dumps(result), flush=True)


def run_simulator_checks(names) -> int:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # before numba.cuda is imported anywhere
    try:
        from numba import cuda  # noqa: F401

        from distconv.kernels import numba_cuda as nc
    except Exception as error:  # numba or its CUDA simulator cannot be imported here
        _emit(unavailable=f"numba CUDA simulator unavailable: {type(error).__name__}: {error}")
        return 0
    import numpy as np

    return run_checks(names, SIM_CHECKS, 1000, lambda name, rng: globals()[name](nc, rng, np), 6)


def run_checks(names, known, seed: int, run_one, limit: int) -> int:
    """Call ``run_one(name, rng)`` for each name (``rng`` seeded by ``seed`` and the name's place
    in ``known``) and emit its result line, with a traceback of ``limit`` frames where it raised;
    1 if any failed, else 0."""
    import numpy as np

    failures = 0
    for name in names:
        rng = np.random.default_rng(seed + known.index(name))
        start = time.perf_counter()
        try:
            run_one(name, rng)
        except Exception:
            failures += 1
            detail = traceback.format_exc(limit=limit)
            _emit(name=name, ok=False, seconds=time.perf_counter() - start, detail=detail)
        else:
            _emit(name=name, ok=True, seconds=time.perf_counter() - start, detail="")
    return 1 if failures else 0


def run_ptx_check() -> int:
    """Compile every kernel to PTX (sm_80, sm_90); 'unavailable' when NVVM is missing."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        _emit(unavailable="NUMBA_ENABLE_CUDASIM is set: no real compiler in the simulator")
        return 0
    try:
        from numba import cuda

        def probe(out):
            out[0] = 1.0

        from numba import float32, types

        cuda.compile_ptx(probe, (types.Array(float32, 1, "C"),), cc=(8, 0))
    except Exception as error:
        _emit(
            unavailable=f"no CUDA compiler toolchain for numba ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); install a CUDA "
            "toolkit or nvidia-cuda-nvcc-cu12 (+ nvidia-cuda-nvrtc-cu12 for "
            "numba-cuda) and set CUDA_HOME"
        )
        return 0
    from distconv.kernels import numba_cuda as nc

    start = time.perf_counter()
    try:
        compiled = {}
        for cc in ((8, 0), (9, 0)):
            ptx = nc._compile_ptx(cc)
            assert all(
                ".shared" in text
                for key, text in ptx.items()
                if key.startswith(("correlate_shared", "matmul"))
            ), "no shared memory"
            compiled.update({f"sm{cc[0]}{cc[1]}-{key}": len(text) for key, text in ptx.items()})
    except Exception:
        _emit(
            name="ptx",
            ok=False,
            seconds=time.perf_counter() - start,
            detail=traceback.format_exc(limit=8),
        )
        return 1
    _emit(
        name="ptx",
        ok=True,
        seconds=time.perf_counter() - start,
        detail=f"{len(compiled)} kernels compiled ({getattr(cuda, 'implementation', '?')})",
    )
    return 0


def main(argv: list[str]) -> int:
    if argv == ["--ptx"]:
        return run_ptx_check()
    names = argv or list(SIM_CHECKS)
    unknown = [n for n in names if n not in SIM_CHECKS]
    if unknown:
        print(f"unknown checks: {unknown}; known: {SIM_CHECKS}", file=sys.stderr)
        return 2
    return run_simulator_checks(names)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
