"""distconv.matmul / distconv.multiply equal numpy.matmul / numpy.multiply (float64 reference).

Parametrised over the installed CPU engines that implement each operation; every case runs the
real graph (panels, one engine call per block pair, tree sums) on random data with chunks that do
not line up, and the planner is checked on its own: k panels from the budget, threads, peaks.
"""

from __future__ import annotations

import dataclasses

import dask.array as da
import numpy as np
import pytest
from conftest import engines_under_test, write_zarr

import distconv as dc
from distconv import kernels
from distconv.ops.matmul import matmul_with_plan, plan_for
from distconv.plan.matmul import MAX_FAN_IN, SAFETY_FRACTION, Resources, plan_matmul


def engines_for(op: str) -> list[str]:
    """Installed CPU engines (narrowed by DISTCONV_TEST_ENGINES) that implement ``op``."""
    return [
        name
        for name in engines_under_test()
        if kernels.ENGINES[name].device == "cpu" and op in kernels.ENGINES[name].ops
    ]


MATMUL_ENGINES = engines_for("matmul")
MULTIPLY_ENGINES = engines_for("multiply")
TWO_THREADS = Resources(
    parallel_tasks=2, cores_per_task=1, memory_budget=2**30, budget_source="test"
)


def random_array(rng: np.random.Generator, shape, dtype=np.float64) -> np.ndarray:
    """Signed random values, never all zeros; small integers so products stay meaningful."""
    dtype = np.dtype(dtype)
    if dtype == np.dtype(bool):
        return rng.random(shape) < 0.6
    if dtype.kind in "iu":
        low = 1 if dtype.kind == "u" else -100
        return rng.integers(low, 100, size=shape).astype(dtype)
    return (rng.standard_normal(shape) + 0.25).astype(dtype)


def assert_matches(got: np.ndarray, expected: np.ndarray, k: int) -> None:
    """Exact for integers and bool; float32 ≈ 1e-5 and float64 ≈ 1e-12 of the largest term."""
    assert got.shape == expected.shape
    if got.dtype.kind in "biu":
        np.testing.assert_array_equal(got, expected)
        return
    scale = max(float(np.abs(expected).max(initial=0.0)), 1.0) * max(k, 1)
    atol = scale * (1e-12 if got.dtype == np.float64 else 2e-6)
    np.testing.assert_allclose(got, expected, rtol=0, atol=atol)


def run_matmul(a, b, a_chunks, b_chunks, engine, **kwargs) -> np.ndarray:
    x = da.from_array(a, chunks=a_chunks)
    y = da.from_array(b, chunks=b_chunks)
    return dc.matmul(x, y, engine=engine, **kwargs).compute(scheduler="sync")


MATMUL_CASES = [
    pytest.param((37, 23), (23, 29), (10, 7), (5, 8), id="2d-uneven-k-chunks-differ"),
    pytest.param((23,), (23, 29), (6,), (9, 8), id="1d@2d"),
    pytest.param((37, 23), (23,), (10, 7), (4,), id="2d@1d"),
    pytest.param((23,), (23,), (5,), (7,), id="1d@1d"),
    pytest.param((4, 1, 13, 11), (3, 11, 9), (3, 1, 5, 4), (2, 3, 4), id="batched-broadcast"),
    pytest.param((11,), (2, 3, 11, 5), (4,), (1, 2, 5, 2), id="1d@batched"),
    pytest.param((2, 3, 13, 11), (11,), (1, 2, 5, 3), (6,), id="batched@1d"),
]


@pytest.mark.parametrize("engine", MATMUL_ENGINES)
@pytest.mark.parametrize("a_shape,b_shape,a_chunks,b_chunks", MATMUL_CASES)
def test_matmul_matches_numpy(rng, engine, a_shape, b_shape, a_chunks, b_chunks):
    a, b = random_array(rng, a_shape), random_array(rng, b_shape)
    got = run_matmul(a, b, a_chunks, b_chunks, engine)
    assert got.dtype == np.float64
    assert_matches(got, np.matmul(a, b), a_shape[-1])


