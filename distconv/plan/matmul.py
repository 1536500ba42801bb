"""The matrix product's plan: block sizes, k panels, tree fan-in and threads under a memory budget.

The k panel comes first -- the whole contraction axis when it fits, so each output block is one
engine call and no partial sums exist -- then the n, m (and batch) block sizes that the cost
model of :mod:`._block_search` says finish soonest; a k axis that does not fit is split into
panels summed in a tree, or (CPU tasks reading their own panels from Zarr) streamed in steps
inside the task. Pure: the cluster is asked (:mod:`distconv.clusters.resources`) only when
:func:`plan_matmul` gets no ``resources``; :mod:`distconv.ops.matmul` builds the graph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distconv import kernels
from distconv.clusters.resources import SAFETY_FRACTION, Resources
from distconv.config import get_default
from distconv.plan._block_search import (
    BYTES_PER_SECOND,
    FLOPS_PER_THREAD,
    MAX_FAN_IN,
    MEMORY_BYTES_PER_SECOND,
    MIN_BLOCK_EDGE,
    SECONDS_PER_TASK,
    BlockSearch,
    block_count,
    decoded_elements,
    operand_batch_elements,
    peak_task_bytes,
    read_pattern,
    stream_peak_bytes,
    tree_tasks,
)
from distconv.plan.broadcast import raise_numpy_error

__all__ = [
    "BYTES_PER_SECOND",
    "FLOPS_PER_THREAD",
    "MATMUL_OP",
    "MAX_FAN_IN",
    "MEMORY_BYTES_PER_SECOND",
    "MIN_BLOCK_EDGE",
    "SAFETY_FRACTION",
    "SECONDS_PER_TASK",
    "MatmulPlan",
    "Resources",
    "matmul_result_shape",
    "plan_matmul",
]

# The engine operation a matmul block runs (see :mod:`distconv.kernels`).
MATMUL_OP = "matmul"


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
        return block_count(self.k, self.block_k)

    @property
    def batch_blocks(self) -> int:
        return math.prod(block_count(s, c) for s, c in zip(self.batch_shape, self.batch_chunks))

    @property
    def output_blocks(self) -> int:
        return (
            self.batch_blocks
            * block_count(self.n, self.block_n)
            * block_count(self.m, self.block_m)
        )

    @property
    def matmul_tasks(self) -> int:
        return self.output_blocks * self.k_panels

    @property
    def stream_steps(self) -> int:
        """Steps in which one task reads and multiplies its k range (1: all at once)."""
        return block_count(self.k, self.stream_k) if self.stream_k else 1

    @property
    def sum_tasks(self) -> int:
        return self.output_blocks * tree_tasks(self.k_panels, self.fan_in)

    @property
    def output_chunks(self) -> tuple[int, ...]:
        """Chunk sizes of the result (and of the Zarr array it is saved to)."""
        n_chunk = _split_size(self.block_n, self.natural_chunks[0])
        m_chunk = _split_size(self.block_m, self.natural_chunks[1])
        return (
            tuple(self.batch_chunks)
            + (() if self.vector_a else (n_chunk,))
            + (() if self.vector_b else (m_chunk,))
        )

    @property
    def flops(self) -> int:
        """Multiply-adds counted as two operations: ``2·batch·n·k·m``."""
        return 2 * math.prod(self.batch_shape) * self.n * self.k * self.m

    # -- bytes --
    def _a_batch_per_block(self) -> int:
        return operand_batch_elements(self.a_shape[:-2], self.batch_shape, self.batch_chunks)

    def _b_batch_per_block(self) -> int:
        return operand_batch_elements(self.b_shape[:-2], self.batch_shape, self.batch_chunks)

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
        return (
            math.prod(self.a_shape) * self.a_dtype.itemsize,
            math.prod(self.b_shape) * self.b_dtype.itemsize,
        )

    @property
    def operand_bytes_read(self) -> tuple[int, int]:
        """Bytes of A and of B decoded from the inputs by the whole graph.

        With in-task reads each task decodes the whole chunks its panels touch, and a panel is
        read once per output block that needs it: A's once per block along m (and along batch
        axes A broadcasts on), B's once per block along n. Shared panels read each input once.
        """
        if not self.reads_in_tasks:
            return self.input_bytes
        return (
            decoded_elements(**self._read_pattern("a")) * self.a_dtype.itemsize,
            decoded_elements(**self._read_pattern("b")) * self.b_dtype.itemsize,
        )

    @property
    def bytes_read(self) -> int:
        """Bytes read from the inputs (stores or upstream graph), re-reads included."""
        return sum(self.operand_bytes_read)

    def _read_pattern(self, operand: str) -> dict[str, Any]:
        """Axes, block sizes, chunk sizes and repeat count of one operand's panel reads."""
        return read_pattern(
            operand,
            self.a_shape,
            self.b_shape,
            self.batch_shape,
            self.batch_chunks,
            self.block_n,
            self.stream_k or self.block_k,
            self.block_m,
            self.a_chunk_sizes if operand == "a" else self.b_chunk_sizes,
        )

    @property
    def peak_task_bytes(self) -> int:
        """Largest memory one task holds: a matmul task, a tree-sum task, or a panel copy."""
        if self.stream_steps > 1:
            return stream_peak_bytes(
                self._step_bytes(self.a_panel_bytes),
                self._step_bytes(self.b_panel_bytes),
                self.out_block_bytes,
                self.a_dtype,
                self.b_dtype,
                self.dtype,
            )
        return peak_task_bytes(
            self.a_panel_bytes,
            self.b_panel_bytes,
            self.out_block_bytes,
            self.a_dtype,
            self.b_dtype,
            self.dtype,
            self.k_panels,
            self.fan_in,
            self.panels_from_zarr,
        )

    def describe(self) -> str:
        """Several lines for ``distconv matmul --dry-run``."""
        from distconv.plan.matmul_text import describe_matmul

        return describe_matmul(self)

    def table_rows(self) -> list[tuple[str, str]]:
        """(field, value) rows of the facts :meth:`describe` prints, for a notebook's table."""
        from distconv.plan.matmul_text import matmul_rows

        return matmul_rows(self)

    def _repr_html_(self) -> str:
        from distconv.plan.matmul_text import matmul_html

        return matmul_html(self)

    def __repr__(self) -> str:
        from distconv.plan.matmul_text import matmul_repr

        return matmul_repr(self)

    def _step_bytes(self, panel_bytes: int) -> int:
        return panel_bytes * self.stream_k // self.block_k

    def summary(self) -> dict[str, Any]:
        """The plan as plain values, for provenance."""
        return {
            "batch_chunks": list(self.batch_chunks),
            "block_n": self.block_n,
            "block_k": self.block_k,
            "block_m": self.block_m,
            "k_panels": self.k_panels,
            "stream_k": self.stream_k,
            "fan_in": self.fan_in,
            "blas_threads": self.blas_threads,
            "memory_budget": self.resources.memory_budget,
            "peak_task_bytes": self.peak_task_bytes,
            "bytes_read": self.bytes_read,
        }


