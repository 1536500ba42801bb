"""Plans for any size: at most ``distconv.max_tasks`` tiles, a dry run from arithmetic, and a
graph that builds in seconds, for 16.7 million stored chunks (1048576² float32 in 256² chunks,
4 TiB, metadata only); and grown tiles that compute what scipy.ndimage computes."""

from __future__ import annotations

import math
import re
import time

import dask
import numpy as np
import pytest
import scipy.ndimage as ndi
import zarr
from conftest import distconv

import distconv as dc
from distconv.clusters.resources import Resources
from distconv.plan.tiles import plan_tiles

TWO_THREADS = Resources(2, 1, 2**30, "test: 2 threads, 1 GiB per task")
CAP = 100_000
# Generous bounds: CI machines vary; benchmarks/RESULTS.md holds the targets (5 s, 15 s).
DRY_RUN_SECONDS = 20.0
GRAPH_SECONDS = 90.0


@pytest.fixture(scope="module")
def huge(tmp_path_factory):
    """1048576² float32 in 256² chunks: 16,777,216 stored chunks, none written."""
    folder = tmp_path_factory.mktemp("huge")
    path = folder / "huge.zarr"
    zarr.create_array(str(path), shape=(1048576,) * 2, chunks=(256,) * 2, dtype="float32")
    np.save(folder / "k.npy", np.ones((5, 5), np.float32) / 25)
    return path


def test_dry_run_of_16_7_million_stored_chunks_is_arithmetic(huge):
    start = time.perf_counter()
    plan = dc.plan_convolve(dc.open(huge), np.ones((5, 5)) / 25, resources=TWO_THREADS)
    text = plan.describe()
    seconds = time.perf_counter() - start
    assert plan.tiles.units == 16_777_216
    assert plan.tasks <= CAP, text
    assert "cap" in plan.tiles.reason and f"{plan.tasks:,} tasks" in text, text
    assert plan.peak_task_bytes <= TWO_THREADS.memory_budget
    assert sum(count for _, count, _, _ in plan.per_tile()) == plan.tasks
    assert seconds < DRY_RUN_SECONDS, f"{seconds:.1f} s"


@pytest.mark.parametrize("cluster", [["--cluster", "threads"], []])
def test_cli_dry_run_of_16_7_million_stored_chunks(huge, cluster):
    """On threads, and on the default (auto: a 4 TiB job goes to the local cluster), whose
    workers are planned for from the machine without starting them."""
    start = time.perf_counter()
    out = huge.parent / "out.zarr"
    done = distconv("convolve", huge, huge.parent / "k.npy", "-o", out, "--dry-run", *cluster)
    seconds = time.perf_counter() - start
    if not cluster:
        assert "the local cluster's memory_limit per thread" in done.stdout
        assert "(planned, not started)" in done.stdout
    assert done.returncode == 0, done.stderr
    tasks = int(re.search(r"tasks: +([\d,]+) tile", done.stdout).group(1).replace(",", ""))
    assert tasks <= CAP, done.stdout
    assert "16,777,216 chunk(s)" in done.stdout and "cap of distconv.max_tasks" in done.stdout
    assert "output:            " in done.stdout and "chunks 256×256" in done.stdout
    assert not out.exists()
    assert seconds < DRY_RUN_SECONDS, f"{seconds:.1f} s"


def test_graph_of_16_7_million_stored_chunks_builds_with_at_most_the_cap(huge):
    start = time.perf_counter()
    y = dc.convolve(dc.open(huge), np.ones((5, 5)) / 25)
    seconds = time.perf_counter() - start
    assert y.shape == (1048576,) * 2
    assert y.npartitions <= CAP
    assert seconds < GRAPH_SECONDS, f"{seconds:.1f} s"


@pytest.mark.parametrize(
    "shape, chunks, weights, mode, halo_source",
    [
        ((200, 300), (16, 16), (5, 3), "reflect", "exchange"),
        ((200, 300), (16, 16), (4, 5), "wrap", "store"),
        ((40, 50, 60), (8, 8, 8), (3, 3, 3), "nearest", "auto"),
    ],
)
def test_a_tiny_cap_grows_tiles_that_compute_right(
    tmp_path, shape, chunks, weights, mode, halo_source
):
    rng = np.random.default_rng(7)
    data = rng.standard_normal(shape)
    w = rng.standard_normal(weights)
    zarr.create_array(str(tmp_path / "in.zarr"), data=data, chunks=chunks)
    settings = {
        "distconv.max_tasks": 16,
        "distconv.tile_size": "1KiB",  # the target alone would keep one chunk per tile
        "distconv.halo_source": halo_source,
    }
    with dask.config.set(settings):
        x = dc.open(tmp_path / "in.zarr")
        plan = dc.plan_convolve(x, w, mode=mode)
        y = dc.convolve(x, w, mode=mode)
        got = y.compute(scheduler="threads")
    units = math.prod(-(-n // c) for n, c in zip(shape, chunks))
    assert units > 16 and plan.tasks <= 16 and y.npartitions == plan.tasks
    assert "16 cap" in plan.tiles.reason
    np.testing.assert_allclose(got, ndi.convolve(data, w, mode=mode), rtol=1e-10, atol=1e-10)


def test_the_memory_budget_wins_over_the_cap_and_the_plan_says_so():
    tight = Resources(2, 1, 8 * 2**20, "test: 8 MiB")
    plan = plan_tiles((8192, 8192), "f4", (64, 64), depth=(2, 2), resources=tight, task_cap=10)
    assert plan.peak_task_bytes <= tight.memory_budget
    assert plan.tasks > 10
    assert "over the 10 cap" in plan.reason and "memory budget" in plan.reason
    assert "over the 10 cap" in plan.describe()


def test_the_cap_comes_from_config_and_is_checked():
    plan = plan_tiles((8192, 8192), "f4", (64, 64), resources=TWO_THREADS)
    assert plan.tasks == 16 and "target" in plan.reason  # 16 MiB: 2048² tiles
    with dask.config.set({"distconv.max_tasks": 3}):
        capped = plan_tiles((8192, 8192), "f4", (64, 64), resources=TWO_THREADS)
    assert capped.tasks <= 3 and "cap" in capped.reason
    with dask.config.set({"distconv.max_tasks": 0}):
        with pytest.raises(dc.DistconvError, match="max_tasks must be a positive integer"):
            plan_tiles((64, 64), "f4", (16, 16), resources=TWO_THREADS)
