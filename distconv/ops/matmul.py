"""Matrix product and element-wise product of chunked arrays, the matrix product planned first.

``matmul`` follows :func:`numpy.matmul` (1-D operands, stacks of matrices with broadcast batch
axes, NumPy's dtype promotion) and ``multiply`` follows :func:`numpy.multiply` (broadcasting,
Python scalars promoted weakly as NumPy 2 does). Each block is computed by an engine from
:mod:`distconv.kernels`.

The matrix product is planned before the graph exists (:class:`MatmulPlan`): from a per-task
memory budget the planner picks the k panel first -- the whole contraction axis when it fits, so
each output block is one engine call and no partial sums exist -- then the n, m (and batch) block
sizes that a small cost model says finish soonest on the cluster's threads. When the k panel
cannot hold the whole axis, partial products are summed in a tree whose fan-in also fits the
budget; the sum runs on the chunk type the engine returned (on the device for GPU engines).

When both operands are Zarr arrays opened by :func:`distconv.open`, every matmul task reads its
own A and B panels from the stores: a worker's memory then stays at its running tasks' panels
however large the arrays are, and no panel is copied between workers. A panel is then read
once per output block that uses it, so the planner counts the whole chunks each task decodes
(re-reads included) and keeps blocks large; when a block's whole k range does not fit the
budget, a CPU task streams k in steps instead (reading the next step while the engine
multiplies, adding in place), which keeps blocks large without partial products between
tasks. Other operands (NumPy, lazy Dask results) are rechunked into the planned panels and
shared through Dask.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
from dataclasses import dataclass, field
from numbers import Number
from typing import Any, Iterator, Sequence

import dask.array as da
import dask.system
import numpy as np
from dask.array.reductions import reduction
from dask.highlevelgraph import HighLevelGraph
from dask.utils import format_bytes, parse_bytes

from distconv import kernels
from distconv.backend import array_module, is_gpu_array, to_numpy
from distconv.config import get_default
from distconv.errors import DistconvError
from distconv.io import (InputReadError, as_dask_array, open_zarr_array, remember_provenance, remember_source,
                         source_of)

# Share of a worker's memory one task may plan for: the rest covers Dask's own buffers, Zarr
# codec buffers, the output block waiting to be written and the engine's temporaries.
SAFETY_FRACTION = 0.5
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

_MATMUL_OP = "matmul"
_MULTIPLY_OP = "multiply"


# --- the plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resources:
    """What the planner knows about where the graph will run."""

    parallel_tasks: int  # tasks that run at once (threads over all workers)
    cores_per_task: int  # the cores one running task may use without oversubscribing
    memory_budget: int  # bytes one task may use
    budget_source: str  # how memory_budget was found, for describe()


@dataclass(frozen=True)
class MatmulPlan:
    """A matrix product fully planned: block sizes, k panels, tree fan-in, threads, dtype.

    Shapes are the operands' own (1-D operands included); the planner works on the matrix view
    ``(batch..., n, k) @ (batch..., k, m)`` where a 1-D ``a`` is one row and a 1-D ``b`` one
    column, as :func:`numpy.matmul` defines them.
    """

    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]
    a_dtype: np.dtype
    b_dtype: np.dtype
    dtype: np.dtype  # result dtype, also the dtype each block is computed in
    engine: str
    batch_chunks: tuple[int, ...]  # block size along each broadcast batch axis
    block_n: int
    block_k: int
    block_m: int
    fan_in: int  # partial products added per tree-sum task
    blas_threads: int  # BLAS threads inside one matmul task
    resources: Resources
    panels_from_zarr: tuple[bool, bool] = (False, False)  # panels read straight from the store
    natural_chunks: tuple[int, int] = (0, 0)  # the inputs' n and m chunk sizes (0: unknown)
    # The operands' chunk size on each axis (empty: unknown). A task reading its panel from a
    # store decodes every chunk the panel touches, so these set the bytes really read.
    a_chunk_sizes: tuple[int, ...] = ()
    b_chunk_sizes: tuple[int, ...] = ()
    # In-task reads only: each task reads k in steps of this many (0: the whole k at once),
    # reading the next step while the engine multiplies, and accumulates its block.
    stream_k: int = 0
    fits_budget: bool = True
    estimated_seconds: float = field(default=0.0, compare=False)

    # -- the matrix view --
    @property
    def vector_a(self) -> bool:
        return len(self.a_shape) == 1

    @property
    def vector_b(self) -> bool:
        return len(self.b_shape) == 1

    @property
    def n(self) -> int:
        return 1 if self.vector_a else self.a_shape[-2]

    @property
    def k(self) -> int:
        return self.a_shape[-1]

    @property
    def m(self) -> int:
        return 1 if self.vector_b else self.b_shape[-1]

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return np.broadcast_shapes(self.a_shape[:-2], self.b_shape[:-2])

    @property
    def out_shape(self) -> tuple[int, ...]:
        return matmul_result_shape(self.a_shape, self.b_shape)

    # -- counts --
    @property
    def k_panels(self) -> int:
        return _blocks(self.k, self.block_k)

    @property
    def batch_blocks(self) -> int:
        return math.prod(_blocks(s, c) for s, c in zip(self.batch_shape, self.batch_chunks))

    @property
    def output_blocks(self) -> int:
        return self.batch_blocks * _blocks(self.n, self.block_n) * _blocks(self.m, self.block_m)

    @property
    def matmul_tasks(self) -> int:
        return self.output_blocks * self.k_panels

    @property
    def stream_steps(self) -> int:
        """Steps in which one task reads and multiplies its k range (1: all at once)."""
        return _blocks(self.k, self.stream_k) if self.stream_k else 1

    @property
    def sum_tasks(self) -> int:
        return self.output_blocks * _tree_tasks(self.k_panels, self.fan_in)

    @property
    def output_chunks(self) -> tuple[int, ...]:
        """Chunk sizes of the result (and of the Zarr array it is saved to)."""
        n_chunk = _split_size(self.block_n, self.natural_chunks[0])
        m_chunk = _split_size(self.block_m, self.natural_chunks[1])
        return tuple(self.batch_chunks) + (() if self.vector_a else (n_chunk,)) + \
            (() if self.vector_b else (m_chunk,))

    @property
    def flops(self) -> int:
        """Multiply-adds counted as two operations: ``2·batch·n·k·m``."""
        return 2 * math.prod(self.batch_shape) * self.n * self.k * self.m

    # -- bytes --
    def _a_batch_per_block(self) -> int:
        return _operand_batch_elements(self.a_shape[:-2], self.batch_shape, self.batch_chunks)

    def _b_batch_per_block(self) -> int:
        return _operand_batch_elements(self.b_shape[:-2], self.batch_shape, self.batch_chunks)

    @property
    def a_panel_bytes(self) -> int:
        return self._a_batch_per_block() * self.block_n * self.block_k * self.a_dtype.itemsize

    @property
    def b_panel_bytes(self) -> int:
        return self._b_batch_per_block() * self.block_k * self.block_m * self.b_dtype.itemsize

    @property
    def out_block_bytes(self) -> int:
        return math.prod(self.batch_chunks) * self.block_n * self.block_m * self.dtype.itemsize

    @property
    def reads_in_tasks(self) -> bool:
        """Each matmul task reads its own panels from the two Zarr stores.

        Memory then stays at :attr:`peak_task_bytes` per running task however large the
        arrays are, and no panel travels between workers; a panel used by several output
        blocks is read once per block instead (the block sizes are chosen to keep that low).
        """
        return all(self.panels_from_zarr)

    @property
    def panel_bytes_moved(self) -> int:
        """Bytes of panels delivered to matmul tasks (a panel used by two tasks counts twice)."""
        return self.matmul_tasks * (self.a_panel_bytes + self.b_panel_bytes)

    @property
    def input_bytes(self) -> tuple[int, int]:
        """Bytes of A and of B (each input once)."""
        return (math.prod(self.a_shape) * self.a_dtype.itemsize,
                math.prod(self.b_shape) * self.b_dtype.itemsize)

    @property
    def operand_bytes_read(self) -> tuple[int, int]:
        """Bytes of A and of B decoded from the inputs by the whole graph.

        With in-task reads each task decodes the whole chunks its panels touch, and a panel is
        read once per output block that needs it: A's once per block along m (and along batch
        axes A broadcasts on), B's once per block along n. Shared panels read each input once.
        """
        if not self.reads_in_tasks:
            return self.input_bytes
        return (_decoded_elements(**self._read_pattern("a")) * self.a_dtype.itemsize,
                _decoded_elements(**self._read_pattern("b")) * self.b_dtype.itemsize)

    @property
    def bytes_read(self) -> int:
        """Bytes read from the inputs (stores or upstream graph), re-reads included."""
        return sum(self.operand_bytes_read)

    def _read_pattern(self, operand: str) -> dict[str, Any]:
        """Axes, block sizes, chunk sizes and repeat count of one operand's panel reads."""
        return _read_pattern(
            operand, self.a_shape, self.b_shape, self.batch_shape, self.batch_chunks,
            self.block_n, self.stream_k or self.block_k, self.block_m,
            self.a_chunk_sizes if operand == "a" else self.b_chunk_sizes)

    @property
    def peak_task_bytes(self) -> int:
        """Largest memory one task holds: a matmul task, a tree-sum task, or a panel copy."""
        if self.stream_steps > 1:
            return _stream_peak_bytes(self._step_bytes(self.a_panel_bytes),
                                      self._step_bytes(self.b_panel_bytes), self.out_block_bytes,
                                      self.a_dtype, self.b_dtype, self.dtype)
        return _peak_task_bytes(self.a_panel_bytes, self.b_panel_bytes, self.out_block_bytes,
                                self.a_dtype, self.b_dtype, self.dtype, self.k_panels,
                                self.fan_in, self.panels_from_zarr)

    def describe(self) -> str:
        """Several lines for ``distconv matmul --dry-run``."""
        shape = _shape_text
        k_line = ("one k panel: each output block is one engine call, no partial sums"
                  if self.k_panels == 1 and self.stream_steps == 1 else
                  f"one task per output block reads k in {self.stream_steps} steps of "
                  f"{self.stream_k} (the next step is read while the engine multiplies) and "
                  "adds them up in place: no partial sums between tasks"
                  if self.k_panels == 1 else
                  f"{self.k_panels} k panels of {self.block_k}: partial products summed in a "
                  f"tree of fan-in {self.fan_in}")
        if self.reads_in_tasks:
            sources = "each task reads its panels from the Zarr stores"
        else:
            sources = " and ".join(
                f"{name} {'read from Zarr in panels' if direct else 'rechunked to panels'}"
                for name, direct in zip("AB", self.panels_from_zarr))
        lines = [
            f"matmul plan: {shape(self.a_shape)} {self.a_dtype} @ {shape(self.b_shape)} "
            f"{self.b_dtype} -> {shape(self.out_shape)} {self.dtype}",
            f"  engine:            {self.engine}, {self._threads_text()}, "
            f"{self.resources.parallel_tasks} task(s) at once",
            f"  memory budget:     {format_bytes(self.resources.memory_budget)} per task "
            f"({self.resources.budget_source})",
            f"  blocks:            batch {shape(self.batch_chunks)}, n {self.block_n}, "
            f"k {self.block_k}, m {self.block_m}",
            f"  contraction:       {k_line}",
            f"  panels:            A {format_bytes(self.a_panel_bytes)}, "
            f"B {format_bytes(self.b_panel_bytes)}"
            + ("" if self.stream_steps == 1 else
               f", read in steps of A {format_bytes(self._step_bytes(self.a_panel_bytes))}, "
               f"B {format_bytes(self._step_bytes(self.b_panel_bytes))}")
            + f"; {sources}",
            f"  output chunks:     {self.output_blocks} block(s) computed, written as "
            f"{_count_chunks(self.out_shape, self.output_chunks)} chunk(s) of "
            f"{shape(self.output_chunks)}",
            f"  tasks:             {self.matmul_tasks} matmul + {self.sum_tasks} tree-sum",
            f"  bytes read:        {format_bytes(self.bytes_read)} from the inputs "
            f"({self._reads_text()})"
            + ("" if self.reads_in_tasks else
               f"; {format_bytes(self.panel_bytes_moved)} of panels into tasks"),
            f"  peak memory/task:  {format_bytes(self.peak_task_bytes)}"
            + ("" if self.fits_budget else "  (OVER the budget: no smaller blocks exist)")
            + ("" if self.reads_in_tasks else
               " (a worker also holds shared panels waiting for their other tasks)"),
            f"  FLOPs:             {self.flops:.3e}",
            f"  estimated time:    {self.estimated_seconds:.1f} s (cost model, not a measurement)",
        ]
        return "\n".join(lines)

    def _step_bytes(self, panel_bytes: int) -> int:
        return panel_bytes * self.stream_k // self.block_k

    def _reads_text(self) -> str:
        """How often each input is read: re-reads cost decode time, so the plan keeps them few."""
        parts = []
        for name, read, size in zip("AB", self.operand_bytes_read, self.input_bytes):
            parts.append(f"{name} {read / size:.2f}x" if size else f"{name} empty")
        total = sum(self.input_bytes)
        ratio = f"{self.bytes_read / total:.2f}x" if total else "-"
        return f"{ratio} the inputs' {format_bytes(total)}: " + ", ".join(parts)

    def _threads_text(self) -> str:
        if self.engine == "tensorflow":  # its pools are fixed when TensorFlow starts
            return "TensorFlow's intra-op pool sized to the worker's threads"
        return f"{self.blas_threads} BLAS thread(s) per task"

    def summary(self) -> dict[str, Any]:
        """The plan as plain values, for provenance."""
        return {
            "batch_chunks": list(self.batch_chunks), "block_n": self.block_n,
            "block_k": self.block_k, "block_m": self.block_m, "k_panels": self.k_panels,
            "stream_k": self.stream_k,
            "fan_in": self.fan_in, "blas_threads": self.blas_threads,
            "memory_budget": self.resources.memory_budget,
            "peak_task_bytes": self.peak_task_bytes, "bytes_read": self.bytes_read,
        }