@pytest.mark.parametrize("engine", MATMUL_ENGINES)
@pytest.mark.parametrize(
    "a_shape,b_shape",
    [
        ((150, 1100), (1100, 140)),
        ((1100,), (1100, 140)),
        ((2, 130, 700), (700, 129)),
    ],
    ids=["2d", "1d@2d", "batched"],
)
def test_matmul_k_panels_are_summed_in_a_tree(rng, engine, a_shape, b_shape):
    a, b = random_array(rng, a_shape), random_array(rng, b_shape)
    x, y = da.from_array(a, chunks=100), da.from_array(b, chunks=(70, 50)[-b.ndim :])
    plan = plan_for(x, y, engine=engine, memory_budget="600KiB")
    assert plan.k_panels > 2 and plan.fits_budget
    assert plan.sum_tasks >= plan.output_blocks  # a tree: at least one add task per block
    got = dc.matmul(x, y, engine=engine, memory_budget="600KiB").compute(scheduler="sync")
    assert_matches(got, np.matmul(a, b), a_shape[-1])


@pytest.mark.parametrize("engine", MATMUL_ENGINES)
@pytest.mark.parametrize(
    "a_dtype,b_dtype",
    [
        (np.int8, np.int8),  # NumPy wraps int8 products: so must the partial sums
        (np.int16, np.int32),
        (np.uint8, np.int64),
        (np.int32, np.float32),  # → float64, as NumPy promotes
        (np.float32, np.float32),
        (np.float32, np.float64),
        (bool, bool),  # logical or of ands
    ],
)
def test_matmul_dtypes_promote_as_numpy(rng, engine, a_dtype, b_dtype):
    if not kernels.supports(engine, "matmul", 2, np.result_type(a_dtype, b_dtype)):
        pytest.skip(f"{engine} does not run matmul on {np.result_type(a_dtype, b_dtype)}")
    a, b = random_array(rng, (140, 300), a_dtype), random_array(rng, (300, 131), b_dtype)
    expected = np.matmul(a, b)
    for budget in (None, "300KiB"):  # one k panel, then several summed in a tree
        got = run_matmul(a, b, (50, 70), (40, 60), engine, memory_budget=budget)
        assert got.dtype == expected.dtype, budget
        if expected.dtype.kind == "f":
            expected64 = np.matmul(a.astype(np.float64), b.astype(np.float64))
            assert_matches(got, expected64.astype(got.dtype), 300)
        else:
            assert_matches(got, expected, 300)


@pytest.mark.parametrize(
    "a_shape,b_shape",
    [
        ((3, 4), (5, 6)),
        ((4,), (5,)),
        ((), (3,)),
        ((2, 3, 4), (5, 4, 3)),
        ((3, 4), (3,)),
    ],
)
def test_matmul_shape_errors_are_numpys(a_shape, b_shape):
    with pytest.raises(ValueError) as numpy_error:
        np.matmul(np.ones(a_shape), np.ones(b_shape))
    with pytest.raises(dc.DistconvError) as ours:
        dc.matmul(da.ones(a_shape), da.ones(b_shape))
    assert str(ours.value) == str(numpy_error.value).strip()
    assert "\n" not in str(ours.value)


# --- the plan ------------------------------------------------------------------------------


def test_plan_uses_one_k_panel_when_it_fits():
    plan = plan_matmul(
        (8192, 8192),
        (8192, 8192),
        np.float32,
        np.float32,
        a_chunks=((1024,) * 8,) * 2,
        b_chunks=((1024,) * 8,) * 2,
        resources=TWO_THREADS,
    )
    assert plan.k_panels == 1 and plan.sum_tasks == 0
    assert plan.output_blocks % 2 == 0  # both threads busy, none idle at the end
    assert plan.output_chunks == (1024, 1024)  # written in the inputs' chunk size
    assert plan.peak_task_bytes <= TWO_THREADS.memory_budget
    assert plan.flops == 2 * 8192**3


