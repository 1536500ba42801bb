"""The block-size search behind :func:`~distconv.plan.matmul.plan_matmul` and its cost model.

Private to :mod:`distconv.plan`; :mod:`.matmul` re-exports the cost-model constants.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from distconv.clusters.resources import Resources

__all__ = [
    "BYTES_PER_SECOND",
    "FLOPS_PER_THREAD",
    "MAX_FAN_IN",
    "MEMORY_BYTES_PER_SECOND",
    "MIN_BLOCK_EDGE",
    "SECONDS_PER_TASK",
    "BlockSearch",
    "Choice",
    "block_count",
    "decoded_elements",
    "operand_batch_elements",
    "peak_task_bytes",
    "read_pattern",
    "stream_peak_bytes",
    "tree_tasks",
]

# Cost model for choosing block sizes (only the ratios matter), measured on the 2-core development
# machine: float32 GEMM runs at ~1e11 FLOP/s per core (float64 at half that); a panel reaches a
# task at ~5e8 B/s (Zarr zstd decode ~4e8 B/s, a copy between worker processes ~1e9 B/s); each
# task costs a few ms of scheduling.
FLOPS_PER_THREAD = 1e11
BYTES_PER_SECOND = 5e8
SECONDS_PER_TASK = 5e-3
MEMORY_BYTES_PER_SECOND = 5e9  # adding a step's product into a streamed block
# Blocks smaller than this on a matrix axis waste BLAS; the planner goes below only for arrays
# that are smaller themselves.
MIN_BLOCK_EDGE = 128
# Most partial products one tree-sum task adds (fewer when memory is short).
MAX_FAN_IN = 8


@dataclass(frozen=True)
class Choice:
    """One scored candidate: block sizes, tree fan-in, k step and the cost model's estimate."""

    seconds: float
    moved: int
    batch_chunks: tuple[int, ...]
    bn: int
    bk: int
    bm: int
    fan_in: int
    tasks: int
    fits: bool
    step: int = 0


