"""Haloed blocks (distconv.ops.halo) against numpy.pad of the whole array."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from distconv.ops.halo import exchange_halos, pad_in_place

PAD_MODES = ["symmetric", "reflect", "edge", "wrap", "constant"]


def expected_block(a: np.ndarray, merged: da.Array, index, depth, mode, cval):
    """The block numpy.pad of the whole array gives (None: the unpadded neighbourhood)."""
    offsets = [np.cumsum((0,) + c)[i] for c, i in zip(merged.chunks, index)]
    sizes = [c[i] for c, i in zip(merged.chunks, index)]
    if mode is None:
        region = tuple(
            slice(max(o - d, 0), min(o + s + d, n))
            for o, s, d, n in zip(offsets, sizes, depth, a.shape)
        )
        return a[region]
    extra = {"constant_values": cval} if mode == "constant" else {}
    padded = np.pad(a, [(d, d) for d in depth], mode=mode, **extra)
    return padded[tuple(slice(o, o + s + 2 * d) for o, s, d in zip(offsets, sizes, depth))]


@pytest.mark.parametrize("seed", range(40))
def test_every_block_equals_numpy_pad_of_the_whole_array(seed):
    rng = np.random.default_rng(seed)
    ndim = int(rng.integers(1, 4))
    shape = tuple(int(s) for s in rng.integers(1, 15, ndim))
    chunks = tuple(int(rng.integers(1, s + 1)) for s in shape)
    depth = tuple(int(rng.integers(0, 5)) for _ in shape)
    mode = [None, *PAD_MODES][seed % 6]
    a = rng.standard_normal(shape)
    merged, haloed = exchange_halos(
        da.from_array(a, chunks=chunks), depth, mode, 2.5, dtype=np.float32
    )
    assert haloed.dtype == np.float32 and haloed.numblocks == merged.numblocks
    assert all(min(c) >= d for c, d in zip(merged.chunks, depth) if len(c) > 1)
    for index in np.ndindex(*haloed.numblocks):
        got = haloed.blocks[index].compute(scheduler="sync")
        want = expected_block(a, merged, index, depth, mode, 2.5).astype(np.float32)
        np.testing.assert_array_equal(got, want, err_msg=f"block {index}")


def test_one_cut_task_per_chunk_and_one_assembly_per_block():
    x = da.from_array(np.arange(64.0).reshape(8, 8), chunks=2)
    _, haloed = exchange_halos(x, (1, 1), "symmetric")
    names = [key[0].rsplit("-", 1)[0] for key in haloed.dask.layers[haloed.name]]
    assert sorted(names.count(n) for n in set(names)) == [16, 16]
    assert set(names) == {"halo", "halo-cut"}


def test_no_depth_returns_the_input_cast():
    x = da.from_array(np.arange(12).reshape(3, 4), chunks=2)
    merged, haloed = exchange_halos(x, (0, 0), "symmetric", dtype=np.float64)
    assert merged is x and haloed.dtype == np.float64
    np.testing.assert_array_equal(haloed.compute(), np.arange(12.0).reshape(3, 4))


@pytest.mark.parametrize("mode", PAD_MODES)
def test_pad_in_place_matches_numpy_pad(mode):
    rng = np.random.default_rng(3)
    inside = rng.standard_normal((6, 7, 5))
    pad = [(2, 0), (3, 1), (0, 0)]
    buffer = np.full([s + b + e for s, (b, e) in zip(inside.shape, pad)], np.nan)
    buffer[2:8, 3:10, :] = inside
    extra = {"constant_values": -1.5} if mode == "constant" else {}
    np.testing.assert_array_equal(
        pad_in_place(buffer, pad, mode, -1.5), np.pad(inside, pad, mode=mode, **extra)
    )


def test_pad_in_place_falls_back_to_numpy_pad_when_too_short_to_reflect():
    inside = np.array([1.0, 2.0])
    buffer = np.concatenate([np.zeros(5), inside, np.zeros(5)])
    np.testing.assert_array_equal(
        pad_in_place(buffer, [(5, 5)], "reflect"), np.pad(inside, 5, mode="reflect")
    )


# --- strips read again from the store (halo_source="store") ----------------------------------


@pytest.mark.parametrize("seed", range(24))
def test_strips_read_from_the_store_equal_numpy_pad(tmp_path, seed):
    """Blocks whose strips are read from a real Zarr store (irregular last chunks, chunks
    thinner than the halo, 1-3 axes, every pad mode) equal numpy.pad of the whole array, and
    no strip task depends on a decoded block."""
    import zarr

    import distconv as dc
    from distconv.reading import region_reader

    rng = np.random.default_rng(100 + seed)
    ndim = int(rng.integers(1, 4))
    shape = tuple(int(s) for s in rng.integers(4, 30 if ndim < 3 else 14, ndim))
    stored = tuple(int(rng.integers(1, s + 1)) for s in shape)
    depth = tuple(int(rng.integers(0, 5)) for _ in shape)
    mode = [None, *PAD_MODES][seed % 6]
    a = rng.standard_normal(shape).astype(np.float32)
    zarr.create_array(str(tmp_path / "a.zarr"), data=a, chunks=stored)
    groups = tuple(int(rng.integers(1, 4)) for _ in shape)  # tiles of several stored chunks
    x = dc.open(tmp_path / "a.zarr", chunks=tuple(s * g for s, g in zip(stored, groups)))
    merged, haloed = exchange_halos(x, depth, mode, 2.5, np.float64, region_reader(x))
    graph = dict(haloed.__dask_graph__())
    cuts = [key for key in graph if key[0].startswith("halo-cut")]
    dependencies = haloed.dask.dependencies[haloed.name]
    assert all(merged.name not in str(graph[key]) for key in cuts)
    assert merged.name in dependencies  # the block's own units still come from its tile read
    for index in np.ndindex(*haloed.numblocks):
        got = haloed.blocks[index].compute(scheduler="sync")
        want = expected_block(a.astype(np.float64), merged, index, depth, mode, 2.5)
        np.testing.assert_array_equal(got, want, err_msg=f"block {index}")


def test_strip_reads_decode_faces_or_the_whole_block():
    """The reads of one block's strips: face bands when they touch fewer stored units than the
    block, else the block once (never a unit read for each strip that touches it)."""
    from distconv.ops.halo import strip_reads

    def regions(size, d):  # the 8 strips a 2-D block sends, relative to it
        cuts = {-1: slice(0, d), 0: slice(None), 1: slice(size - d, size)}
        return [(cuts[i], cuts[j]) for i in (-1, 0, 1) for j in (-1, 0, 1) if i or j]

    # One stored unit per block: read it once.
    reads, picks = strip_reads(regions(64, 2), (64, 128), (64, 64), (2, 2), (64, 64))
    assert reads == ((slice(64, 128), slice(128, 192)),)
    assert picks[0] == (0, (slice(0, 2), slice(0, 2)))
    # 8x8 units per block, 1-sample halos: the four face bands, 28 units of 64 (corners twice).
    reads, picks = strip_reads(regions(64, 1), (0, 0), (64, 64), (1, 1), (8, 8))
    assert len(reads) == 4 and all(index < 4 for index, _ in picks)
    assert sorted((r[0].stop - r[0].start) * (r[1].stop - r[1].start) for r in reads) == [64] * 4
