"""Integer output saturates, and the samples clipped are counted: by dc.save into the output's
provenance (threads, a LocalCluster, after --resume), in the CLI's summary and in info.

Data are integers and weights quarters, so float32 sums are exact and the expected count is
the number of float64 results (scipy.ndimage) outside the dtype's range, truncated.
"""

from __future__ import annotations

import os
import subprocess
import sys

import dask.array as da
import numpy as np
import pytest
import zarr
from scipy import ndimage

import distconv as dc
from distconv.save.clipping import describe_clipped

DISTCONV = os.path.join(os.path.dirname(sys.executable), "distconv")


def job(rng, dtype="uint8", shape=(40, 33)):
    """(data, weights, expected output, expected clipped count)."""
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    weights = rng.integers(-4, 7, (3, 3)) / 4.0
    exact = np.trunc(ndimage.correlate(x.astype(np.float64), weights, mode="nearest"))
    clipped = int(np.count_nonzero((exact < info.min) | (exact > info.max)))
    assert 0 < clipped < exact.size  # some fit, some do not
    return x, weights, np.clip(exact, info.min, info.max).astype(dtype), clipped


@pytest.mark.parametrize("dtype", ["uint8", "int16"])
def test_save_counts_clipped_samples_into_provenance(tmp_path, dtype):
    rng = np.random.default_rng([5, len(dtype)])
    x, weights, expected, clipped = job(rng, dtype)
    # Irregular chunks: save rechunks, and the float intermediate with them.
    y = dc.correlate(da.from_array(x, chunks=((3, 17, 2, 18), (19, 14))), weights, mode="nearest")
    assert y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(y.compute(scheduler="threads"), expected)
    written = dc.save(y, tmp_path / "out.zarr", progress=False)
    np.testing.assert_array_equal(written[:], expected)
    record = written.attrs["distconv"]["clipped"]
    assert record == {
        "samples": clipped,
        "chunks_counted": written.nchunks,
        "chunks_total": written.nchunks,
        "dtype": dtype,
    }
    assert describe_clipped(record) == f"{clipped:,} samples clipped to the {dtype} range"
    assert written.attrs["distconv"]["steps"][0]["operation"] == "correlate"  # still recorded


def test_float_output_and_derived_arrays_record_no_count(tmp_path):
    rng = np.random.default_rng(6)
    x, weights, _, _ = job(rng)
    as_float = dc.correlate(x, weights, np.float32, mode="nearest")
    assert "clipped" not in dc.save(as_float, tmp_path / "f.zarr", progress=False).attrs["distconv"]
    # Only the filter's own result is written from its floats; y + 0 is plain Dask.
    derived = dc.correlate(x, weights, mode="nearest") + np.uint8(0)
    assert "clipped" not in dc.save(derived, tmp_path / "d.zarr", progress=False).attrs["distconv"]


def test_resume_counts_the_chunks_it_writes(tmp_path):
    rng = np.random.default_rng(7)
    x, weights, expected, clipped = job(rng)
    zarr.create_array(str(tmp_path / "in.zarr"), shape=x.shape, chunks=(10, 11), dtype=x.dtype)[
        :
    ] = x

    def run(**kwargs):
        y = dc.correlate(dc.open(tmp_path / "in.zarr"), weights, mode="nearest")
        return dc.save(y, tmp_path / "out.zarr", progress=False, **kwargs)

    first = run()
    assert first.attrs["distconv"]["clipped"]["samples"] == clipped
    # What an interrupted run leaves: some chunks, complete false, no count recorded.
    record = dict(first.attrs["distconv"])
    del record["clipped"]
    record["complete"] = False
    first.attrs.update({"distconv": record})
    missing = [(0, 0), (2, 1), (3, 2)]
    for index in missing:
        os.remove(tmp_path / "out.zarr" / "c" / "/".join(map(str, index)))
    resumed = run(resume=True)
    np.testing.assert_array_equal(resumed[:], expected)
    exact = np.trunc(ndimage.correlate(x.astype(np.float64), weights, mode="nearest"))
    in_missing = sum(
        int(np.count_nonzero((block < 0) | (block > 255)))
        for block in (exact[10 * i : 10 * i + 10, 11 * j : 11 * j + 11] for i, j in missing)
    )
    record = resumed.attrs["distconv"]["clipped"]
    assert record["samples"] == in_missing and record["chunks_counted"] == len(missing)
    assert record["chunks_total"] == 12
    assert "3 of 12 chunks counted" in describe_clipped(record)
    # Resuming the complete output computes nothing and keeps the count.
    assert run(resume=True).attrs["distconv"]["clipped"] == record


def test_counts_come_back_from_a_local_cluster(tmp_path):
    rng = np.random.default_rng(8)
    x, weights, expected, clipped = job(rng, "int16")
    y = dc.correlate(da.from_array(x, chunks=(16, 16)), weights, mode="nearest")
    with dc.cluster("local", workers=1, threads_per_worker=2, quiet=True) as client:
        assert client is not None
        written = dc.save(y, tmp_path / "out.zarr", progress=False)
    np.testing.assert_array_equal(written[:], expected)
    assert written.attrs["distconv"]["clipped"]["samples"] == clipped


def test_cli_summary_and_info_report_clipped_samples(tmp_path):
    rng = np.random.default_rng(9)
    x, weights, expected, clipped = job(rng)
    zarr.create_array(str(tmp_path / "in.zarr"), shape=x.shape, chunks=(16, 16), dtype=x.dtype)[
        :
    ] = x
    np.save(tmp_path / "w.npy", weights)

    def distconv(*args):
        result = subprocess.run(
            [DISTCONV, *args], capture_output=True, text=True, cwd=tmp_path, timeout=300
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    common = ["in.zarr", "w.npy", "--mode", "nearest", "--cluster", "threads"]
    summary = distconv("correlate", *common, "-o", "out.zarr")
    assert (
        f"; {clipped:,} samples clipped to the uint8 range (pass --dtype float32 to keep them)"
        in summary
    )
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "out.zarr"))[:], expected)
    assert f"clipped:      {clipped:,} samples clipped to the uint8 range" in distconv(
        "info", "out.zarr"
    )
    as_float = distconv("correlate", *common, "-o", "float.zarr", "--dtype", "float32")
    assert "clipped" not in as_float and " float32," in as_float
    assert "clipped" not in distconv("info", "float.zarr")