@dataclass(frozen=True)
class BlockSearch:
    """Enumerates candidate block sizes and scores them with the cost model."""

    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]
    batch: tuple[int, ...]
    n: int
    k: int
    m: int
    a_dtype: np.dtype
    b_dtype: np.dtype
    dtype: np.dtype
    resources: Resources
    panels_from_zarr: tuple[bool, bool]
    a_chunk_sizes: tuple[int, ...] = ()
    b_chunk_sizes: tuple[int, ...] = ()
    streams: bool = False  # the engine can stream k inside a task (CPU engines)

    @property
    def a_batch(self) -> tuple[int, ...]:
        return self.a_shape[:-2]

    @property
    def b_batch(self) -> tuple[int, ...]:
        return self.b_shape[:-2]

    def best(self, hints: dict[str, int]) -> Choice:
        """The cheapest blocks with the largest k panel that fits; the smallest if none fits.

        Parameters
        ----------
        hints : dict
            The inputs' chunk sizes along ``"n"``, ``"k"`` and ``"m"`` (0: unknown).

        Returns
        -------
        Choice
        """
        # A task reading its panels from a store decodes every chunk a panel touches: blocks
        # of whole stored chunks decode nothing twice.
        a_direct, b_direct = self.panels_from_zarr
        n_sizes = _candidate_sizes(self.n, hints["n"], whole_chunks=a_direct)
        m_sizes = _candidate_sizes(self.m, hints["m"], whole_chunks=b_direct)
        batch_options = _batch_options(self.batch)
        k_chunk = self._k_chunk() if a_direct and b_direct else hints["k"]
        k_sizes = sorted(
            _candidate_sizes(self.k, k_chunk, whole_chunks=a_direct and b_direct), reverse=True
        )
        for bk in k_sizes:
            scored = [
                self._score(batch_chunks, bn, bk, bm)
                for batch_chunks in batch_options
                for bn in n_sizes
                for bm in m_sizes
            ]
            if bk == self.k and self.streams and all(self.panels_from_zarr):
                # Tasks reading their own panels can also stream k: a block whose whole k
                # range does not fit is read in the largest steps that do, and no partial
                # product leaves the task. Larger blocks mean fewer re-reads.
                for choice in list(scored):
                    if choice.fits:
                        continue
                    for step in k_sizes[1:]:
                        streamed = self._score(
                            choice.batch_chunks, choice.bn, bk, choice.bm, step=step
                        )
                        if streamed.fits:
                            scored.append(streamed)
                            break
            fitting = [c for c in scored if c.fits]
            if fitting:
                # Ties go to the plan that decodes (re-reads) the fewest bytes.
                return min(fitting, key=lambda c: (c.seconds, c.moved))
        smallest = min(_candidate_sizes(self.k, hints["k"]))
        return self._score(batch_options[0], min(n_sizes), smallest, min(m_sizes))

    def _k_chunk(self) -> int:
        """A k panel size both operands' stored chunks divide (0: unknown)."""
        a_k = self.a_chunk_sizes[-1] if self.a_chunk_sizes else 0
        b_k = self.b_chunk_sizes[-2 if len(self.b_shape) > 1 else -1] if self.b_chunk_sizes else 0
        if not (a_k and b_k):
            return a_k or b_k
        return math.lcm(a_k, b_k)

    def threads_per_task(self, tasks: int) -> int:
        """A task's BLAS threads: its core share, more when fewer tasks than threads exist.

        Parameters
        ----------
        tasks : int
            Matmul tasks in the graph.

        Returns
        -------
        int
        """
        spare = max(1, self.resources.parallel_tasks // max(1, tasks))
        return max(1, self.resources.cores_per_task * spare)

    def _score(
        self, batch_chunks: tuple[int, ...], bn: int, bk: int, bm: int, step: int = 0
    ) -> Choice:
        a_panel = (
            operand_batch_elements(self.a_batch, self.batch, batch_chunks)
            * bn
            * bk
            * self.a_dtype.itemsize
        )
        b_panel = (
            operand_batch_elements(self.b_batch, self.batch, batch_chunks)
            * bk
            * bm
            * self.b_dtype.itemsize
        )
        out_block = math.prod(batch_chunks) * bn * bm * self.dtype.itemsize
        k_panels = block_count(self.k, bk)
        budget = self.resources.memory_budget
        fan_in = max(2, min(MAX_FAN_IN, k_panels, budget // max(1, out_block) - 1))
        peak = peak_task_bytes(
            a_panel,
            b_panel,
            out_block,
            self.a_dtype,
            self.b_dtype,
            self.dtype,
            k_panels,
            fan_in,
            self.panels_from_zarr,
        )
        steps = block_count(bk, step) if step else 1
        if steps > 1:
            peak = stream_peak_bytes(
                a_panel * step // bk,
                b_panel * step // bk,
                out_block,
                self.a_dtype,
                self.b_dtype,
                self.dtype,
            )
        blocks = (
            math.prod(block_count(s, c) for s, c in zip(self.batch, batch_chunks))
            * block_count(self.n, bn)
            * block_count(self.m, bm)
        )
        tasks = blocks * k_panels
        rounds = math.ceil(tasks / self.resources.parallel_tasks)
        flops = 2 * math.prod(batch_chunks) * bn * bk * bm
        rate = FLOPS_PER_THREAD * (4 / max(4, self.dtype.itemsize)) * self.threads_per_task(tasks)
        if all(self.panels_from_zarr):
            # Tasks decode whole chunks from the stores, each panel once per block using it:
            # misaligned blocks and re-reads both cost decode time.
            moved = sum(
                decoded_elements(
                    **read_pattern(
                        operand,
                        self.a_shape,
                        self.b_shape,
                        self.batch,
                        batch_chunks,
                        bn,
                        step or bk,
                        bm,
                        chunks,
                    )
                )
                * dtype.itemsize
                for operand, chunks, dtype in (
                    ("a", self.a_chunk_sizes, self.a_dtype),
                    ("b", self.b_chunk_sizes, self.b_dtype),
                )
            )
        else:
            moved = tasks * (a_panel + b_panel)
        per_task = flops / rate + moved / tasks / BYTES_PER_SECOND + SECONDS_PER_TASK
        # Streaming adds each step's product into the block: one more pass over it per step.
        per_task += (steps - 1) * 2 * out_block / MEMORY_BYTES_PER_SECOND
        summing = (
            blocks
            * tree_tasks(k_panels, fan_in)
            * (fan_in + 1)
            * out_block
            / BYTES_PER_SECOND
            / self.resources.parallel_tasks
        )
        seconds = rounds * per_task + summing
        blocks = (batch_chunks, bn, bk, bm)  # Choice's fields in order
        return Choice(seconds, moved, *blocks, fan_in, tasks, peak <= budget, step * (steps > 1))


def peak_task_bytes(
    a_panel: int,
    b_panel: int,
    out_block: int,
    a_dtype: np.dtype,
    b_dtype: np.dtype,
    dtype: np.dtype,
    k_panels: int,
    fan_in: int,
    panels_from_zarr: tuple[bool, bool],
) -> int:
    """Largest memory one task holds: a matmul task, a tree-sum task, or a panel assembly.

    Parameters
    ----------
    a_panel, b_panel, out_block : int
        Bytes of one A panel, one B panel and one output block.
    a_dtype, b_dtype, dtype : numpy.dtype
        The operands' dtypes and the compute dtype (panels are cast to it).
    k_panels : int
        k panels per output block (more than one: partial products are tree-summed).
    fan_in : int
        Partial products one tree-sum task adds.
    panels_from_zarr : (bool, bool)
        Whether each operand's panels are read straight from Zarr (no assembly copy).

    Returns
    -------
    int
        Bytes.
    """
    # A matmul task holds both panels, their casts to the compute dtype, and its product.
    casts = _cast_bytes(a_panel, a_dtype, dtype) + _cast_bytes(b_panel, b_dtype, dtype)
    matmul_task = a_panel + b_panel + casts + out_block
    # A tree-sum task holds its fan-in of partial products and the running total.
    sum_task = (fan_in + 1) * out_block if k_panels > 1 else 0
    # Assembling a panel from smaller chunks holds the pieces and the panel at once.
    assembly = max(
        0 if panels_from_zarr[0] else 2 * a_panel, 0 if panels_from_zarr[1] else 2 * b_panel
    )
    return max(matmul_task, sum_task, assembly)


def stream_peak_bytes(
    a_step: int, b_step: int, out_block: int, a_dtype: np.dtype, b_dtype: np.dtype, dtype: np.dtype
) -> int:
    """Bytes a streaming task holds: this step's panels (and their casts), the next step's panels
    being read, the running block and this step's product.

    Parameters as :func:`peak_task_bytes`, with one step's A and B panels (``a_step``,
    ``b_step``) in place of the whole panels.
    """
    casts = _cast_bytes(a_step, a_dtype, dtype) + _cast_bytes(b_step, b_dtype, dtype)
    return 2 * (a_step + b_step) + casts + 2 * out_block


def _cast_bytes(panel: int, panel_dtype: np.dtype, dtype: np.dtype) -> int:
    """Bytes of a panel's copy cast to the compute ``dtype`` (0 when it is that dtype already)."""
    return panel * dtype.itemsize // panel_dtype.itemsize if panel_dtype != dtype else 0


def _candidate_sizes(extent: int, chunk: int, whole_chunks: bool = False) -> list[int]:
    """Block sizes worth trying on one axis: multiples of the chunk, even splits, powers of 2.

    With ``whole_chunks`` (and a known chunk size) only whole multiples of the chunk, and the
    whole axis: chunk × 2^i and the even splits of the chunk count.
    """
    if extent <= 1:
        return [1]
    floor = min(extent, MIN_BLOCK_EDGE)
    if whole_chunks and 0 < chunk < extent:
        count = math.ceil(extent / chunk)
        multiples = {extent}
        parts = 1
        while parts <= count:
            multiples.add(chunk * math.ceil(count / parts))
            multiples.add(min(extent, chunk * parts))
            parts *= 2
        fitting = sorted(s for s in multiples if floor <= s <= extent)
        return fitting or [min(multiples)]
    sizes = {extent}
    size = max(1, chunk)
    while size < extent:
        sizes.add(size)
        size *= 2
    parts = 2
    while parts <= extent:
        sizes.add(math.ceil(extent / parts))
        parts *= 2
    power = 1
    while power < extent:
        sizes.add(power)
        power *= 2
    return sorted(s for s in sizes if floor <= s <= extent)


def _batch_options(batch: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Batch block shapes holding 1, 2, 4, ... matrices, filled from the last batch axis."""
    total = math.prod(batch)
    counts = {total}
    count = 1
    while count < total:
        counts.add(count)
        count *= 2
    options = []
    for count in sorted(counts):
        chunks = []
        remaining = count
        for size in reversed(batch):
            chunk = max(1, min(size, remaining))
            chunks.append(chunk)
            remaining = max(1, remaining // size)
        options.append(tuple(reversed(chunks)))
    return sorted(set(options), key=math.prod)


def operand_batch_elements(
    operand_batch: tuple[int, ...], batch: tuple[int, ...], batch_chunks: tuple[int, ...]
) -> int:
    """Matrices of one operand inside a batch block (broadcast axes hold one).

    Parameters
    ----------
    operand_batch : tuple of int
        The operand's batch axes (right-aligned with ``batch``).
    batch, batch_chunks : tuple of int
        The result's batch shape and the block size along each of its axes.

    Returns
    -------
    int
    """
    offset = len(batch) - len(operand_batch)
    return math.prod(
        1 if size == 1 else batch_chunks[offset + i] for i, size in enumerate(operand_batch)
    )


def read_pattern(
    operand: str,
    a_shape: tuple[int, ...],
    b_shape: tuple[int, ...],
    batch: tuple[int, ...],
    batch_chunks: tuple[int, ...],
    bn: int,
    bk: int,
    bm: int,
    chunk_sizes: tuple[int, ...],
) -> dict[str, Any]:
    """How the in-task reads cover one operand: its extents, block and chunk sizes per axis,
    and how many times each panel is read (once per output block along the axes it lacks).

    Parameters
    ----------
    operand : {"a", "b"}
    a_shape, b_shape : tuple of int
        The operands' shapes.
    batch, batch_chunks : tuple of int
        The result's batch shape and block sizes.
    bn, bk, bm : int
        Block sizes along n, k (or the k step) and m.
    chunk_sizes : tuple of int
        The operand's chunk size per axis (empty: unknown).

    Returns
    -------
    dict
        The keyword arguments of :func:`decoded_elements`.
    """
    shape = a_shape if operand == "a" else b_shape
    if len(shape) == 1:
        operand_batch: tuple[int, ...] = ()
        core_blocks = (bk,)
    else:
        operand_batch = shape[:-2]
        core_blocks = (bn, bk) if operand == "a" else (bk, bm)
    offset = len(batch) - len(operand_batch)
    batch_blocks = tuple(
        1 if size == 1 else batch_chunks[offset + i] for i, size in enumerate(operand_batch)
    )
    # Output batch axes this operand lacks or broadcasts on: its panel is read once per block.
    repeats = math.prod(
        block_count(batch[axis], batch_chunks[axis])
        for axis in range(len(batch))
        if axis < offset or operand_batch[axis - offset] == 1
    )
    if operand == "a":
        repeats *= 1 if len(b_shape) == 1 else block_count(b_shape[-1], bm)
    else:
        repeats *= 1 if len(a_shape) == 1 else block_count(a_shape[-2], bn)
    chunks = chunk_sizes if len(chunk_sizes) == len(shape) else (0,) * len(shape)
    return {
        "extents": shape,
        "blocks": batch_blocks + core_blocks,
        "chunks": chunks,
        "repeats": repeats,
    }


def decoded_elements(
    extents: Sequence[int], blocks: Sequence[int], chunks: Sequence[int], repeats: int
) -> int:
    """Elements decoded when a regular grid of blocks is read chunk by chunk, ``repeats`` times.

    A block decodes every chunk it touches; the grid is a product of axes, so the total is the
    product of the per-axis totals.

    Parameters
    ----------
    extents, blocks, chunks : sequence of int
        Per axis: the array's size, the block size and the chunk size (0 or 1: unchunked).
    repeats : int
        How many times the whole grid is read.

    Returns
    -------
    int
    """
    return repeats * math.prod(_aligned_total(e, b, c) for e, b, c in zip(extents, blocks, chunks))


@functools.lru_cache(maxsize=4096)
def _aligned_total(extent: int, block: int, chunk: int) -> int:
    """Elements of whole chunks (size ``chunk``) touched by blocks of ``block`` along one axis."""
    if chunk <= 1 or block % chunk == 0 or block >= extent:  # aligned: each chunk once
        return extent
    total = 0
    for start in range(0, extent, block):
        stop = min(extent, start + block)
        total += min(extent, -(-stop // chunk) * chunk) - (start // chunk) * chunk
    return total


def block_count(extent: int, size: int) -> int:
    """Blocks of ``size`` that cover ``extent`` (at least one)."""
    return max(1, math.ceil(extent / max(1, size)))


def tree_tasks(partials: int, fan_in: int) -> int:
    """Add tasks in a tree that reduces ``partials`` blocks with the given fan-in."""
    tasks = 0
    while partials > 1:
        partials = math.ceil(partials / fan_in)
        tasks += partials
    return tasks