def test_plan_splits_k_only_when_the_budget_requires():
    budget = 64 * 2**20
    plan = plan_matmul(
        (4096, 2**20),
        (2**20, 4096),
        np.float32,
        np.float32,
        memory_budget=budget,
        resources=TWO_THREADS,
    )
    assert plan.k_panels > 1
    assert plan.peak_task_bytes <= budget and plan.fits_budget
    assert 2 <= plan.fan_in <= MAX_FAN_IN
    roomy = plan_matmul(
        (4096, 2**20),
        (2**20, 4096),
        np.float32,
        np.float32,
        memory_budget=64 * budget,
        resources=TWO_THREADS,
    )
    assert roomy.k_panels < plan.k_panels


def test_plan_reports_an_impossible_budget():
    plan = plan_matmul(
        (4096, 4096),
        (4096, 4096),
        np.float64,
        np.float64,
        memory_budget=1000,
        resources=TWO_THREADS,
    )
    assert not plan.fits_budget
    assert "OVER the budget" in plan.describe()


def test_plan_describe_lists_what_dry_run_promises():
    plan = plan_matmul((3, 500, 300), (300, 200), np.float32, np.int16, resources=TWO_THREADS)
    text = plan.describe()
    for needle in ("output chunks", "tasks", "bytes read", "peak memory/task", "FLOPs", "float32"):
        assert needle in text
    assert plan.dtype == np.result_type(np.float32, np.int16)


def test_plan_gives_idle_cores_to_fewer_tasks():
    """A single block gets every thread's core; many blocks get one core each."""
    four = Resources(parallel_tasks=4, cores_per_task=1, memory_budget=2**30, budget_source="")
    alone = plan_matmul((1, 64), (64, 1), np.float64, np.float64, resources=four)
    assert alone.output_blocks == 1 and alone.blas_threads == 4
    many = plan_matmul(
        (4096, 4096), (4096, 4096), np.float64, np.float64, resources=four, memory_budget=50 * 2**20
    )
    assert many.matmul_tasks >= 4 and many.blas_threads == 1


def test_plan_budget_parses_sizes():
    plan = plan_matmul(
        (10, 10), (10, 10), np.float64, np.float64, memory_budget="2GiB", resources=TWO_THREADS
    )
    assert plan.resources.memory_budget == 2 * 2**30
    with pytest.raises(dc.DistconvError, match="memory budget"):
        plan_matmul(
            (10, 10), (10, 10), np.float64, np.float64, memory_budget="lots", resources=TWO_THREADS
        )


_BLAS_LIMIT_CHECK = """
from threadpoolctl import threadpool_info
from distconv.ops._blas import limit_blas_threads

def blas():
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

before = blas()
with limit_blas_threads(1):
    inside = blas()
    with limit_blas_threads(1):  # a second task in the same process shares the limit
        pass
    assert inside and all(n == 1 for n in inside), inside
    assert blas() == inside
assert blas() == before, (blas(), before)
"""


def test_limit_blas_threads_sets_and_restores():
    # In a fresh process: OpenBLAS thread counts set from Dask's pool threads by earlier tests
    # in this process do not always read back (see the issue note), which is not what this
    # test is about.
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _BLAS_LIMIT_CHECK], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


# --- Zarr in, Zarr out ---------------------------------------------------------------------


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_matmul_zarr_to_zarr_with_provenance(rng, tmp_path, zarr_format):
    a, b = random_array(rng, (300, 260), np.float32), random_array(rng, (260, 170), np.float32)
    write_zarr(tmp_path / "a.zarr", a, (64, 100), zarr_format=zarr_format)
    write_zarr(tmp_path / "b.zarr", b, (30, 50), zarr_format=zarr_format)
    x, y = dc.open(tmp_path / "a.zarr"), dc.open(tmp_path / "b.zarr")
    plan = plan_for(x, y)
    assert plan.panels_from_zarr == (True, True)
    product = dc.matmul(x, y, memory_budget="200KiB")  # several k panels, mismatched chunks
    written = dc.save(product, tmp_path / "c.zarr", progress=False)
    assert written.metadata.zarr_format == zarr_format
    assert_matches(
        written[:], np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.float32), 260
    )
    record = dict(written.attrs)["distconv"]
    assert record["complete"] is True
    assert sorted(record["inputs"]) == sorted(str(tmp_path / n) for n in ("a.zarr", "b.zarr"))
    step = record["steps"][-1]
    assert step["operation"] == "matmul"
    assert step["plan"]["k_panels"] > 1 or step["plan"]["stream_k"] > 0
    assert tuple(written.chunks) == tuple(c[0] for c in product.chunks)