def matmul_result_shape(a_shape: Sequence[int], b_shape: Sequence[int]) -> tuple[int, ...]:
    """The shape :func:`numpy.matmul` returns, or :class:`DistconvError` with NumPy's message."""
    a_shape, b_shape = tuple(a_shape), tuple(b_shape)
    if not a_shape or not b_shape:
        _raise_numpy_error(np.matmul, a_shape, b_shape)
    a_core = a_shape[-2:] if len(a_shape) > 1 else (1,) + a_shape
    b_core = b_shape[-2:] if len(b_shape) > 1 else b_shape + (1,)
    if a_core[1] != b_core[0]:
        _raise_numpy_error(np.matmul, a_shape, b_shape)
    try:
        batch = np.broadcast_shapes(a_shape[:-2], b_shape[:-2])
    except ValueError:
        _raise_numpy_error(np.matmul, a_shape, b_shape)
    return batch + (a_shape[-2:-1] if len(a_shape) > 1 else ()) + \
        (b_shape[-1:] if len(b_shape) > 1 else ())


def plan_matmul(a_shape: Sequence[int], b_shape: Sequence[int], a_dtype, b_dtype, *,
                engine: str | None = None, memory_budget: int | str | None = None,
                a_chunks: Sequence[Sequence[int]] | None = None,
                b_chunks: Sequence[Sequence[int]] | None = None,
                panels_from_zarr: tuple[bool, bool] = (False, False),
                gpu_chunks: bool = False, resources: Resources | None = None) -> MatmulPlan:
    """Choose block sizes, k panels and threads for ``a @ b`` under a per-task memory budget.

    Parameters
    ----------
    a_shape, b_shape : sequence of int
        Operand shapes, as :func:`numpy.matmul` takes them.
    a_dtype, b_dtype : dtype
        Operand dtypes; the result (and compute) dtype is :func:`numpy.result_type` of them.
    engine : str, optional
        Engine for the blocks; default from config ``distconv.engine`` ("auto").
    memory_budget : int or str, optional
        Bytes one task may use ("2GiB" is accepted). Default: the smallest worker's
        ``memory_limit`` per thread on the current Dask client, else the machine's memory per
        core, times :data:`SAFETY_FRACTION`.
    a_chunks, b_chunks : tuple of tuple of int, optional
        The operands' current chunks: blocks are made multiples of them when possible and the
        result is written with the inputs' n and m chunk sizes.
    panels_from_zarr : (bool, bool)
        Whether each operand's panels will be read straight from its Zarr store (no copy to
        assemble them), which lowers the peak memory estimate.
    gpu_chunks : bool
        The chunks are CuPy arrays ("auto" then picks a GPU engine).
    resources : Resources, optional
        Override what is detected about the cluster (tests, what-if planning).

    Returns
    -------
    MatmulPlan
    """
    out_shape = matmul_result_shape(a_shape, b_shape)
    dtype = np.result_type(np.dtype(a_dtype), np.dtype(b_dtype))
    name = kernels.resolve_engine(engine or get_default("engine"), _MATMUL_OP,
                                  max(len(a_shape), len(b_shape)), dtype, gpu_chunks=gpu_chunks)
    if resources is None:
        resources = detect_resources(memory_budget)
    elif memory_budget is not None:
        resources = Resources(resources.parallel_tasks, resources.cores_per_task,
                              _budget_bytes(memory_budget), "given")
    a_shape, b_shape = tuple(a_shape), tuple(b_shape)
    n = 1 if len(a_shape) == 1 else a_shape[-2]
    k = a_shape[-1]
    m = 1 if len(b_shape) == 1 else b_shape[-1]
    batch = out_shape[: len(out_shape) - (len(a_shape) > 1) - (len(b_shape) > 1)]
    hints = _chunk_hints(a_shape, b_shape, a_chunks, b_chunks)
    a_chunk_sizes, b_chunk_sizes = _chunk_sizes(a_chunks), _chunk_sizes(b_chunks)
    search = _BlockSearch(
        a_shape=a_shape, b_shape=b_shape, batch=batch, n=n, k=k, m=m,
        a_dtype=np.dtype(a_dtype), b_dtype=np.dtype(b_dtype), dtype=dtype,
        resources=resources, panels_from_zarr=panels_from_zarr,
        a_chunk_sizes=a_chunk_sizes, b_chunk_sizes=b_chunk_sizes,
        streams=kernels.ENGINES[name].device == "cpu",
    )
    choice = search.best(hints)
    return MatmulPlan(
        a_shape=a_shape, b_shape=b_shape, a_dtype=np.dtype(a_dtype), b_dtype=np.dtype(b_dtype),
        dtype=dtype, engine=name, batch_chunks=choice.batch_chunks, block_n=choice.bn,
        block_k=choice.bk, block_m=choice.bm, fan_in=choice.fan_in,
        blas_threads=search.threads_per_task(choice.tasks), resources=resources,
        panels_from_zarr=panels_from_zarr, natural_chunks=(hints["n"], hints["m"]),
        a_chunk_sizes=a_chunk_sizes, b_chunk_sizes=b_chunk_sizes, stream_k=choice.step,
        fits_budget=choice.fits, estimated_seconds=choice.seconds,
    )


