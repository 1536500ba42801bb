"""The tile planner and the write graph: tiles of whole stored chunks, sized for the machine;
never two writers of one chunk or shard; graphs that stay small for 65,536 stored chunks."""

from __future__ import annotations

import math
import time

import dask
import dask.array as da
import numpy as np
import pytest
import zarr

import distconv as dc
from distconv.clusters.resources import Resources
from distconv.plan.tiles import TILES_PER_THREAD, plan_tiles, regular_grid
from distconv.save.layout import Layout, TileWriter, aligned_chunks, output_layout, write_tiles

TWO_THREADS = Resources(2, 1, 2**30, "test: 2 threads, 1 GiB per task")


def boundaries(chunks) -> list[set[int]]:
    return [set(np.cumsum(axis)[:-1].tolist()) for axis in chunks]


def assert_whole_units(plan):
    """Every tile boundary is a unit boundary (tiles are blocks of whole stored chunks)."""
    for tiles, units in zip(boundaries(plan.chunks), boundaries(plan.grid)):
        assert tiles <= units
    assert tuple(sum(a) for a in plan.chunks) == plan.shape


@pytest.mark.parametrize(
    "shape, unit, dtype, depth, tile",
    [
        ((16384, 16384), (256, 256), "float32", (2, 2), (2048, 2048)),  # 16 MiB target
        ((512, 512, 512), (64, 64, 64), "uint16", (2, 2, 2), (128, 256, 256)),
        ((32768, 32768), (128, 128), "float32", (2, 2), (2048, 2048)),
        ((8192, 8192), (2048, 2048), "float32", (63, 63), (2048, 2048)),  # large: as they are
    ],
)
def test_tiles_reach_the_target_from_small_chunks(shape, unit, dtype, depth, tile):
    plan = plan_tiles(shape, dtype, unit, depth=depth, resources=TWO_THREADS)
    assert plan.tile_shape == tile
    assert_whole_units(plan)
    assert math.prod(tile) * np.dtype(dtype).itemsize <= max(
        plan.target_bytes, math.prod(unit) * np.dtype(dtype).itemsize
    )
    # Each unit once, and halo strips again when they are read from the store (wide images).
    again = {"exchange": 1.0, "store": plan.strip_read_factor}[plan.halo_source]
    assert plan.bytes_decoded == int(again * math.prod(shape) * np.dtype(dtype).itemsize)


def test_enough_tiles_for_every_thread_and_never_smaller_than_a_unit():
    small = plan_tiles((512, 512), "float32", (32, 32), resources=TWO_THREADS)
    assert small.tasks >= TILES_PER_THREAD * 2 and small.tile_shape == (256, 256)
    assert "thread" in small.reason
    many = plan_tiles((4096, 4096), "float32", (256, 256), resources=Resources(64, 1, 2**30, "x"))
    assert math.prod(many.shape) / math.prod(many.tile_shape) >= TILES_PER_THREAD * 64
    assert_whole_units(many)
    one = plan_tiles((100, 100), "float32", (100, 100), resources=TWO_THREADS)
    assert one.tile_shape == (100, 100) and one.tasks == 1


def test_a_task_fits_its_memory_budget():
    tight = Resources(2, 1, 64 * 2**20, "test: 64 MiB")
    plan = plan_tiles(
        (8192, 8192),
        "float32",
        (256, 256),
        depth=(63, 63),
        method_for=lambda tile: "fft",
        resources=tight,
    )
    assert plan.peak_task_bytes <= tight.memory_budget
    assert "memory" in plan.reason
    roomy = plan_tiles((8192, 8192), "float32", (256, 256), depth=(63, 63), resources=TWO_THREADS)
    assert math.prod(roomy.tile_shape) > math.prod(plan.tile_shape)


def test_tile_size_from_config_and_irregular_dask_chunks():
    with dask.config.set({"distconv.tile_size": "64KiB"}):
        plan = plan_tiles((1000, 1000), "float32", (100, 100), resources=TWO_THREADS)
    assert plan.tile_shape == (100, 100)  # 40 kB chunks: a second one would pass 64 KiB
    irregular = ((3, 9, 2, 9, 40, 40, 40), (19, 19))
    plan = plan_tiles((143, 38), "float64", irregular, unit_kind="dask chunk", from_store=False)
    assert_whole_units(plan)
    with pytest.raises(dc.DistconvError, match="tile size"):
        plan_tiles((10,), "f4", (5,), resources=TWO_THREADS, target_bytes="lots")