@pytest.mark.parametrize("engine", MATMUL_ENGINES)
@pytest.mark.parametrize(
    "a_shape,b_shape,a_chunks,b_chunks,budget",
    [
        *[pytest.param(*case.values, None, id=case.id) for case in MATMUL_CASES],
        pytest.param((150, 1100), (1100, 140), (100, 100), (70, 50), "600KiB", id="k-panels"),
        pytest.param(
            (2, 130, 700),
            (3, 1, 700, 129),
            (1, 100, 100),
            (1, 1, 70, 50),
            "600KiB",
            id="batched-k-panels",
        ),
        pytest.param((40000,), (40000,), (3000,), (7000,), "200KiB", id="dot-k-panels"),
    ],
)
def test_matmul_tasks_read_their_panels_from_zarr(
    rng, tmp_path, engine, a_shape, b_shape, a_chunks, b_chunks, budget
):
    a, b = random_array(rng, a_shape), random_array(rng, b_shape)
    write_zarr(tmp_path / "a.zarr", a, a_chunks)
    write_zarr(tmp_path / "b.zarr", b, b_chunks)
    x, y = dc.open(tmp_path / "a.zarr"), dc.open(tmp_path / "b.zarr")
    plan = plan_for(x, y, engine=engine, memory_budget=budget)
    assert plan.reads_in_tasks
    assert plan.bytes_read >= sum(plan.input_bytes)  # every input read at least once
    if budget:  # k in several panels summed in a tree, or streamed inside each task
        assert plan.k_panels > 1 or plan.stream_steps > 1
    got = dc.matmul(x, y, engine=engine, memory_budget=budget).compute(scheduler="sync")
    assert_matches(got, np.matmul(a, b), a_shape[-1])


@pytest.mark.parametrize("engine", MATMUL_ENGINES)
@pytest.mark.parametrize(
    "a_shape,b_shape,dtype",
    [
        ((90, 700), (700, 80), np.float64),
        ((3, 40, 700), (700,), np.int8),  # wraps: the streamed sum must wrap the same way
        ((700,), (2, 700, 30), bool),
        ((700,), (700,), np.float32),  # a scalar result
    ],
    ids=["2d", "batched@1d-int8", "1d@batched-bool", "dot"],
)
def test_streamed_k_equals_numpy(rng, tmp_path, engine, a_shape, b_shape, dtype):
    """A task that reads k in steps (unaligned with the chunks, a short last step) and adds
    the products in place gives numpy.matmul's result."""
    if not kernels.supports(engine, "matmul", 2, np.dtype(dtype)):
        pytest.skip(f"{engine} does not run matmul on {np.dtype(dtype)}")
    a, b = random_array(rng, a_shape, dtype), random_array(rng, b_shape, dtype)
    write_zarr(tmp_path / "a.zarr", a, a_shape[:-1] + (128,))
    write_zarr(
        tmp_path / "b.zarr",
        b,
        (100,) + b_shape[1:] if len(b_shape) == 1 else b_shape[:-2] + (100, 16),
    )
    x, y = dc.open(tmp_path / "a.zarr"), dc.open(tmp_path / "b.zarr")
    plan = dataclasses.replace(plan_for(x, y, engine=engine), stream_k=150)
    assert plan.k_panels == 1 and plan.stream_steps == 5
    assert "5 steps of 150" in plan.describe()
    got = matmul_with_plan(x, y, plan).compute(scheduler="sync")
    expected = np.matmul(a, b)
    if expected.dtype.kind == "f":
        expected = np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(dtype)
    assert np.asarray(got).dtype == expected.dtype
    assert_matches(np.asarray(got), expected, 700)


