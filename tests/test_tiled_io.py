"""Tiles on real stores: results equal SciPy (float64) whatever the stored chunks, shards or
format; outputs keep the input's layout (or the one asked for); resume per chunk or shard."""

from __future__ import annotations

import os

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from scipy import ndimage

import distconv as dc
from distconv.provenance import step_of

# Small tiles: several tiles per array, so halos cross tile borders (and chunk borders inside).
SMALL_TILES = {"distconv.tile_size": "4KiB"}


def store(path, data, chunks, shards=None, zarr_format=3):
    array = zarr.create_array(
        str(path),
        shape=data.shape,
        chunks=chunks,
        shards=shards,
        dtype=data.dtype,
        zarr_format=zarr_format,
    )
    array[:] = data
    return array


CASES = {
    # name: shape, chunks, shards, zarr format, weights shape
    "1-D small chunks": ((1000,), (16,), None, 3, (7,)),
    "2-D small chunks, v2": ((97, 83), (8, 8), None, 2, (5, 3)),
    "2-D irregular last chunks": ((101, 67), (16, 12), None, 3, (5, 5)),
    "2-D chunks thinner than the halo": ((60, 50), (3, 4), None, 3, (11, 9)),
    "2-D sharded": ((128, 96), (8, 8), (32, 24), 3, (5, 5)),
    "2-D sharded, partial edge shards": ((100, 90), (8, 10), (32, 40), 3, (3, 7)),
    "3-D small chunks": ((40, 36, 30), (8, 8, 8), None, 3, (3, 5, 3)),
    "3-D sharded, v3": ((32, 32, 32), (4, 4, 4), (16, 16, 8), 3, (5, 3, 3)),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("mode", ["reflect", "wrap"])
def test_tiled_convolve_equals_scipy_and_keeps_the_stored_layout(tmp_path, name, mode):
    shape, chunks, shards, zarr_format, weights_shape = CASES[name]
    rng = np.random.default_rng(len(name))
    data = rng.random(shape, dtype=np.float32)
    weights = rng.standard_normal(weights_shape)
    store(tmp_path / "in.zarr", data, chunks, shards, zarr_format)
    with dask.config.set(SMALL_TILES):
        x = dc.open(tmp_path / "in.zarr")
        y = dc.convolve(x, weights, mode=mode)
        assert y.npartitions <= x.npartitions  # tiles of one or more stored units
        written = dc.save(y, tmp_path / "out.zarr", progress=False)
    expected = ndimage.convolve(data.astype(np.float64), weights, mode=mode)
    np.testing.assert_allclose(written[:], expected, rtol=0, atol=2e-5 * np.abs(weights).sum())
    assert written.chunks == chunks
    assert written.shards == shards
    assert written.metadata.zarr_format == zarr_format
    assert written.attrs["distconv"]["complete"] is True
    described = dc.info(tmp_path / "out.zarr")
    assert described["chunks_initialized"] == described["chunks_total"]


def test_open_reads_whole_shards_and_given_tiles(tmp_path):
    data = np.random.default_rng(0).random((64, 48), dtype=np.float32)
    store(tmp_path / "s.zarr", data, (8, 8), (32, 24))
    x = dc.open(tmp_path / "s.zarr")
    assert x.chunks == ((32, 32), (24, 24))  # one task per shard
    tiled = dc.open(tmp_path / "s.zarr", chunks=(64, 24))
    assert tiled.npartitions == 2
    np.testing.assert_array_equal(tiled.compute(), data)
    # Blocks the caller chose are kept by the operations (they are not re-planned)...
    y = dc.correlate(tiled, np.ones((3, 3)))
    assert y.chunks == tiled.chunks
    # ...and the output is still written in the stored chunks and shards.
    written = dc.save(y, tmp_path / "o.zarr", progress=False)
    assert (written.chunks, written.shards) == ((8, 8), (32, 24))
    np.testing.assert_allclose(
        written[:], ndimage.correlate(data.astype(float), np.ones((3, 3))), atol=1e-5
    )


def test_save_chunks_and_shards_choose_another_layout(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.random((90, 70), dtype=np.float32)
    store(tmp_path / "in.zarr", data, (10, 10))
    y = dc.correlate(dc.open(tmp_path / "in.zarr"), np.ones((3, 3)) / 9)
    written = dc.save(y, tmp_path / "a.zarr", chunks=(16, 16), shards=(48, 32), progress=False)
    assert (written.chunks, written.shards) == ((16, 16), (48, 32))
    expected = ndimage.uniform_filter(data.astype(np.float64), 3, mode="reflect")
    np.testing.assert_allclose(written[:], expected, atol=1e-5)
    plain = dc.save(y, tmp_path / "b.zarr", chunks=-1, progress=False)
    assert plain.chunks == (90, 70) and plain.shards is None
    sharded_in = store(tmp_path / "sh.zarr", data, (10, 10), (30, 70))
    del sharded_in
    y = dc.correlate(dc.open(tmp_path / "sh.zarr"), np.ones((3, 3)) / 9)
    unsharded = dc.save(y, tmp_path / "c.zarr", shards=False, progress=False)
    assert (unsharded.chunks, unsharded.shards) == ((10, 10), None)
    with pytest.raises(dc.DistconvError, match="format 3"):
        dc.save(y, tmp_path / "d.zarr", shards=(30, 70), zarr_format=2, progress=False)
    assert not (tmp_path / "d.zarr").exists()


def unit_files(path) -> dict[str, int]:
    """Chunk (or shard) objects of a v3 store and their modification times."""
    found = {}
    for folder, _, files in os.walk(os.path.join(path, "c")):
        for name in files:
            full = os.path.join(folder, name)
            found[os.path.relpath(full, path)] = os.stat(full).st_mtime_ns
    return found


@pytest.mark.parametrize("shards", [None, (16, 24)])
def test_resume_writes_only_missing_chunks_or_shards(tmp_path, shards):
    """A tile with some units missing is recomputed; only its missing units are written."""
    rng = np.random.default_rng(2)
    data = rng.random((64, 72), dtype=np.float32)
    store(tmp_path / "in.zarr", data, (8, 8), shards)
    weights = rng.standard_normal((5, 5))

    def job():
        return dc.convolve(dc.open(tmp_path / "in.zarr"), weights, method="direct")

    with dask.config.set({"distconv.tile_size": "16KiB"}):  # tiles of several units
        reference = dc.save(job(), tmp_path / "ref.zarr", progress=False)
        dc.save(job(), tmp_path / "out.zarr", progress=False)
        array = zarr.open_array(str(tmp_path / "out.zarr"), mode="r+")
        array.attrs["distconv"] = {**array.attrs["distconv"], "complete": False}
        files = sorted(unit_files(tmp_path / "out.zarr"))
        removed = files[1::3]
        for key in removed:
            os.remove(tmp_path / "out.zarr" / key)
        before = unit_files(tmp_path / "out.zarr")
        resumed = dc.save(job(), tmp_path / "out.zarr", resume=True, progress=False)
    after = unit_files(tmp_path / "out.zarr")
    assert {k: after[k] for k in before} == before  # units already written were kept as they were
    assert sorted(after) == files
    last = resumed.attrs["distconv"]["resumed"][-1]
    assert last["chunks_already_written"] == len(files) - len(removed)
    assert last["chunks_total"] == len(files)
    assert last["unit"] == ("shard" if shards else "chunk")
    np.testing.assert_array_equal(resumed[:], reference[:])
    assert resumed.attrs["distconv"]["complete"] is True


def test_resume_refuses_other_shards(tmp_path):
    data = np.random.default_rng(3).random((32, 32), dtype=np.float32)
    store(tmp_path / "in.zarr", data, (8, 8))
    y = dc.correlate(dc.open(tmp_path / "in.zarr"), np.ones((3, 3)))
    dc.save(y, tmp_path / "out.zarr", shards=(16, 16), progress=False)
    array = zarr.open_array(str(tmp_path / "out.zarr"), mode="r+")
    array.attrs["distconv"] = {**array.attrs["distconv"], "complete": False}
    with pytest.raises(dc.OutputError, match="shards differ"):
        dc.save(y, tmp_path / "out.zarr", resume=True, progress=False)


def test_plan_api_matches_the_graph(tmp_path):
    data = np.random.default_rng(4).random((300, 200), dtype=np.float32)
    store(tmp_path / "in.zarr", data, (20, 20))
    with dask.config.set(SMALL_TILES):
        plan = dc.plan_convolve(str(tmp_path / "in.zarr"), np.ones((5, 5)), mode="nearest")
        y = dc.convolve(str(tmp_path / "in.zarr"), np.ones((5, 5)), mode="nearest")
    assert y.chunks == plan.tiles.chunks and y.npartitions == plan.tasks
    assert plan.tile_shape == tuple(max(c) for c in y.chunks)
    assert plan.bytes_decoded == data.nbytes
    rows = plan.per_tile()
    assert sum(count for _, count, _, _ in rows) == plan.tasks
    assert all(method in ("direct", "fft", "separable") for _, _, method, _ in rows)
    text = plan.describe()
    assert "convolve plan: 300×200 float32" in text and "method per tile:" in text
    # convolve's own signature, scipy.ndimage's order: output third.
    as_uint8 = dc.plan_correlate(str(tmp_path / "in.zarr"), np.ones((5, 5)), "uint8", "nearest")
    assert as_uint8.correlation.out_dtype == np.uint8 and as_uint8.correlation.mode == "nearest"
    with pytest.raises(TypeError):
        dc.plan_convolve(str(tmp_path / "in.zarr"), np.ones((5, 5)), kernel_size=3)
    # The tile plan goes into the output's provenance (and resume ignores it).
    written = dc.save(y, tmp_path / "out.zarr", progress=False)
    assert written.attrs["distconv"]["steps"][0]["plan"] == plan.tiles.summary()
    array = zarr.open_array(str(tmp_path / "out.zarr"), mode="r+")
    produced = array.attrs["distconv"]
    produced["steps"][0]["plan"]["tasks"] += 1  # as planned for another cluster
    array.attrs["distconv"] = {**produced, "complete": False}
    assert dc.save(y, tmp_path / "out.zarr", resume=True, progress=False).attrs["distconv"][
        "complete"
    ]


def test_multiply_and_map_chunks_run_on_tiles(tmp_path):
    rng = np.random.default_rng(5)
    a = rng.random((120, 100), dtype=np.float32) + 0.5
    b = rng.random((120, 100), dtype=np.float32) + 0.5
    store(tmp_path / "a.zarr", a, (8, 10))
    store(tmp_path / "b.zarr", b, (12, 12), zarr_format=2)  # another grid and format
    with dask.config.set(SMALL_TILES):
        x = dc.open(tmp_path / "a.zarr")
        product = dc.multiply(x, dc.open(tmp_path / "b.zarr"))
        assert product.npartitions < x.npartitions
        written = dc.save(product, tmp_path / "m.zarr", progress=False)
        np.testing.assert_array_equal(written[:], a * b)
        assert written.chunks == (8, 10)  # the first operand's stored chunks

        def box3(block):
            return ndimage.uniform_filter(block.astype(np.float64), 3)

        smoothed = dc.map_chunks(box3, x, depth=1, boundary="nearest")
        assert smoothed.npartitions < x.npartitions
        out = dc.save(smoothed, tmp_path / "s.zarr", progress=False)
    expected = ndimage.uniform_filter(a.astype(np.float64), 3, mode="nearest")
    np.testing.assert_allclose(out[:], expected, atol=1e-6)
    assert out.chunks == (8, 10)


def test_matmul_panels_read_from_stores_are_whole_chunks():
    from distconv.plan.matmul import plan_matmul
    from distconv.plan.tiles import regular_grid

    a_chunks, b_chunks = (300, 200), (300, 200)
    for budget in (2**30, 64 * 2**20):
        plan = plan_matmul(
            (8192, 8192),
            (8192, 8192),
            "f4",
            "f4",
            a_chunks=regular_grid((8192, 8192), a_chunks),
            b_chunks=regular_grid((8192, 8192), b_chunks),
            panels_from_zarr=(True, True),
            resources=dc.plan.Resources(2, 1, budget, "test"),
        )
        k_step = plan.stream_k or plan.block_k
        for block, chunk in ((plan.block_n, 300), (plan.block_m, 200), (k_step, 600)):
            assert block % chunk == 0 or block == 8192, (block, chunk)


def test_cli_dry_run_writes_nothing_and_layout_options(tmp_path):
    import subprocess
    import sys

    distconv = os.path.join(os.path.dirname(sys.executable), "distconv")
    data = np.random.default_rng(6).random((256, 192), dtype=np.float32)
    store(tmp_path / "in.zarr", data, (16, 16))
    np.save(tmp_path / "k.npy", np.ones((5, 5)) / 25)

    def run(*args):
        return subprocess.run(
            [distconv, "convolve", "in.zarr", "k.npy", *args, "--cluster", "threads"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "DASK_DISTCONV__TILE_SIZE": "16KiB"},
        )

    dry = run("--dry-run")
    assert dry.returncode == 0, dry.stderr
    for words in ("tiles:", "tasks:", "bytes decoded:", "halo:", "peak memory/task:"):
        assert words in dry.stdout
    assert "method per tile:" in dry.stdout and "each written whole by exactly one task" in (
        dry.stdout
    )
    assert not (tmp_path / "in.convolved.zarr").exists()
    done = run("-o", "out.zarr", "--chunks", "32,64", "--shards", "64,192", "-q")
    assert done.returncode == 0, done.stderr
    out = zarr.open_array(str(tmp_path / "out.zarr"))
    assert (out.chunks, out.shards) == ((32, 64), (64, 192))
    expected = ndimage.convolve(data.astype(np.float64), np.ones((5, 5)) / 25)
    np.testing.assert_allclose(out[:], expected, atol=1e-5)
    bad = run("-o", "bad.zarr", "--chunks", "32", "--shards", "48")
    assert bad.returncode == 2 and "whole multiples" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad.zarr").exists()


def test_both_read_pipelines_give_identical_results(tmp_path):
    """Inputs read by zarr-python's codec pipeline or by zarrs's (the fast-io extra): the same
    results, bit for bit, and a damaged chunk named the same way."""
    pytest.importorskip("zarrs")
    from distconv.io import open_zarr_array

    rng = np.random.default_rng(7)
    data = rng.random((96, 80), dtype=np.float32)
    store(tmp_path / "v2.zarr", data, (16, 16), zarr_format=2)
    store(tmp_path / "sharded.zarr", data, (8, 8), (32, 40))
    store(tmp_path / "damaged.zarr", data, (16, 16))
    (tmp_path / "damaged.zarr" / "c" / "2" / "1").write_bytes(b"not a zstd frame")
    expected = ndimage.convolve(data.astype(np.float64), np.ones((3, 3)))
    results = {}
    for pipeline, kind in (("zarr", "BatchedCodecPipeline"), ("zarrs", "ZarrsCodecPipeline")):
        with dask.config.set({**SMALL_TILES, "distconv.read_pipeline": pipeline}):
            for name in ("v2.zarr", "sharded.zarr"):
                reader = open_zarr_array(str(tmp_path / name))._async_array.codec_pipeline
                assert type(reader).__name__ == kind
                y = dc.convolve(dc.open(tmp_path / name), np.ones((3, 3)))
                out = dc.save(y, tmp_path / f"{pipeline}-{name}", progress=False)
                np.testing.assert_allclose(out[:], expected, atol=1e-5)
                results[pipeline, name] = out[:]
            y = dc.convolve(dc.open(tmp_path / "damaged.zarr"), np.ones((3, 3)))
            with pytest.raises(dc.DistconvError, match=r"\[32:48, 16:32\] cannot be read"):
                dc.save(y, tmp_path / "never.zarr", progress=False)
            assert not (tmp_path / "never.zarr").exists()
    for name in ("v2.zarr", "sharded.zarr"):
        np.testing.assert_array_equal(results["zarr", name], results["zarrs", name])
    with dask.config.set({"distconv.read_pipeline": "fastest"}):
        with pytest.raises(dc.DistconvError, match="read_pipeline"):
            dc.open(tmp_path / "v2.zarr")


def test_dask_arrays_of_small_chunks_are_merged_into_tiles_large_ones_kept(tmp_path):
    rng = np.random.default_rng(8)
    data = rng.random((200, 150))
    weights = rng.standard_normal((5, 5))
    expected = ndimage.correlate(data, weights)
    with dask.config.set(SMALL_TILES):
        small = dc.correlate(da.from_array(data, chunks=(10, 10)), weights)
        assert small.npartitions < 300  # 10² chunks merged (a tile of 4 KiB holds 4 of them)
        large = dc.correlate(da.from_array(data, chunks=(100, 75)), weights)
        assert large.chunks == ((100, 100), (75, 75))  # already larger than a tile: kept
    for y in (small, large):
        np.testing.assert_allclose(y.compute(), expected, atol=1e-10)
    written = dc.save(small, tmp_path / "o.zarr", progress=False)
    np.testing.assert_allclose(written[:], expected, atol=1e-10)


@pytest.mark.parametrize("layout", ["v2", "v3", "sharded"])
def test_halos_read_from_the_store_equal_the_exchanged_ones(tmp_path, layout):
    """halo_source="store": the same output as exchanging strips, bit for bit, and SciPy's, on
    irregular last chunks of every store layout; a damaged chunk is still named."""
    rng = np.random.default_rng(11)
    data = rng.random((100, 90), dtype=np.float32)
    weights = rng.standard_normal((7, 5))
    chunks, shards, fmt = {"v2": ((16, 16), None, 2), "v3": ((16, 16), None, 3)}.get(
        layout, ((8, 8), (32, 24), 3)
    )
    store(tmp_path / "in.zarr", data, chunks, shards, zarr_format=fmt)
    out = {}
    for source in ("exchange", "store"):
        with dask.config.set({**SMALL_TILES, "distconv.halo_source": source}):
            y = dc.convolve(dc.open(tmp_path / "in.zarr"), weights, mode="mirror")
            assert step_of(y)["plan"]["halo_source"] == source
            out[source] = dc.save(y, tmp_path / f"{source}.zarr", progress=False)[:]
    np.testing.assert_array_equal(out["store"], out["exchange"])
    expected = ndimage.convolve(data.astype(np.float64), weights, mode="mirror")
    np.testing.assert_allclose(out["store"], expected, atol=1e-5)
    if layout == "v3":
        (tmp_path / "in.zarr" / "c" / "2" / "1").write_bytes(b"not a zstd frame")
        with dask.config.set({**SMALL_TILES, "distconv.halo_source": "store"}):
            y = dc.convolve(dc.open(tmp_path / "in.zarr"), weights)
            with pytest.raises(dc.DistconvError, match=r"\[32:48, 16:32\] cannot be read"):
                dc.save(y, tmp_path / "never.zarr", progress=False)
        assert not (tmp_path / "never.zarr").exists()


def test_dry_run_says_where_halos_come_from(tmp_path):
    store(tmp_path / "in.zarr", np.zeros((64, 64), np.float32) + 1, (16, 16))
    np.save(tmp_path / "k.npy", np.ones((3, 3)))
    from click.testing import CliRunner

    from distconv.cli import cli

    for source, words in (("store", "read again from the store"), ("exchange", "exchanged")):
        config = {"distconv.halo_source": source, "distconv.tile_size": "2KiB"}
        with dask.config.set(config):
            result = CliRunner().invoke(
                cli, ["convolve", str(tmp_path / "in.zarr"), str(tmp_path / "k.npy"), "--dry-run"]
            )
        assert result.exit_code == 0, result.output
        assert words in result.output


def test_map_chunks_halos_read_from_the_store(tmp_path):
    """map_chunks on a store with halo_source="store": the same blocks as an exchange, for two
    operands read from stores, and ndimage's answer."""
    rng = np.random.default_rng(12)
    a, b = rng.random((90, 70), dtype=np.float32), rng.random((90, 70), dtype=np.float32)
    store(tmp_path / "a.zarr", a, (10, 14))
    store(tmp_path / "b.zarr", b, (10, 14))

    def blur_sum(x, y):
        return ndimage.uniform_filter(x, 5, mode="constant") + ndimage.uniform_filter(y, 5)

    out = {}
    for source in ("exchange", "store"):
        with dask.config.set({**SMALL_TILES, "distconv.halo_source": source}):
            x, y = dc.open(tmp_path / "a.zarr"), dc.open(tmp_path / "b.zarr")
            z = dc.map_chunks(blur_sum, x, y, depth=2, boundary="reflect", dtype=np.float32)
            assert step_of(z)["operation"] == "map_chunks"
            out[source] = z.compute()
    np.testing.assert_array_equal(out["store"], out["exchange"])
    whole = ndimage.uniform_filter(a, 5, mode="reflect") + ndimage.uniform_filter(b, 5)
    np.testing.assert_allclose(out["store"], whole, atol=1e-6)