def test_halo_strip_read_factor_and_describe():
    plan = plan_tiles((4096, 4096), "float32", (256, 256), depth=(2, 2), resources=TWO_THREADS)
    assert plan.tile_shape == (2048, 2048)
    # Strips read from the store decode each 8x8-chunk tile's 4 faces of 8 chunks again.
    assert plan.strip_read_factor == pytest.approx(1 + 32 / 64)
    text = plan.describe()
    for words in ("tiles:", "tasks:", "bytes decoded:", "halo:", "peak memory/task:"):
        assert words in text
    assert regular_grid((10, 7), (4, 7)) == ((4, 4, 2), (7,))
    one_chunk = plan_tiles((8192, 8192), "f4", (2048, 2048), depth=(4, 4), resources=TWO_THREADS)
    assert one_chunk.units_per_tile == 1 and one_chunk.strip_read_factor == 2.0  # read twice


@pytest.mark.parametrize(
    ("side", "threads", "expected"),
    [(8192, 2, "store"), (12288, 8, "exchange"), (16384, 2, "store"), (32768, 2, "store")],
)
def test_wide_images_read_halos_from_the_store(side, threads, expected):
    """auto, one-chunk tiles (strips would be decoded twice). 8192²: a slab of 4 of 16 tiles
    leaves an exchange little to overlap. 12288² on 8 threads: 6 tiles of 16 MiB (96 MiB) are
    within half of what 8 running tasks hold, so exchange. 16384² and 32768² on 2 threads: 8 and
    16 tiles are more than half of what 2 running tasks hold (about 80 MiB), so memory stays
    flat."""
    resources = Resources(threads, 1, 2**30, f"test: {threads} threads")
    plan = plan_tiles(
        (side, side),
        "f4",
        (2048, 2048),
        depth=(4, 4),
        method_for=lambda tile: "direct",
        resources=resources,
    )
    assert plan.exchange_front_bytes == (side // 2048) * 2048 * 2048 * 4
    assert plan.halo_source == expected
    assert ("read again from the store" in plan.describe()) == (expected == "store")
    assert plan.summary()["halo_source"] == expected


def test_tiles_of_many_small_chunks_read_halos_from_the_store():
    """auto: strips of 8x8-chunk tiles decode 1.5x the input, as cheap as an exchange."""
    small = plan_tiles((4096, 4096), "f4", (256, 256), depth=(2, 2), resources=TWO_THREADS)
    assert small.strip_read_factor == 1.5 and small.halo_source == "store"
    many = Resources(16, 1, 2**30, "test: 16 threads")
    volume = plan_tiles((1024,) * 3, "u2", (64,) * 3, depth=(2,) * 3, resources=many)
    assert volume.tasks == 128 and volume.strip_read_factor == 2.0  # 8x4x4 tiles of 16 MiB
    assert volume.halo_source == "exchange"  # a slab (256 MiB) within what 16 tasks hold
    small = plan_tiles((512,) * 3, "u2", (64,) * 3, depth=(2,) * 3, resources=TWO_THREADS)
    assert small.tasks == 16 and small.halo_source == "store"  # 4x2x2: a slab is 4 of 16


def test_halo_source_config():
    kwargs = {"depth": (1, 1), "resources": TWO_THREADS}
    with dask.config.set({"distconv.halo_source": "store"}):
        assert plan_tiles((64, 64), "f4", (16, 16), **kwargs).halo_source == "store"
        # Only tiles read from a store can read their strips again.
        assert plan_tiles((64, 64), "f4", (16, 16), from_store=False, **kwargs).halo_source == (
            "exchange"
        )
        assert plan_tiles((64, 64), "f4", (16, 16), resources=TWO_THREADS).halo_source == (
            "exchange"  # no halo
        )
    with dask.config.set({"distconv.halo_source": "exchange"}):
        wide = plan_tiles((32768, 32768), "f4", (2048, 2048), **kwargs)
        assert wide.halo_source == "exchange"
    with dask.config.set({"distconv.halo_source": "sideways"}):
        with pytest.raises(dc.DistconvError, match="halo_source must be one of"):
            plan_tiles((64, 64), "f4", (16, 16), **kwargs)


def test_planning_and_graph_for_65536_stored_chunks_is_fast(tmp_path):
    """32768² float32 in 128² chunks: metadata only, nothing computed."""
    import distributed  # noqa: F401 - imported by the cluster code anyway; not what is timed

    zarr.create_array(str(tmp_path / "in.zarr"), shape=(32768,) * 2, chunks=(128,) * 2, dtype="f4")
    start = time.perf_counter()
    x = dc.open(tmp_path / "in.zarr")
    y = dc.convolve(x, np.ones((5, 5)) / 25)
    layout = output_layout(y)
    target = zarr.create_array(
        str(tmp_path / "out.zarr"), shape=y.shape, chunks=layout.chunks, dtype=y.dtype
    )
    writes, _ = write_tiles(y, target, layout)
    graph = writes.__dask_graph__()
    keys = len(graph)  # builds every layer's tasks
    seconds = time.perf_counter() - start
    tiles = math.prod(writes.numblocks)
    assert layout == Layout((128, 128))
    assert seconds <= 2.0, f"{seconds:.2f} s"
    assert 16 <= tiles <= 1024 and keys <= 6 * tiles, (tiles, keys)
    assert_writers_are_disjoint(writes, layout, y.shape)


def writers(markers) -> list[TileWriter]:
    found = []
    for task in dict(markers.__dask_graph__()).values():
        function = getattr(task, "func", None) or (task[0] if isinstance(task, tuple) else None)
        if isinstance(function, TileWriter):
            found.append(function)
    return found


def assert_writers_are_disjoint(markers, layout, shape, done=frozenset()):
    """No unit (chunk or shard) is written by two tasks; every missing one by exactly one."""
    seen: dict[tuple[int, ...], int] = {}
    for number, writer in enumerate(writers(markers)):
        for unit in writer.units():
            assert unit not in seen, f"unit {unit} written by tasks {seen[unit]} and {number}"
            seen[unit] = number
    grid = [-(-n // u) for n, u in zip(shape, layout.unit)]
    assert set(seen) | set(done) == set(np.ndindex(*grid))
    assert not set(seen) & set(done)


@pytest.mark.parametrize("shards", [None, (24, 40)])
def test_no_two_tasks_write_one_chunk_or_shard(tmp_path, shards):
    """Blocks that straddle the output's units are regrouped so each unit has one writer,
    also when resuming with some units already written."""
    x = da.from_array(np.arange(70 * 45.0).reshape(70, 45), chunks=((3, 9, 30, 28), (10, 35)))
    layout = output_layout(x, chunks=(12, 20), shards=shards)
    assert layout.unit == (shards or (12, 20))
    aligned = x.rechunk(aligned_chunks(x.chunks, layout.unit))
    unit_starts = [set(range(0, n, u)) for n, u in zip(x.shape, layout.unit)]
    for tiles, units in zip(boundaries(aligned.chunks), unit_starts):
        assert tiles <= units
    target = zarr.create_array(
        str(tmp_path / "o.zarr"),
        shape=x.shape,
        chunks=layout.chunks,
        shards=layout.shards,
        dtype=x.dtype,
    )
    markers, skip = write_tiles(aligned, target, layout)
    assert not skip
    assert_writers_are_disjoint(markers, layout, x.shape)
    done = {(0, 0), (1, 1), (2, 0)}
    resumed, skip = write_tiles(aligned, target, layout, done)
    assert_writers_are_disjoint(resumed, layout, x.shape, done)
    dask.compute(resumed)
    written = target[:]
    for index in np.ndindex(*[-(-n // u) for n, u in zip(x.shape, layout.unit)]):
        region = tuple(slice(i * u, (i + 1) * u) for i, u in zip(index, layout.unit))
        expected = 0 if index in done else x.compute()[region]
        np.testing.assert_array_equal(written[region], expected)


def test_layout_options_are_checked():
    x = da.zeros((100, 60), chunks=10)
    assert output_layout(x, chunks="20,30") == Layout((20, 30))
    assert output_layout(x, chunks=-1) == Layout((100, 60))
    assert output_layout(x, chunks=25, shards=(50, 50)) == Layout((25, 25), (50, 50))
    with pytest.raises(dc.DistconvError, match="whole multiples"):
        output_layout(x, chunks=20, shards=30)
    with pytest.raises(dc.DistconvError, match="format 3"):
        output_layout(x, chunks=20, shards=40, zarr_format=2)
    with pytest.raises(dc.DistconvError, match="3 values"):
        output_layout(x, chunks=(1, 2, 3))
