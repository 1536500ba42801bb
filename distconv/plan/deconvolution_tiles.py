"""Tiles for deconvolution tasks: whole stored chunks merged, priced, and fitted to memory.

A tile is a task's share of the image plus its halo. Bigger tiles waste less on halos but run
fewer tasks at once and need more memory; :class:`TileSearch` tries merges of 1, 2, 4... stored
chunks per axis and keeps the one the cost model says finishes soonest within the memory per
task. (The general tile planner can take this over: only :meth:`TileSearch.best` is asked.)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from distconv.clusters.resources import Resources
from distconv.ops.halo import merge_small_chunks
from distconv.plan.correlation import CorrelationPlan, method_costs

__all__ = [
    "COST_SAMPLES",
    "ELEMENTWISE_SECONDS",
    "MAX_COMBINATIONS",
    "MAX_MERGE",
    "READ_SECONDS_PER_BYTE",
    "TILE_ARRAYS_RL",
    "TILE_ARRAYS_WIENER",
    "WRITE_SECONDS_PER_BYTE",
    "Layout",
    "TileSearch",
    "rl_tile_seconds",
]

# Seconds per voxel and iteration for the element-wise work (ratio, product, slicing copies),
# and per byte read from / written to a compressed Zarr store, on one core; rough figures from
# the 2-core CI machine (the ratios between strategies matter, not the absolute values).
ELEMENTWISE_SECONDS = 4e-9
READ_SECONDS_PER_BYTE = 4e-9
WRITE_SECONDS_PER_BYTE = 6e-9
# Arrays of a tile's size alive at once in a task: image, estimate, blur, ratio, a padded copy
# and the engine's FFT buffers (complex, half length, about two real arrays' worth).
TILE_ARRAYS_RL = 8
TILE_ARRAYS_WIENER = 6
# Tiles merge this many stored chunks per axis at most (the tile planner may choose more), and
# at most this many layouts are priced before one factor serves every axis.
MAX_MERGE = 64
MAX_COMBINATIONS = 512
# Iterations of a shrinking tile priced one by one (the others are interpolated).
COST_SAMPLES = 6


@dataclass(frozen=True)
class Layout:
    """The tiles tasks compute: chunks, halo per axis, and whether the halo gives exact pixels."""

    chunks: tuple[tuple[int, ...], ...]
    halo: tuple[int, ...]
    exact: bool
    seconds: float  # estimated time to finish on the cluster's threads
    peak_bytes: int  # the largest task's working memory

    @property
    def tasks(self) -> int:
        return math.prod(len(c) for c in self.chunks)


class TileSearch:
    """Tiles made of whole stored chunks: the merge that finishes soonest within memory."""

    def __init__(self, shape, chunks, periodic: bool, resources: Resources, itemsize: int):
        self.shape = tuple(shape)
        self.chunks = tuple(tuple(int(c) for c in axis) for axis in chunks)
        self.periodic = periodic
        self.resources = resources
        self.itemsize = itemsize

    def best(self, depth, exact, arrays, seconds, *, shrink=None, passes=False, pad=False):
        """The best :class:`Layout` over merges of 1, 2, 4... chunks, chosen per axis.

        Axes are merged independently (a 2-D image may be best cut in strips); when that makes
        more than :data:`MAX_COMBINATIONS` layouts, one factor serves every axis.
        """
        shrink = exact if shrink is None else shrink
        per_axis = [_factors(len(axis)) for axis in self.chunks]
        if math.prod(len(f) for f in per_axis) > MAX_COMBINATIONS:
            shared = sorted(set().union(*per_axis))
            combinations = [tuple(min(f, max(p)) for p in per_axis) for f in shared]
        else:
            combinations = list(itertools.product(*per_axis))
        best: Layout | None = None
        layouts = {
            tuple(
                merge_small_chunks(_group(axis, f), d)
                for axis, f, d in zip(self.chunks, factors, depth)
            )
            for factors in combinations
        }
        for chunks in sorted(layouts, key=lambda c: [len(a) for a in c], reverse=True):
            layout = self._layout(chunks, depth, exact, arrays, seconds, shrink, passes, pad)
            if best is None or _better(layout, best):
                best = layout
        return best

    def whole(self, arrays, seconds) -> Layout:
        chunks = tuple((s,) for s in self.shape)
        return self._layout(chunks, (0,) * len(self.shape), True, arrays, seconds, False, False)

    def _layout(self, chunks, depth, exact, arrays, seconds, shrink, passes, pad=False) -> Layout:
        # Per axis: (halo before, core, halo after) of each distinct tile, and how many share it.
        per_axis = []
        for sizes, d in zip(chunks, depth):
            kinds: dict[tuple[int, int, int], int] = {}
            for i, size in enumerate(sizes):
                inner_lo = i > 0 or self.periodic or pad
                inner_hi = i < len(sizes) - 1 or self.periodic or pad
                key = (d if inner_lo else 0, size, d if inner_hi else 0)
                kinds[key] = kinds.get(key, 0) + 1
            per_axis.append(kinds)
        total, largest, peak = 0.0, 0.0, 0
        for combo in _product(per_axis):
            count = math.prod(n for _, n in combo)
            low, core, high = zip(*(key for key, _ in combo))
            cost = seconds(low, core, high, shrink, passes)
            total += count * cost
            largest = max(largest, cost)
            voxels = math.prod(lo + c + hi for lo, c, hi in zip(low, core, high))
            peak = max(peak, voxels * self.itemsize * arrays)
        threads = max(1, self.resources.parallel_tasks)
        finish = max(total / threads, largest)
        if peak > self.resources.memory_budget:
            finish = math.inf
        return Layout(chunks, tuple(depth), exact, finish, int(peak))


def _better(a: Layout, b: Layout) -> bool:
    if math.isinf(a.seconds) and math.isinf(b.seconds):
        return a.peak_bytes < b.peak_bytes
    return a.seconds < b.seconds * 0.98  # a merge must pay for its fewer, larger tasks


def _factors(count: int) -> list[int]:
    """Merge factors 1, 2, 4... up to one tile over the axis (at most :data:`MAX_MERGE`)."""
    factors, factor = [1], 2
    while factor < 2 * count and factor <= MAX_MERGE:
        factors.append(factor)
        factor *= 2
    return factors


def _group(sizes: tuple[int, ...], factor: int) -> tuple[int, ...]:
    return tuple(sum(sizes[i : i + factor]) for i in range(0, len(sizes), factor))


def _product(per_axis):
    combos = [[]]
    for kinds in per_axis:
        combos = [c + [item] for c in combos for item in kinds.items()]
    return combos


def rl_tile_seconds(
    forward: CorrelationPlan,
    backward: CorrelationPlan,
    low,
    core,
    high,
    shrink: bool,
    iterations: int,
    passes: bool,
    itemsize: int,
    memo: dict | None = None,
) -> float:
    """Seconds for one tile: the blurs priced by the correlation cost model, the element-wise
    work per voxel and, for passes, the scratch reads and writes of every iteration.

    A shrinking tile's blurs are priced at up to :data:`COST_SAMPLES` evenly spaced
    iterations and summed in proportion; ``memo`` keeps prices by block shape across calls.
    """
    steps = 1 if passes else iterations
    before = [k // 2 for k in forward.weights.shape]
    after = [(k - 1) // 2 for k in forward.weights.shape]
    memo = {} if memo is None else memo

    def blur_seconds(plan: CorrelationPlan, out: tuple[int, ...]) -> float:
        key = (id(plan), out)
        if key not in memo:
            memo[key] = method_costs(plan.weights, out, plan.engines)[plan.method_for(out)]
        return memo[key]

    def shape_after(blurs: int) -> tuple[int, ...]:
        """The block shape after ``blurs`` blurs (the tile shrinks on its inner sides)."""
        if not shrink:
            return tuple(lo + c + hi for lo, c, hi in zip(low, core, high))
        return tuple(
            (max(lo - blurs * b, 0) if lo else 0) + c + (max(hi - blurs * a, 0) if hi else 0)
            for lo, c, hi, b, a in zip(low, core, high, before, after)
        )

    samples = sorted(
        {round(i * (steps - 1) / max(COST_SAMPLES - 1, 1)) for i in range(COST_SAMPLES)}
    )
    samples = [i for i in samples if i < steps]
    per_step = 0.0
    for step in samples:
        blurred = shape_after(2 * step + 1)
        back = shape_after(2 * step + 2)
        per_step += blur_seconds(forward, blurred) + blur_seconds(backward, back)
        per_step += math.prod(back) * ELEMENTWISE_SECONDS
    seconds = per_step * steps / len(samples)
    if passes:
        haloed = math.prod(
            c + 2 * (2 * b) for c, b in zip(core, before)
        )  # the estimate and the image, each read with one iteration's halo
        seconds += 2 * haloed * itemsize * READ_SECONDS_PER_BYTE
        seconds += math.prod(core) * itemsize * WRITE_SECONDS_PER_BYTE
        seconds *= iterations
    return seconds
