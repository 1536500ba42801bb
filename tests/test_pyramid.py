"""Pyramid tiles: every stored chunk of every level has exactly one writer, and the per-tile
downsampling equals downsampling the whole level (independent NumPy reference)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from distconv.save.pyramid import downsample, level_shapes, tiling_for, write_tile
from tests._images import mean_halved


def _writers(shape, chunks, levels, halved):
    """For each level, how many tiles write each stored chunk, and whether every tile's region
    starts on a chunk boundary."""
    tiling = tiling_for(shape, chunks, 4, levels, halved)
    shapes = level_shapes(shape, halved, levels)
    counts = [
        np.zeros([math.ceil(n / c) for n, c in zip(s, tiling.level_chunks(s))], int) for s in shapes
    ]
    starts = [range(0, n, t) for n, t in zip(shape, tiling.tile)]
    aligned = True
    for corner in itertools.product(*starts):
        for k, level_shape in enumerate(shapes):
            chunk = tiling.level_chunks(level_shape)
            lo = [c // 2**k if i in halved else c for i, c in enumerate(corner)]
            hi = [
                min(n, math.ceil(min(c + t, full) / 2**k)) if i in halved else min(c + t, full)
                for i, (c, t, full, n) in enumerate(zip(corner, tiling.tile, shape, level_shape))
            ]
            aligned &= all(a % c == 0 for a, c in zip(lo, chunk))
            index = tuple(slice(a // c, math.ceil(b / c)) for a, b, c in zip(lo, hi, chunk))
            counts[k][index] += 1
    return counts, aligned


@pytest.mark.parametrize(
    "shape, chunks, levels, halved",
    [
        ((1000, 700), (64, 64), 4, (0, 1)),
        ((37, 300, 257), (5, 32, 16), 3, (1, 2)),
        ((2, 3, 150, 130), (1, 3, 32, 32), 4, (2, 3)),
        ((100, 100), (128, 128), 3, (0, 1)),
        ((513, 90), (16, 90), 5, (0,)),
    ],
)
def test_every_chunk_of_every_level_has_one_writer(shape, chunks, levels, halved):
    counts, aligned = _writers(shape, chunks, levels, halved)
    assert aligned
    for k, count in enumerate(counts):
        assert count.min() == 1 and count.max() == 1, f"level {k}"


def test_large_tiles_are_thinned_along_the_axes_not_halved():
    tiling = tiling_for((64, 4096, 4096), (64, 256, 256), 4, levels=4, halved=(1, 2))
    assert tiling.tile[1:] == (2048, 2048)
    assert math.prod(tiling.tile) * 4 <= 256 * 2**20
    assert tiling.chunks[0] == tiling.tile[0] < 64


def test_tile_downsampling_equals_the_whole_level(tmp_path):
    import zarr

    rng = np.random.default_rng(11)
    data = rng.random((75, 61)).astype(np.float32)
    tiling = tiling_for(data.shape, (8, 8), 4, levels=3, halved=(0, 1))
    shapes = level_shapes(data.shape, (0, 1), 3)
    targets = [
        zarr.create_array(
            str(tmp_path / f"{k}.zarr"), shape=s, chunks=tiling.level_chunks(s), dtype="f4"
        )
        for k, s in enumerate(shapes)
    ]
    for corner in itertools.product(*(range(0, n, t) for n, t in zip(data.shape, tiling.tile))):
        region = tuple(slice(c, c + t) for c, t in zip(corner, tiling.tile))
        block = data[region]
        location = [(c, c + n) for c, n in zip(corner, block.shape)]
        write_tile(block, targets, tiling, block_info={0: {"array-location": location}})
    expected = data
    for k in range(3):
        np.testing.assert_array_equal(targets[k][:], expected)
        expected = mean_halved(expected, (0, 1)).astype(np.float32)


def test_downsample_methods_and_integer_rounding():
    values = np.array([[1, 2, 7], [4, 6, 9], [10, 11, 12]], dtype=np.uint16)
    np.testing.assert_array_equal(
        downsample(values, (0, 1), "mean", np.uint16), [[3, 8], [10, 12]]
    )  # (1+2+4+6)/4 = 3.25 → 3; (7+9)/2 = 8; (10+11)/2 = 10.5 → 10 (to even); 12
    np.testing.assert_array_equal(
        downsample(values, (0, 1), "nearest", np.uint16), [[1, 7], [10, 12]]
    )
    assert downsample(values, (1,), "mean", np.float32).dtype == np.float32