# --- resources -----------------------------------------------------------------------------


def detect_resources(memory_budget: int | str | None = None) -> Resources:
    """Threads, cores per task and per-task memory of the current client (or this machine)."""
    client = _current_client()
    if client is not None:
        found = _client_resources(client)
        if found is not None:
            parallel, cores_per_task, worker_budget, source = found
            if memory_budget is not None:
                return Resources(parallel, cores_per_task, _budget_bytes(memory_budget), "given")
            return Resources(parallel, cores_per_task, worker_budget, source)
    from distconv.clusters.local import machine_memory

    threads = int(dask.system.CPU_COUNT)  # Dask's threaded scheduler runs this many tasks
    if memory_budget is not None:
        return Resources(threads, 1, _budget_bytes(memory_budget), "given")
    budget = int(machine_memory() / threads * SAFETY_FRACTION)
    return Resources(threads, 1, budget,
                     f"{SAFETY_FRACTION} x machine memory / {threads} threads; no Dask client")


def _client_resources(client) -> tuple[int, int, int, str] | None:
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    if not workers:
        return None
    parallel = sum(int(w["nthreads"]) for w in workers.values())
    per_thread = [int(w["memory_limit"]) / max(1, int(w["nthreads"]))
                  for w in workers.values() if w.get("memory_limit")]
    if per_thread:
        budget = int(min(per_thread) * SAFETY_FRACTION)
        source = (f"{SAFETY_FRACTION} x smallest worker memory_limit per thread, "
                  f"{format_bytes(int(min(per_thread)))}")
    else:  # workers without a memory limit: fall back to this machine's memory
        from distconv.clusters.local import machine_memory

        budget = int(machine_memory() / parallel * SAFETY_FRACTION)
        source = f"{SAFETY_FRACTION} x machine memory / {parallel} threads; workers set no limit"
    return parallel, _cores_per_thread(client, workers), budget, source