def matmul_result_shape(a_shape: Sequence[int], b_shape: Sequence[int]) -> tuple[int, ...]:
    """The shape :func:`numpy.matmul` returns for operands of these shapes.

    1-D operands and stacks of matrices are taken as NumPy takes them; shapes NumPy refuses
    raise :class:`DistconvError` with NumPy's message.
    """
    a_shape, b_shape = tuple(a_shape), tuple(b_shape)
    if not a_shape or not b_shape:
        raise_numpy_error(np.matmul, a_shape, b_shape)
    a_core = a_shape[-2:] if len(a_shape) > 1 else (1,) + a_shape
    b_core = b_shape[-2:] if len(b_shape) > 1 else b_shape + (1,)
    if a_core[1] != b_core[0]:
        raise_numpy_error(np.matmul, a_shape, b_shape)
    try:
        batch = np.broadcast_shapes(a_shape[:-2], b_shape[:-2])
    except ValueError:
        raise_numpy_error(np.matmul, a_shape, b_shape)
    return (
        batch
        + (a_shape[-2:-1] if len(a_shape) > 1 else ())
        + (b_shape[-1:] if len(b_shape) > 1 else ())
    )


def plan_matmul(
    a_shape: Sequence[int],
    b_shape: Sequence[int],
    a_dtype,
    b_dtype,
    *,
    engine: str | None = None,
    memory_budget: int | str | None = None,
    a_chunks: Sequence[Sequence[int]] | None = None,
    b_chunks: Sequence[Sequence[int]] | None = None,
    panels_from_zarr: tuple[bool, bool] = (False, False),
    gpu_chunks: bool = False,
    resources: Resources | None = None,
) -> MatmulPlan:
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
    name = kernels.resolve_engine(
        engine or get_default("engine"),
        MATMUL_OP,
        max(len(a_shape), len(b_shape)),
        dtype,
        gpu_chunks=gpu_chunks,
    )
    # Imported here: asking a cluster is the one impure step, taken only when planning.
    from distconv.clusters.resources import budget_bytes, detect_resources

    if resources is None:
        resources = detect_resources(memory_budget)
    elif memory_budget is not None:
        resources = Resources(
            resources.parallel_tasks, resources.cores_per_task, budget_bytes(memory_budget), "given"
        )
    a_shape, b_shape = tuple(a_shape), tuple(b_shape)
    hints = _chunk_hints(a_shape, b_shape, a_chunks, b_chunks)
    # What the search scores with, and the plan records, alike.
    operands = {
        "a_shape": a_shape,
        "b_shape": b_shape,
        "a_dtype": np.dtype(a_dtype),
        "b_dtype": np.dtype(b_dtype),
        "dtype": dtype,
        "resources": resources,
        "panels_from_zarr": panels_from_zarr,
        "a_chunk_sizes": _chunk_sizes(a_chunks),
        "b_chunk_sizes": _chunk_sizes(b_chunks),
    }
    search = BlockSearch(
        **operands,
        batch=out_shape[: len(out_shape) - (len(a_shape) > 1) - (len(b_shape) > 1)],
        n=1 if len(a_shape) == 1 else a_shape[-2],
        k=a_shape[-1],
        m=1 if len(b_shape) == 1 else b_shape[-1],
        streams=not kernels.is_gpu_engine(name),
    )
    choice = search.best(hints)
    return MatmulPlan(
        **operands,
        engine=name,
        blas_threads=search.threads_per_task(choice.tasks),
        natural_chunks=(hints["n"], hints["m"]),
        # The chosen candidate's blocks, k step and estimate.
        batch_chunks=choice.batch_chunks,
        block_n=choice.bn,
        block_k=choice.bk,
        block_m=choice.bm,
        fan_in=choice.fan_in,
        stream_k=choice.step,
        fits_budget=choice.fits,
        estimated_seconds=choice.seconds,
    )


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


def _split_size(block: int, natural: int) -> int:
    """Write a block as the inputs' chunk size when that divides it (cheap slicing), else whole."""
    return natural if 0 < natural < block and block % natural == 0 else block
