"""`distconv matmul` and `distconv multiply`: the real command in a subprocess, real Zarr stores.

Every run uses ``--cluster threads`` for speed except one on the default local cluster.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from conftest import distconv, tree_digest, write_zarr

from distconv import kernels

THREADS = ("--cluster", "threads")


@pytest.fixture
def operands(tmp_path):
    """a.zarr (70×50) and b.zarr (50×40) as Zarr v3, chunked differently along k."""
    rng = np.random.default_rng(11)
    a = (rng.standard_normal((70, 50)) + 0.5).astype(np.float32)
    b = (rng.standard_normal((50, 40)) + 0.5).astype(np.float32)
    write_zarr(tmp_path / "a.zarr", a, (32, 20))
    write_zarr(tmp_path / "b.zarr", b, (15, 16))
    return tmp_path, a, b


def float64_product(a, b) -> np.ndarray:
    return np.matmul(a.astype(np.float64), b.astype(np.float64))


def assert_one_line_error(result, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distconv: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_matmul_default_output_beside_a(operands):
    folder, a, b = operands
    before = tree_digest(folder / "a.zarr")
    result = distconv("matmul", "a.zarr", "b.zarr", *THREADS, cwd=folder)
    assert result.returncode == 0, result.stderr
    assert "wrote a.matmul.zarr" in result.stdout and "GFLOP/s" in result.stdout
    out = zarr.open_array(str(folder / "a.matmul.zarr"), mode="r")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:], float64_product(a, b), rtol=0, atol=1e-4)
    record = out.attrs["distconv"]
    assert record["complete"] is True and record["steps"][-1]["operation"] == "matmul"
    assert tree_digest(folder / "a.zarr") == before


def test_matmul_zarr_v2_several_k_panels(tmp_path):
    rng = np.random.default_rng(12)
    a, b = (
        rng.integers(-50, 50, (3, 140, 600)).astype(np.int32),
        rng.integers(-50, 50, (600, 130)).astype(np.int16),
    )
    write_zarr(tmp_path / "a.zarr", a, (2, 64, 100), zarr_format=2)
    write_zarr(tmp_path / "b.zarr", b, (90, 64), zarr_format=2)
    result = distconv(
        "matmul",
        "a.zarr",
        "b.zarr",
        "-o",
        "c.zarr",
        "--memory-budget",
        "500KiB",
        *THREADS,
        "--quiet",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    out = zarr.open_array(str(tmp_path / "c.zarr"), mode="r")
    assert out.metadata.zarr_format == 2
    expected = np.matmul(a, b)
    assert out.dtype == expected.dtype  # int32, as NumPy promotes
    np.testing.assert_array_equal(out[:], expected)
    step = out.attrs["distconv"]["steps"][-1]
    # k split: in panels summed in a tree, or streamed in steps inside each task.
    assert (step["plan"]["k_panels"] > 1 and "tree sum" in step["method"]) or (
        step["plan"]["stream_k"] > 0 and "streamed" in step["method"]
    )


def test_matmul_dry_run_prints_the_plan_and_writes_nothing(operands):
    folder, _, _ = operands
    result = distconv(
        "matmul", "a.zarr", "b.zarr", "--dry-run", "--memory-budget", "2GiB", *THREADS, cwd=folder
    )
    assert result.returncode == 0, result.stderr
    for needle in (
        "matmul plan",
        "output chunks",
        "tasks",
        "bytes read",
        "peak memory/task",
        "FLOPs",
        "2.00 GiB per task",
    ):
        assert needle in result.stdout
    assert not (folder / "a.matmul.zarr").exists()


@pytest.mark.skipif(not kernels.is_installed("tensorflow"), reason="tensorflow not installed")
def test_matmul_with_the_tensorflow_engine(operands):
    folder, a, b = operands
    result = distconv(
        "matmul",
        "a.zarr",
        "b.zarr",
        "-o",
        "tf.zarr",
        "--engine",
        "tensorflow",
        *THREADS,
        "-q",
        cwd=folder,
    )
    assert result.returncode == 0, result.stderr
    out = zarr.open_array(str(folder / "tf.zarr"), mode="r")
    np.testing.assert_allclose(out[:], float64_product(a, b), rtol=0, atol=1e-4)
    assert out.attrs["distconv"]["steps"][-1]["engine"] == "tensorflow"


def test_matmul_shape_mismatch_is_numpys_message(operands):
    folder, _, _ = operands
    result = distconv("matmul", "b.zarr", "b.zarr", *THREADS, cwd=folder)
    assert_one_line_error(
        result,
        "matmul: Input operand 1 has a mismatch in its core dimension 0",
        "(size 50 is different from 40)",
    )
    assert not (folder / "b.matmul.zarr").exists()


def test_matmul_missing_input(operands):
    folder, _, _ = operands
    result = distconv("matmul", "a.zarr", "nope.zarr", *THREADS, cwd=folder)
    assert_one_line_error(result, "nope.zarr", "no such file")


def test_existing_output_needs_overwrite(operands):
    folder, a, b = operands
    assert (
        distconv(
            "matmul", "a.zarr", "b.zarr", "-o", "c.zarr", *THREADS, "-q", cwd=folder
        ).returncode
        == 0
    )
    again = distconv("matmul", "a.zarr", "b.zarr", "-o", "c.zarr", *THREADS, cwd=folder)
    assert_one_line_error(again, "already exists", "--overwrite")
    write_zarr(folder / "b2.zarr", b * 2, (10, 10))
    replaced = distconv(
        "matmul", "a.zarr", "b2.zarr", "-o", "c.zarr", "--overwrite", *THREADS, "-q", cwd=folder
    )
    assert replaced.returncode == 0, replaced.stderr
    np.testing.assert_allclose(
        zarr.open_array(str(folder / "c.zarr"))[:], float64_product(a, b * 2), rtol=0, atol=2e-4
    )
    into_input = distconv(
        "multiply", "a.zarr", "2", "-o", "a.zarr", "--overwrite", *THREADS, cwd=folder
    )
    assert_one_line_error(into_input, "is the input")


def test_multiply_arrays_broadcast(tmp_path):
    rng = np.random.default_rng(13)
    a = (rng.random((60, 45)) + 0.5).astype(np.float32)
    row = (rng.random((1, 45)) + 0.5).astype(np.float64)
    write_zarr(tmp_path / "a.zarr", a, (25, 20))
    write_zarr(tmp_path / "row.zarr", row, (1, 15), zarr_format=2)
    result = distconv("multiply", "a.zarr", "row.zarr", "-o", "m.zarr", *THREADS, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "wrote m.zarr" in result.stdout
    out = zarr.open_array(str(tmp_path / "m.zarr"), mode="r")
    assert out.dtype == np.float64  # float32 · float64 → float64
    np.testing.assert_array_equal(out[:], np.multiply(a, row))
    assert out.attrs["distconv"]["steps"][-1]["operation"] == "multiply"


@pytest.mark.parametrize("scalar,dtype", [("0.5", np.float32), ("3", np.int16), ("2.5", np.int16)])
def test_multiply_by_a_number(tmp_path, scalar, dtype):
    rng = np.random.default_rng(14)
    a = (rng.random((30, 20)) * 100 + 1).astype(dtype)
    write_zarr(tmp_path / "a.zarr", a, (16, 16))
    result = distconv("multiply", "a.zarr", scalar, *THREADS, "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = zarr.open_array(str(tmp_path / "a.multiply.zarr"), mode="r")
    number = float(scalar) if "." in scalar else int(scalar)
    expected = np.multiply(a, number)
    assert out.dtype == expected.dtype  # NumPy's weak scalar: float32·0.5 stays float32
    np.testing.assert_array_equal(out[:], expected)


def test_multiply_errors(tmp_path):
    a = np.arange(1, 13, dtype=np.int8).reshape(3, 4)
    write_zarr(tmp_path / "a.zarr", a, (2, 2))
    write_zarr(tmp_path / "b.zarr", a.T.copy(), (2, 2))
    mismatch = distconv("multiply", "a.zarr", "b.zarr", *THREADS, cwd=tmp_path)
    assert_one_line_error(
        mismatch, "operands could not be broadcast together with shapes (3,4) (4,3)"
    )
    overflow = distconv("multiply", "a.zarr", "1000", *THREADS, cwd=tmp_path)
    assert_one_line_error(overflow, "Python integer 1000 out of bounds for int8")
    missing = distconv("multiply", "a.zarr", "missing.zarr", *THREADS, cwd=tmp_path)
    assert_one_line_error(missing, "missing.zarr", "no such file")


def test_matmul_on_the_default_local_cluster(operands):
    folder, a, b = operands
    result = distconv(
        "matmul", "a.zarr", "b.zarr", "-o", "local.zarr", "--workers", "2", cwd=folder
    )
    assert result.returncode == 0, result.stderr
    assert "dashboard:" in result.stdout  # a LocalCluster really started (--workers)
    out = zarr.open_array(str(folder / "local.zarr"), mode="r")
    np.testing.assert_allclose(out[:], float64_product(a, b), rtol=0, atol=1e-4)


@pytest.mark.parametrize("operation", ["matmul", "multiply"])
def test_resume_computes_only_the_missing_chunks(tmp_path, operation):
    """An interrupted output (chunks missing, not marked complete) is finished by --resume:
    missing chunks are computed, written ones are kept as they are; another job is refused."""
    rng = np.random.default_rng(15)
    a = (rng.random((64, 48)) + 0.5).astype(np.float32)
    b = (rng.random((48, 48) if operation == "matmul" else (64, 48)) + 0.5).astype(np.float32)
    write_zarr(tmp_path / "a.zarr", a, (16, 24) if operation == "matmul" else (16, 16))
    write_zarr(tmp_path / "b.zarr", b, (24, 16) if operation == "matmul" else (16, 16))
    expected = float64_product(a, b) if operation == "matmul" else np.multiply(a, b)
    first = distconv(operation, "a.zarr", "b.zarr", "-o", "c.zarr", *THREADS, "-q", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    # What an interrupted run leaves: some chunk objects missing, "complete" false.
    out = zarr.open_array(str(tmp_path / "c.zarr"), mode="r+")
    assert tuple(out.chunks) == (16, 16) and out.nchunks == 12
    record = dict(out.attrs["distconv"])
    out.attrs["distconv"] = {**record, "complete": False}
    for key in ("c/1/2", "c/3/0"):
        (tmp_path / "c.zarr" / key).unlink()
    out[:16, :16] = -1.0  # a chunk already written: resume must keep it, not recompute it

    resumed = distconv(
        operation, "a.zarr", "b.zarr", "-o", "c.zarr", "--resume", *THREADS, cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "2 of 12 chunks computed now, 10 were already written" in resumed.stdout
    out = zarr.open_array(str(tmp_path / "c.zarr"), mode="r")
    record = out.attrs["distconv"]
    assert record["complete"] is True and record["resumed"][-1]["chunks_already_written"] == 10
    got = out[:]
    np.testing.assert_array_equal(got[:16, :16], -1.0)
    got[:16, :16] = expected[:16, :16]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)

    if operation == "multiply":
        return  # the refusals below are save()'s, the same for both commands
    write_zarr(tmp_path / "b2.zarr", b * 2, (16, 16))
    other = distconv(
        operation, "a.zarr", "b2.zarr", "-o", "c.zarr", "--resume", *THREADS, cwd=tmp_path
    )
    assert_one_line_error(other, "cannot resume c.zarr", "inputs differ")
    both = distconv(
        operation,
        "a.zarr",
        "b.zarr",
        "-o",
        "c.zarr",
        "--resume",
        "--overwrite",
        *THREADS,
        cwd=tmp_path,
    )
    assert_one_line_error(both, "--overwrite", "--resume")