def _cores_per_thread(client, workers: dict) -> int:
    """Cores each worker thread may use: a host's cores over the threads running on it."""
    try:
        cores = client.run(os.cpu_count)
    except Exception:  # a worker that cannot answer: assume one core per thread
        return 1
    threads_on_host: dict[str, int] = {}
    cores_on_host: dict[str, int] = {}
    for address, info in workers.items():
        host = info.get("host", address)
        threads_on_host[host] = threads_on_host.get(host, 0) + int(info["nthreads"])
        cores_on_host[host] = int(cores.get(address) or 1)
    return max(1, min(cores_on_host[h] // threads_on_host[h] for h in threads_on_host))


def _current_client():
    from distconv.progress import current_client

    return current_client()


def _budget_bytes(value: int | str) -> int:
    try:
        budget = parse_bytes(value) if isinstance(value, str) else int(value)
    except (ValueError, TypeError):
        raise DistconvError(f"memory budget must be bytes or a size like '2GiB', got {value!r}") \
            from None
    if budget <= 0:
        raise DistconvError(f"memory budget must be positive, got {value!r}")
    return budget


# --- block-size search ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Choice:
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
class _BlockSearch:
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

    def best(self, hints: dict[str, int]) -> _Choice:
        """The cheapest blocks with the largest k panel that fits; the smallest if none fits."""
        n_sizes = _candidate_sizes(self.n, hints["n"])
        m_sizes = _candidate_sizes(self.m, hints["m"])
        batch_options = _batch_options(self.batch)
        k_sizes = sorted(_candidate_sizes(self.k, hints["k"]), reverse=True)
        for bk in k_sizes:
            scored = [self._score(batch_chunks, bn, bk, bm)
                      for batch_chunks in batch_options for bn in n_sizes for bm in m_sizes]
            if bk == self.k and self.streams and all(self.panels_from_zarr):
                # Tasks reading their own panels can also stream k: a block whose whole k
                # range does not fit is read in the largest steps that do, and no partial
                # product leaves the task. Larger blocks mean fewer re-reads.
                for choice in list(scored):
                    if choice.fits:
                        continue
                    for step in k_sizes[1:]:
                        streamed = self._score(choice.batch_chunks, choice.bn, bk, choice.bm,
                                               step=step)
                        if streamed.fits:
                            scored.append(streamed)
                            break
            fitting = [c for c in scored if c.fits]
            if fitting:
                # Ties go to the plan that decodes (re-reads) the fewest bytes.
                return min(fitting, key=lambda c: (c.seconds, c.moved))
        smallest = min(_candidate_sizes(self.k, hints["k"]))
        return self._score(batch_options[0], min(n_sizes), smallest, min(m_sizes))

    def threads_per_task(self, tasks: int) -> int:
        """A task's BLAS threads: its core share, more when fewer tasks than threads exist."""
        spare = max(1, self.resources.parallel_tasks // max(1, tasks))
        return max(1, self.resources.cores_per_task * spare)

    def _score(self, batch_chunks: tuple[int, ...], bn: int, bk: int, bm: int,
               step: int = 0) -> _Choice:
        a_panel = _operand_batch_elements(self.a_batch, self.batch, batch_chunks) * bn * bk * \
            self.a_dtype.itemsize
        b_panel = _operand_batch_elements(self.b_batch, self.batch, batch_chunks) * bk * bm * \
            self.b_dtype.itemsize
        out_block = math.prod(batch_chunks) * bn * bm * self.dtype.itemsize
        k_panels = _blocks(self.k, bk)
        budget = self.resources.memory_budget
        fan_in = max(2, min(MAX_FAN_IN, k_panels, budget // max(1, out_block) - 1))
        peak = _peak_task_bytes(a_panel, b_panel, out_block, self.a_dtype, self.b_dtype,
                                self.dtype, k_panels, fan_in, self.panels_from_zarr)
        steps = _blocks(bk, step) if step else 1
        if steps > 1:
            peak = _stream_peak_bytes(a_panel * step // bk, b_panel * step // bk, out_block,
                                      self.a_dtype, self.b_dtype, self.dtype)
        blocks = math.prod(_blocks(s, c) for s, c in zip(self.batch, batch_chunks)) * \
            _blocks(self.n, bn) * _blocks(self.m, bm)
        tasks = blocks * k_panels
        rounds = math.ceil(tasks / self.resources.parallel_tasks)
        flops = 2 * math.prod(batch_chunks) * bn * bk * bm
        rate = FLOPS_PER_THREAD * (4 / max(4, self.dtype.itemsize)) * self.threads_per_task(tasks)
        if all(self.panels_from_zarr):
            # Tasks decode whole chunks from the stores, each panel once per block using it:
            # misaligned blocks and re-reads both cost decode time.
            moved = sum(
                _decoded_elements(**_read_pattern(
                    operand, self.a_shape, self.b_shape, self.batch, batch_chunks, bn,
                    step or bk, bm, chunks)) * dtype.itemsize
                for operand, chunks, dtype in (("a", self.a_chunk_sizes, self.a_dtype),
                                               ("b", self.b_chunk_sizes, self.b_dtype)))
        else:
            moved = tasks * (a_panel + b_panel)
        per_task = flops / rate + moved / tasks / BYTES_PER_SECOND + SECONDS_PER_TASK
        # Streaming adds each step's product into the block: one more pass over it per step.
        per_task += (steps - 1) * 2 * out_block / MEMORY_BYTES_PER_SECOND
        summing = blocks * _tree_tasks(k_panels, fan_in) * (fan_in + 1) * out_block / \
            BYTES_PER_SECOND / self.resources.parallel_tasks
        return _Choice(
            seconds=rounds * per_task + summing, moved=moved,
            batch_chunks=batch_chunks, bn=bn, bk=bk, bm=bm, fan_in=fan_in, tasks=tasks,
            fits=peak <= budget, step=step if steps > 1 else 0,
        )


def _peak_task_bytes(a_panel: int, b_panel: int, out_block: int, a_dtype: np.dtype,
                     b_dtype: np.dtype, dtype: np.dtype, k_panels: int, fan_in: int,
                     panels_from_zarr: tuple[bool, bool]) -> int:
    # A matmul task holds both panels, their casts to the compute dtype, and its product.
    cast_a = a_panel * dtype.itemsize // a_dtype.itemsize if a_dtype != dtype else 0
    cast_b = b_panel * dtype.itemsize // b_dtype.itemsize if b_dtype != dtype else 0
    matmul_task = a_panel + b_panel + cast_a + cast_b + out_block
    # A tree-sum task holds its fan-in of partial products and the running total.
    sum_task = (fan_in + 1) * out_block if k_panels > 1 else 0
    # Assembling a panel from smaller chunks holds the pieces and the panel at once.
    assembly = max(0 if panels_from_zarr[0] else 2 * a_panel,
                   0 if panels_from_zarr[1] else 2 * b_panel)
    return max(matmul_task, sum_task, assembly)


def _stream_peak_bytes(a_step: int, b_step: int, out_block: int, a_dtype: np.dtype,
                       b_dtype: np.dtype, dtype: np.dtype) -> int:
    """A streaming task: this step's panels (and their casts), the next step's panels being
    read, the running block and this step's product."""
    cast_a = a_step * dtype.itemsize // a_dtype.itemsize if a_dtype != dtype else 0
    cast_b = b_step * dtype.itemsize // b_dtype.itemsize if b_dtype != dtype else 0
    return 2 * (a_step + b_step) + cast_a + cast_b + 2 * out_block


def _candidate_sizes(extent: int, chunk: int) -> list[int]:
    """Block sizes worth trying on one axis: multiples of the chunk, even splits, powers of 2."""
    if extent <= 1:
        return [1]
    floor = min(extent, MIN_BLOCK_EDGE)
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


def _operand_batch_elements(operand_batch: tuple[int, ...], batch: tuple[int, ...],
                            batch_chunks: tuple[int, ...]) -> int:
    """Matrices of one operand inside a batch block (broadcast axes hold one)."""
    offset = len(batch) - len(operand_batch)
    return math.prod(1 if size == 1 else batch_chunks[offset + i]
                     for i, size in enumerate(operand_batch))


def _chunk_hints(a_shape, b_shape, a_chunks, b_chunks) -> dict[str, int]:
    """Representative chunk sizes of the inputs along n, k and m (0 when unknown)."""
    def first(chunks, axis):
        return int(chunks[axis][0]) if chunks is not None and chunks[axis] else 0

    n = 0 if len(a_shape) == 1 else first(a_chunks, -2)
    m = 0 if len(b_shape) == 1 else first(b_chunks, -1)
    k = max(first(a_chunks, -1), first(b_chunks, -2 if len(b_shape) > 1 else -1))
    return {"n": n, "k": k, "m": m}


def _chunk_sizes(chunks: Sequence[Sequence[int]] | None) -> tuple[int, ...]:
    """The (regular) chunk size on each axis; () when the chunks are not known."""
    if chunks is None:
        return ()
    return tuple(int(axis[0]) if len(axis) else 0 for axis in chunks)


def _read_pattern(operand: str, a_shape: tuple[int, ...], b_shape: tuple[int, ...],
                  batch: tuple[int, ...], batch_chunks: tuple[int, ...], bn: int, bk: int,
                  bm: int, chunk_sizes: tuple[int, ...]) -> dict[str, Any]:
    """How the in-task reads cover one operand: its extents, block and chunk sizes per axis,
    and how many times each panel is read (once per output block along the axes it lacks)."""
    shape = a_shape if operand == "a" else b_shape
    if len(shape) == 1:
        operand_batch: tuple[int, ...] = ()
        core_blocks = (bk,)
    else:
        operand_batch = shape[:-2]
        core_blocks = (bn, bk) if operand == "a" else (bk, bm)
    offset = len(batch) - len(operand_batch)
    batch_blocks = tuple(1 if size == 1 else batch_chunks[offset + i]
                         for i, size in enumerate(operand_batch))
    # Output batch axes this operand lacks or broadcasts on: its panel is read once per block.
    repeats = math.prod(
        _blocks(batch[axis], batch_chunks[axis]) for axis in range(len(batch))
        if axis < offset or operand_batch[axis - offset] == 1)
    if operand == "a":
        repeats *= 1 if len(b_shape) == 1 else _blocks(b_shape[-1], bm)
    else:
        repeats *= 1 if len(a_shape) == 1 else _blocks(a_shape[-2], bn)
    chunks = chunk_sizes if len(chunk_sizes) == len(shape) else (0,) * len(shape)
    return {"extents": shape, "blocks": batch_blocks + core_blocks, "chunks": chunks,
            "repeats": repeats}


def _decoded_elements(extents: Sequence[int], blocks: Sequence[int], chunks: Sequence[int],
                      repeats: int) -> int:
    """Elements decoded when a regular grid of blocks is read chunk by chunk, ``repeats`` times.

    A block decodes every chunk it touches; the grid is a product of axes, so the total is the
    product of the per-axis totals.
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


def _blocks(extent: int, size: int) -> int:
    return max(1, math.ceil(extent / max(1, size)))


def _tree_tasks(partials: int, fan_in: int) -> int:
    """Add tasks in a tree that reduces ``partials`` blocks with the given fan-in."""
    tasks = 0
    while partials > 1:
        partials = math.ceil(partials / fan_in)
        tasks += partials
    return tasks


def _split_size(block: int, natural: int) -> int:
    """Write a block as the inputs' chunk size when that divides it (cheap slicing), else whole."""
    return natural if 0 < natural < block and block % natural == 0 else block


def _count_chunks(shape: Sequence[int], chunks: Sequence[int]) -> int:
    return math.prod(_blocks(s, c) for s, c in zip(shape, chunks))


def _shape_text(shape: Sequence[int]) -> str:
    return "×".join(map(str, shape)) if len(shape) else "()"


# --- matmul graph --------------------------------------------------------------------------


def matmul(a, b, *, engine: str | None = None,
           memory_budget: int | str | None = None) -> da.Array:
    """Matrix product with :func:`numpy.matmul` semantics, planned against a memory budget.

    Parameters
    ----------
    a, b : str, zarr.Array, dask.array.Array or numpy.ndarray
        Operands; a path is opened with :func:`distconv.open`. 1-D operands and stacks of
        matrices (batch axes broadcast) behave as in NumPy.
    engine : str, optional
        Engine computing each block product; default from config ``distconv.engine``.
    memory_budget : int or str, optional
        Bytes one task may use, e.g. ``"2GiB"``. Default: from the current Dask client's
        workers (call this inside ``with distconv.cluster():``), else this machine.

    Returns
    -------
    dask.array.Array
        Lazy product in ``numpy.result_type(a, b)``; save it with :func:`distconv.save`.

    Raises
    ------
    DistconvError
        Shapes that NumPy would refuse, with NumPy's message.

    Examples
    --------
    >>> import distconv as dc
    >>> with dc.cluster():                                    # doctest: +SKIP
    ...     dc.save(dc.matmul("a.zarr", "b.zarr"), "c.zarr")
    """
    x, y = as_dask_array(a), as_dask_array(b)
    plan = plan_for(x, y, engine=engine, memory_budget=memory_budget)
    result = matmul_with_plan(x, y, plan)
    return remember_provenance(result, {
        "operation": "matmul",
        "parameters": {"engine": engine or get_default("engine")},
        "engine": plan.engine,
        "method": (f"k streamed in {plan.stream_steps} steps per task" if plan.stream_steps > 1
                   else "one k panel" if plan.k_panels == 1
                   else f"{plan.k_panels} k panels, tree sum"),
        # The budget only changes how blocks are computed (like the engine), so a resumed save
        # may use another; the chunks written, which must match, are checked by save().
        "plan": {**plan.summary(), "memory_budget_given": memory_budget},
        "input_shapes": [list(x.shape), list(y.shape)],
        "input_dtypes": [str(x.dtype), str(y.dtype)],
    })


def plan_for(a: da.Array, b: da.Array, *, engine: str | None = None,
             memory_budget: int | str | None = None) -> MatmulPlan:
    """:func:`plan_matmul` for two dask arrays (their chunks and sources taken into account)."""
    return plan_matmul(
        a.shape, b.shape, a.dtype, b.dtype, engine=engine, memory_budget=memory_budget,
        a_chunks=a.chunks, b_chunks=b.chunks,
        panels_from_zarr=(_zarr_source(a) is not None, _zarr_source(b) is not None),
        gpu_chunks=is_gpu_array(a) or is_gpu_array(b),
    )


def matmul_with_plan(a: da.Array, b: da.Array, plan: MatmulPlan) -> da.Array:
    """Build the graph for a plan: panels, one engine call per block pair, tree sum, chunks."""
    batch_ndim = len(plan.batch_shape)
    batch_ind = tuple(f"b{i}" for i in range(batch_ndim))
    a_ind = batch_ind[batch_ndim - (a.ndim - 2):] + ("n", "k") if a.ndim > 1 else ("k",)
    b_ind = batch_ind[batch_ndim - (b.ndim - 2):] + ("k", "m") if b.ndim > 1 else ("k",)
    core_ind = (() if plan.vector_a else ("n",)) + (() if plan.vector_b else ("m",))
    meta = array_module(a._meta).empty((0,) * len(plan.out_shape), dtype=plan.dtype)
    if plan.reads_in_tasks and _zarr_source(a) and _zarr_source(b):
        product = _product_reading_stores(a, b, plan, meta)
        return _as_output_chunks(product, plan)
    a_panels = _as_panels(a, _panel_chunks(a, a_ind, plan))
    b_panels = _as_panels(b, _panel_chunks(b, b_ind, plan))

    if plan.k_panels == 1:
        product = da.blockwise(
            matmul_block, batch_ind + core_ind, a_panels, a_ind, b_panels, b_ind,
            concatenate=True, dtype=plan.dtype, meta=meta, engine=plan.engine,
            dtype_=plan.dtype, blas_threads=plan.blas_threads, partial_axis=None,
        )
    else:
        on_device = _partials_on_device(plan, a)
        xp = _device_module() if on_device else array_module(a._meta)
        partials = da.blockwise(
            matmul_block, batch_ind + ("k",) + core_ind, a_panels, a_ind, b_panels, b_ind,
            adjust_chunks={"k": 1}, dtype=plan.dtype,
            meta=xp.empty((0,) * (len(plan.out_shape) + 1), dtype=plan.dtype),
            engine=plan.engine, dtype_=plan.dtype, blas_threads=plan.blas_threads,
            partial_axis=batch_ndim, on_device=on_device,
        )
        product = _sum_partials(partials, plan,
                                xp.empty((0,) * len(plan.out_shape), dtype=plan.dtype))
        if on_device:
            product = product.map_blocks(to_numpy, dtype=plan.dtype, meta=meta)
    return _as_output_chunks(product, plan)


def _as_output_chunks(product: da.Array, plan: MatmulPlan) -> da.Array:
    """Split computed blocks into the chunks the result is written with (slicing, no copy)."""
    written = tuple(_regular(size, chunk) for size, chunk in zip(plan.out_shape,
                                                                 plan.output_chunks))
    return product if product.chunks == written else product.rechunk(written)


def _sum_partials(partials: da.Array, plan: MatmulPlan, meta) -> da.Array:
    """Tree-sum the length-1 partial-product axis (just after the batch axes) away."""
    axis = len(plan.batch_shape)
    return reduction(
        partials, _keep_partial, _add_partials, combine=_add_partials, axis=axis,
        dtype=plan.dtype, split_every={axis: plan.fan_in}, concatenate=False, meta=meta,
        name="distconv-matmul-sum",
    )


def _product_reading_stores(a: da.Array, b: da.Array, plan: MatmulPlan, meta) -> da.Array:
    """Blocks (or partial products) whose tasks read their own panels from the Zarr stores.

    No panel is held by the scheduler between tasks or copied between workers, so a worker's
    memory stays at its running tasks' panels however large the arrays are.
    """
    chunks = tuple(_regular(size, chunk) for size, chunk in zip(plan.batch_shape,
                                                                plan.batch_chunks))
    partial = plan.k_panels > 1
    if partial:
        chunks += ((1,) * plan.k_panels,)
    chunks += (() if plan.vector_a else (_regular(plan.n, plan.block_n),)) + \
        (() if plan.vector_b else (_regular(plan.m, plan.block_m),))
    on_device = partial and _partials_on_device(plan, a)
    xp = _device_module() if on_device else np
    product = da.map_blocks(
        matmul_stores_block, chunks=chunks, dtype=plan.dtype,
        meta=xp.empty((0,) * len(chunks), dtype=plan.dtype),
        a_store=open_zarr_array(_zarr_source(a)["path"]),
        b_store=open_zarr_array(_zarr_source(b)["path"]), plan=plan, on_device=on_device,
        token="distconv-matmul-read",
    )
    # Carry the inputs' layers: save() finds the source stores (provenance, and its refusal to
    # overwrite an input) by their names; their unused read tasks are culled before computing.
    graph = HighLevelGraph.merge(product.dask, a.dask, b.dask)
    product = da.Array(graph, product.name, product.chunks, meta=product._meta)
    if not partial:
        return product
    product = _sum_partials(product, plan, xp.empty((0,) * len(plan.out_shape), plan.dtype))
    return product.map_blocks(to_numpy, dtype=plan.dtype, meta=meta) if on_device else product


def _partials_on_device(plan: MatmulPlan, a: da.Array) -> bool:
    """A GPU engine's partial products stay on its device through the tree sum; only summed
    blocks come back to the host (CuPy chunks never leave the device at all)."""
    return kernels.ENGINES[plan.engine].device == "gpu" and not is_gpu_array(a)


def matmul_stores_block(plan: MatmulPlan, a_store, b_store, on_device: bool = False,
                        block_info=None):
    """Per-block function of the in-task read path: read both panels, then :func:`matmul_block`.

    ``block_info`` gives the output location; the panels follow from the plan: the same batch
    range (one matrix on broadcast axes), this block's rows of A and columns of B, and the k
    range of this partial product (all of k with one panel). With ``plan.stream_k`` the k range
    is read and multiplied in steps (see :func:`_streamed_product`).
    """
    location = [range(start, stop) for start, stop in block_info[None]["array-location"]]
    batch_ndim = len(plan.batch_shape)
    batch, rest = location[:batch_ndim], location[batch_ndim:]
    if plan.k_panels > 1:
        panel, rest = rest[0].start, rest[1:]
        k = slice(panel * plan.block_k, min(plan.k, (panel + 1) * plan.block_k))
    else:
        k = slice(0, plan.k)
    rows = None if plan.vector_a else slice(rest[0].start, rest[0].stop)
    cols = None if plan.vector_b else slice(rest[-1].start, rest[-1].stop)

    def read(k: slice) -> tuple:
        a_region = _operand_batch_region(plan.a_shape[:-2], batch) + \
            ((k,) if rows is None else (rows, k))
        b_region = _operand_batch_region(plan.b_shape[:-2], batch) + \
            ((k,) if cols is None else (k, cols))
        return _read_panel(a_store, a_region), _read_panel(b_store, b_region)

    if plan.stream_steps > 1:
        steps = [slice(start, min(plan.k, start + plan.stream_k))
                 for start in range(0, plan.k, plan.stream_k)]
        return _streamed_product(read, steps, plan)
    return matmul_block(*read(k), engine=plan.engine, dtype_=plan.dtype,
                        blas_threads=plan.blas_threads,
                        partial_axis=batch_ndim if plan.k_panels > 1 else None,
                        on_device=on_device)


def _streamed_product(read, steps: list[slice], plan: MatmulPlan):
    """Sum of the engine's products over k steps, reading step i+1 while step i multiplies.

    Zarr decodes in threads that release the GIL, so the next panels' decode overlaps the
    GEMM; memory holds two steps' panels, the running block and one step's product. Adding in
    the result dtype wraps integers exactly as one whole-k product would.
    """
    from concurrent.futures import ThreadPoolExecutor

    total = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="distconv-prefetch") as pool:
        pending = pool.submit(read, steps[0])
        for index in range(len(steps)):
            a, b = pending.result()
            if index + 1 < len(steps):
                pending = pool.submit(read, steps[index + 1])
            product = matmul_block(a, b, engine=plan.engine, dtype_=plan.dtype,
                                   blas_threads=plan.blas_threads, partial_axis=None)
            del a, b
            if total is None:  # the engine's own array, or a copy when it cannot be added to
                writable = isinstance(product, np.ndarray) and product.flags.writeable
                total = product if writable else np.array(product)
            else:
                np.add(total, product, out=total)
            del product
    return total


def _read_panel(store, region: tuple):
    """One panel from a Zarr array; a damaged chunk becomes :class:`InputReadError` (bad input,
    as for chunks read by :func:`distconv.open`), naming the store and the panel."""
    try:
        return store[region]
    except Exception as exc:
        where = ", ".join(f"{s.start}:{s.stop}" for s in region)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InputReadError(f"{_store_name(store)}: the panel [{where}] cannot be read "
                             f"({type(exc).__name__}: {reason}); the input is damaged") from None


def _store_name(store) -> str:
    """The path of a Zarr array on a local store (the URL-like store path elsewhere)."""
    root = getattr(store.store_path.store, "root", None)
    if root is None:
        return str(store.store_path)
    return os.path.join(str(root), store.store_path.path) if store.store_path.path else str(root)


def _operand_batch_region(operand_batch: tuple[int, ...], batch: list[range]) -> tuple:
    """An operand's slices on the (right-aligned) batch axes; broadcast axes keep their one."""
    offset = len(batch) - len(operand_batch)
    return tuple(slice(0, 1) if size == 1 else slice(batch[offset + i].start,
                                                     batch[offset + i].stop)
                 for i, size in enumerate(operand_batch))


def _panel_chunks(x: da.Array, index: tuple[str, ...], plan: MatmulPlan) -> tuple:
    """Chunks one operand needs: the plan's blocks, one chunk on broadcast (size-1) axes."""
    sizes = {"n": plan.block_n, "k": plan.block_k, "m": plan.block_m}
    sizes.update({f"b{i}": c for i, c in enumerate(plan.batch_chunks)})
    return tuple(_regular(extent, 1 if extent == 1 else sizes[name])
                 for extent, name in zip(x.shape, index))


def _as_panels(x: da.Array, chunks: tuple) -> da.Array:
    """``x`` in panel chunks: read straight from its Zarr store when it is one, else rechunked.

    Reading a panel from the store in one task avoids assembling it from small chunks (a copy,
    and twice the memory while it happens).
    """
    if x.chunks == chunks:
        return x
    source = _zarr_source(x)
    if source is None:
        return x.rechunk(chunks)
    panels = da.from_zarr(open_zarr_array(source["path"]), chunks=chunks)
    # save() finds inputs (provenance, and the refusal to overwrite an input) by layer name.
    return remember_source(panels, source)


def _zarr_source(x: da.Array) -> dict[str, Any] | None:
    """The store record of an array opened by :func:`distconv.open` and not yet transformed."""
    record = source_of(x)
    return record if record and record.get("zarr_format") else None


def _regular(extent: int, size: int) -> tuple[int, ...]:
    size = max(1, min(size, extent)) if extent else 1
    if extent == 0:
        return (0,)
    return (size,) * (extent // size) + ((extent % size,) if extent % size else ())


def matmul_block(a, b, *, engine: str, dtype_: np.dtype, blas_threads: int,
                 partial_axis: int | None, on_device: bool = False):
    """Per-block function: cast to the result dtype, run the engine's matmul with BLAS threads
    limited to this task's share, and add a length-1 axis for a partial product to be summed.

    ``on_device`` moves host blocks to the GPU first, so a GPU engine returns its partial
    product on the device, where the tree sum adds it.
    """
    if on_device:
        xp = _device_module()
        a, b = xp.asarray(a), xp.asarray(b)
    a = a.astype(dtype_, copy=False)
    b = b.astype(dtype_, copy=False)
    with limit_blas_threads(blas_threads):
        out = kernels.get_op(engine, _MATMUL_OP)(a, b)
    if partial_axis is not None:
        out = out.reshape(out.shape[:partial_axis] + (1,) + out.shape[partial_axis:])
    return out


def _device_module():
    """CuPy, imported only when a GPU engine runs (``import distconv`` never imports it)."""
    import cupy

    return cupy


def _keep_partial(x, axis=None, keepdims=None):
    """Reduction's per-chunk step: a partial product is already what the tree adds."""
    return x


def _add_partials(parts, axis=None, keepdims=False, dtype=None):
    """Sum partial products (length 1 along ``axis``) in place, in their own array type."""
    if not isinstance(parts, list):
        parts = [parts]
    xp = array_module(parts[0])
    total = parts[0].astype(dtype or parts[0].dtype, copy=True)
    for part in parts[1:]:
        xp.add(total, part, out=total)
    if keepdims:
        return total
    (axis,) = axis if isinstance(axis, tuple) else (axis,)
    return total.reshape(total.shape[:axis] + total.shape[axis + 1:])


# --- BLAS threads --------------------------------------------------------------------------

_BLAS_LOCK = threading.Lock()
_BLAS_STATE: dict[str, Any] = {"users": 0, "limit": None}


@contextlib.contextmanager
def limit_blas_threads(threads: int) -> Iterator[None]:
    """Limit BLAS (OpenBLAS/MKL/BLIS) to ``threads`` while any task in this process runs.

    BLAS thread pools are process-wide, so concurrent tasks share one limit: the first task in
    sets it, the last one out restores the previous setting. Inside a Dask worker this keeps
    ``nthreads`` tasks from each starting a pool of every core.
    """
    with _BLAS_LOCK:
        if _BLAS_STATE["users"] == 0:
            # A fresh controller each time: libraries loaded since the last task (another
            # engine's BLAS) are limited too, and a controller kept from before can go stale.
            from threadpoolctl import ThreadpoolController

            _BLAS_STATE["limit"] = ThreadpoolController().limit(limits=int(threads),
                                                                user_api="blas")
        _BLAS_STATE["users"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_STATE["users"] -= 1
            if _BLAS_STATE["users"] == 0:
                _BLAS_STATE["limit"].restore_original_limits()
                _BLAS_STATE["limit"] = None


# --- multiply ------------------------------------------------------------------------------


def multiply(a, b, *, engine: str | None = None) -> da.Array:
    """Element-wise product with :func:`numpy.multiply` semantics, block by block.

    Parameters
    ----------
    a, b : str, zarr.Array, dask.array.Array, numpy.ndarray or scalar
        Operands whose shapes broadcast; a path is opened with :func:`distconv.open`. A Python
        scalar is promoted weakly, as NumPy 2 does (``float32 array * 0.5`` stays float32).
    engine : str, optional
        Engine computing each block; default from config ``distconv.engine``.

    Returns
    -------
    dask.array.Array
        Lazy product chunked like the broadcast inputs, in NumPy's result dtype.

    Raises
    ------
    DistconvError
        Shapes that do not broadcast, or a scalar out of range for the array's integer dtype,
        with NumPy's message.
    """
    if _is_scalar(a) and _is_scalar(b):
        raise DistconvError("multiply needs at least one array operand")
    if _is_scalar(a):  # multiplication commutes; keep the array first
        a, b = b, a
    x = as_dask_array(a)
    if _is_scalar(b):
        dtype = _scalar_result_dtype(x.dtype, b)
        y = None
        scalar = _scalar_as(b, dtype)
        out_shape = x.shape
    else:
        y = as_dask_array(b)
        scalar = None
        dtype = np.result_type(x.dtype, y.dtype)
        out_shape = _broadcast_shape(x.shape, y.shape)
    name = kernels.resolve_engine(engine or get_default("engine"), _MULTIPLY_OP, len(out_shape),
                                  dtype, gpu_chunks=is_gpu_array(x) or is_gpu_array(y))
    meta = array_module(x._meta).empty((0,) * len(out_shape), dtype=dtype)
    if y is None:
        product = x.map_blocks(multiply_block, b=scalar, dtype=dtype, meta=meta, engine=name,
                               dtype_=dtype, token="distconv-multiply")
    else:
        out_ind = tuple(range(len(out_shape)))
        product = da.blockwise(
            multiply_block, out_ind, x, out_ind[len(out_shape) - x.ndim:],
            y, out_ind[len(out_shape) - y.ndim:], dtype=dtype, meta=meta, engine=name,
            dtype_=dtype, token="distconv-multiply",
        )
    return remember_provenance(product, {
        "operation": "multiply",
        "parameters": {"engine": engine or get_default("engine"),
                       "scalar": None if scalar is None else scalar.item()},
        "engine": name,
        "method": "elementwise",
        "input_shapes": [list(x.shape)] + ([] if y is None else [list(y.shape)]),
        "input_dtypes": [str(x.dtype)] + ([] if y is None else [str(y.dtype)]),
    })


def multiply_block(a, b, *, engine: str, dtype_: np.dtype):
    """Per-block function: both operands in the result dtype, then the engine's multiply."""
    return kernels.get_op(engine, _MULTIPLY_OP)(a.astype(dtype_, copy=False),
                                                b.astype(dtype_, copy=False))


def _is_scalar(value) -> bool:
    return isinstance(value, (Number, np.generic)) or \
        (isinstance(value, np.ndarray) and value.ndim == 0)


def _scalar_result_dtype(dtype: np.dtype, scalar) -> np.dtype:
    # Python scalars are "weak" in NumPy 2 (int8 array * 3 stays int8); NumPy scalars are not.
    value = scalar if isinstance(scalar, np.generic) or not isinstance(scalar, np.ndarray) \
        else scalar.dtype
    return np.result_type(dtype, value)


def _scalar_as(scalar, dtype: np.dtype) -> np.ndarray:
    try:
        return np.asarray(scalar, dtype=dtype)
    except OverflowError as exc:  # NumPy refuses int8 array * 1000 the same way
        raise DistconvError(str(exc)) from None


def _broadcast_shape(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return np.broadcast_shapes(a_shape, b_shape)
    except ValueError:
        _raise_numpy_error(np.multiply, a_shape, b_shape)


def _raise_numpy_error(ufunc, a_shape: tuple[int, ...], b_shape: tuple[int, ...]):
    """Raise NumPy's own message for shapes it refuses (checked on zero-stride stand-ins)."""
    stand_in = np.empty((), dtype=np.float64)
    try:
        ufunc(np.broadcast_to(stand_in, a_shape), np.broadcast_to(stand_in, b_shape))
    except ValueError as exc:
        raise DistconvError(str(exc).strip()) from None
    raise DistconvError(f"{ufunc.__name__}: shapes {a_shape} and {b_shape} are not compatible")