def test_plan_streams_k_when_tasks_read_zarr():
    """Whole k does not fit the budget: tasks reading their own panels stream k instead, so
    blocks stay as large as one per thread (A read once, B once per block) and no partial
    product leaves a task; shared panels need many small blocks, each panel copied to each."""
    shape_a, shape_b = (4096, 2**16), (2**16, 4096)
    chunks_a, chunks_b = regular(shape_a, (1024, 1024)), regular(shape_b, (1024, 1024))
    budget = 256 * 2**20
    common = dict(memory_budget=budget, a_chunks=chunks_a, b_chunks=chunks_b, resources=TWO_THREADS)
    streamed = plan_matmul(
        shape_a, shape_b, np.float32, np.float32, panels_from_zarr=(True, True), **common
    )
    assert streamed.k_panels == 1 and streamed.sum_tasks == 0 and streamed.stream_steps > 1
    assert streamed.fits_budget and streamed.peak_task_bytes <= budget
    assert streamed.matmul_tasks == 2 and streamed.bytes_read <= 2 * sum(streamed.input_bytes)
    shared = plan_matmul(shape_a, shape_b, np.float32, np.float32, **common)
    assert shared.stream_steps == 1 and shared.matmul_tasks > streamed.matmul_tasks
    assert shared.panel_bytes_moved > streamed.bytes_read


def whole_chunks(start: int, stop: int, chunk: int, extent: int) -> int:
    """Elements of the whole chunks that [start, stop) touches on an axis of ``extent``."""
    return min(extent, -(-stop // chunk) * chunk) - start // chunk * chunk


@pytest.mark.parametrize("block", [(4096, 8192, 8192), (3000, 8192, 2500), (1000, 700, 5000)])
def test_plan_counts_the_chunks_tasks_decode(block):
    """bytes_read = every whole chunk each task touches, panels re-read per block, counted by
    brute force over the tasks; the dry run says how often each input is read."""
    n, k, m = 8192, 8192, 6000
    a_chunks, b_chunks = (1024, 1000), (1000, 768)
    plan = plan_matmul(
        (n, k),
        (k, m),
        np.float32,
        np.float32,
        a_chunks=regular((n, k), a_chunks),
        b_chunks=regular((k, m), b_chunks),
        panels_from_zarr=(True, True),
        resources=TWO_THREADS,
    )
    plan = dataclasses.replace(plan, block_n=block[0], block_k=block[1], block_m=block[2])
    expected = 0
    for n0 in range(0, n, plan.block_n):
        for k0 in range(0, k, plan.block_k):
            for m0 in range(0, m, plan.block_m):
                n1, k1, m1 = (
                    min(n, n0 + plan.block_n),
                    min(k, k0 + plan.block_k),
                    min(m, m0 + plan.block_m),
                )
                a_rows = whole_chunks(n0, n1, 1024, n)
                a_cols = b_rows = whole_chunks(k0, k1, 1000, k)
                b_cols = whole_chunks(m0, m1, 768, m)
                expected += 4 * (a_rows * a_cols + b_rows * b_cols)
    assert plan.bytes_read == expected
    a_read, b_read = plan.operand_bytes_read
    assert a_read >= 4 * n * k and b_read >= 4 * k * m
    assert f"A {a_read / (4 * n * k):.2f}x" in plan.describe()


def test_plan_prefers_blocks_that_reread_less():
    """Two tasks for two threads: split the axis whose re-read costs least (here B is small,
    so A is split into row panels and B read by both tasks)."""
    plan = plan_matmul(
        (8192, 8192),
        (8192, 512),
        np.float32,
        np.float32,
        a_chunks=regular((8192, 8192), (1024, 1024)),
        b_chunks=regular((8192, 512), (1024, 512)),
        panels_from_zarr=(True, True),
        resources=TWO_THREADS,
    )
    a_read, b_read = plan.operand_bytes_read
    assert plan.matmul_tasks >= 2
    assert a_read == plan.input_bytes[0]  # the large input is read exactly once
    assert plan.bytes_read <= sum(plan.input_bytes) + plan.matmul_tasks * plan.input_bytes[1]


def regular(shape, chunks):
    return tuple((c,) * (s // c) + ((s % c,) if s % c else ()) for s, c in zip(shape, chunks))


def test_matmul_plans_from_the_workers_memory(rng):
    """On a real LocalCluster the default budget comes from the workers' memory_limit."""
    a, b = random_array(rng, (200, 150)), random_array(rng, (150, 90))
    with dc.cluster("local", workers=2, threads_per_worker=1, memory_limit="1GiB", quiet=True):
        x, y = da.from_array(a, chunks=60), da.from_array(b, chunks=40)
        plan = plan_for(x, y)
        assert plan.resources.parallel_tasks == 2
        assert plan.resources.memory_budget == int(2**30 * SAFETY_FRACTION)
        assert "worker" in plan.resources.budget_source
        got = dc.matmul(x, y).compute()
    assert_matches(got, np.matmul(a, b), 150)


# --- GPU engines ---------------------------------------------------------------------------


def no_gpu_reason() -> str | None:
    """Why the GPU test cannot run here (None when CuPy sees a CUDA device)."""
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # not installed, no driver: ImportError or CUDARuntimeError
        return f"no CUDA device ({type(error).__name__}: {error})"
    return None if count else "no CUDA device (getDeviceCount() == 0)"


@pytest.mark.gpu
@pytest.mark.skipif(no_gpu_reason() is not None, reason=str(no_gpu_reason()))
@pytest.mark.parametrize("engine", ["cupy", "numba-cuda"])
def test_gpu_matmul_sums_partials_on_the_device(rng, engine):
    import cupy

    if not kernels.is_installed(engine):
        pytest.skip(f"{engine} not installed")
    a, b = random_array(rng, (150, 1100)), random_array(rng, (1100, 140))
    x, y = da.from_array(a, chunks=100), da.from_array(b, chunks=(70, 50))
    host = dc.matmul(x, y, engine=engine, memory_budget="600KiB")
    assert any(name.startswith("to_numpy") for name in host.dask.layers)  # summed on device
    assert type(host._meta) is np.ndarray  # host chunks in, host chunks out
    assert_matches(host.compute(scheduler="sync"), np.matmul(a, b), 1100)
    on_device = dc.matmul(
        x.map_blocks(cupy.asarray),
        y.map_blocks(cupy.asarray),
        engine=engine,
        memory_budget="600KiB",
    )
    got = on_device.compute(scheduler="sync")
    assert isinstance(got, cupy.ndarray)
    assert_matches(cupy.asnumpy(got), np.matmul(a, b), 1100)


# --- multiply ------------------------------------------------------------------------------


MULTIPLY_CASES = [
    pytest.param((13, 17), (13, 17), (5, 4), (6, 9), id="same-shape-chunks-differ"),
    pytest.param((13, 1, 7), (5, 1), (4, 1, 3), (2, 1), id="broadcast-both"),
    pytest.param((4, 6), (6,), (3, 4), (5,), id="broadcast-row"),
    pytest.param((), (3, 4), (), (2, 2), id="0d-array"),
]


@pytest.mark.parametrize("engine", MULTIPLY_ENGINES)
@pytest.mark.parametrize("a_shape,b_shape,a_chunks,b_chunks", MULTIPLY_CASES)
def test_multiply_matches_numpy(rng, engine, a_shape, b_shape, a_chunks, b_chunks):
    a, b = random_array(rng, a_shape), random_array(rng, b_shape)
    x, y = da.from_array(a, chunks=a_chunks), da.from_array(b, chunks=b_chunks)
    got = dc.multiply(x, y, engine=engine).compute(scheduler="sync")
    np.testing.assert_allclose(got, np.multiply(a, b), rtol=1e-15, atol=0)
    assert got.shape == np.multiply(a, b).shape


@pytest.mark.parametrize("engine", MULTIPLY_ENGINES)
@pytest.mark.parametrize(
    "a_dtype,b",
    [
        (np.int8, 3),  # weak Python int: stays int8 (and wraps as NumPy does)
        (np.float32, 0.5),  # weak Python float: stays float32
        (np.int16, 2.5),  # int array times a float: float64
        (np.float32, np.float64(2.0)),  # NumPy scalars are strong: float64
        (np.uint8, np.int8),  # two arrays: uint8·int8 → int16
        (bool, bool),
        (np.int32, np.float32),  # → float64
    ],
    ids=["int8*3", "f32*0.5", "i16*2.5", "f32*f64scalar", "u8*i8", "bool*bool", "i32*f32"],
)
def test_multiply_dtypes_promote_as_numpy(rng, engine, a_dtype, b):
    a = random_array(rng, (9, 11), a_dtype)
    b = random_array(rng, (9, 11), b) if isinstance(b, type) else b
    expected = np.multiply(a, b)
    if not kernels.supports(engine, "multiply", 2, expected.dtype):
        pytest.skip(f"{engine} does not multiply {expected.dtype}")
    y = da.from_array(b, chunks=(4, 5)) if isinstance(b, np.ndarray) else b
    got = dc.multiply(da.from_array(a, chunks=(4, 3)), y, engine=engine).compute(scheduler="sync")
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


def test_multiply_scalar_first_and_errors(rng):
    a = random_array(rng, (5, 6), np.float32)
    got = dc.multiply(0.5, da.from_array(a, chunks=3)).compute(scheduler="sync")
    np.testing.assert_array_equal(got, np.multiply(0.5, a))
    with pytest.raises(dc.DistconvError, match="out of bounds for int8"):
        dc.multiply(da.ones(3, dtype=np.int8), 1000)
    with pytest.raises(dc.DistconvError) as ours:
        dc.multiply(da.ones((2, 3)), da.ones((3, 2)))
    with pytest.raises(ValueError) as numpy_error:
        np.multiply(np.ones((2, 3)), np.ones((3, 2)))
    assert str(ours.value) == str(numpy_error.value).strip()
    with pytest.raises(dc.DistconvError, match="at least one array"):
        dc.multiply(2, 3)


def test_multiply_zarr_to_zarr_keeps_chunks(rng, tmp_path):
    a, b = random_array(rng, (40, 30), np.float32), random_array(rng, (30,), np.float32)
    write_zarr(tmp_path / "a.zarr", a, (16, 10))
    written = dc.save(
        dc.multiply(dc.open(tmp_path / "a.zarr"), b), tmp_path / "m.zarr", progress=False
    )
    np.testing.assert_array_equal(written[:], a * b)
    assert tuple(written.chunks) == (16, 10)
    assert dict(written.attrs)["distconv"]["steps"][-1]["operation"] == "multiply"


def test_matmul_names_a_damaged_input_chunk(rng, tmp_path):
    """A chunk that cannot be decoded is bad input (InputReadError naming the store), as for
    chunks read through distconv.open, not an engine crash."""
    a, b = random_array(rng, (60, 40)), random_array(rng, (40, 30))
    write_zarr(tmp_path / "a.zarr", a, (20, 20))
    write_zarr(tmp_path / "b.zarr", b, (20, 15))
    (tmp_path / "b.zarr" / "c" / "1" / "0").write_bytes(b"not zstd at all")
    x, y = dc.open(tmp_path / "a.zarr"), dc.open(tmp_path / "b.zarr")
    assert plan_for(x, y).reads_in_tasks
    with pytest.raises(
        dc.errors.InputReadError, match=r"b\.zarr: the panel .* the input is damaged"
    ):
        dc.matmul(x, y).compute(scheduler="sync")
