"""How a :class:`~distconv.plan.matmul.MatmulPlan` reads to a person: the ``--dry-run`` lines,
a notebook's table and its repr.

The plan's methods (``describe``, ``table_rows``, ``_repr_html_``, ``__repr__``) call these;
this module does not import :mod:`distconv.plan.matmul` (which imports it inside those methods).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from dask.utils import format_bytes

from distconv.plan._block_search import block_count

__all__ = ["describe_matmul", "matmul_html", "matmul_repr", "matmul_rows"]


def describe_matmul(plan: Any) -> str:
    """Several lines for ``distconv matmul --dry-run`` (``plan``: a ``MatmulPlan``)."""
    shape = _shape_text
    k_line = (
        "one k panel: each output block is one engine call, no partial sums"
        if plan.k_panels == 1 and plan.stream_steps == 1
        else f"one task per output block reads k in {plan.stream_steps} steps of "
        f"{plan.stream_k} (the next step is read while the engine multiplies) and "
        "adds them up in place: no partial sums between tasks"
        if plan.k_panels == 1
        else f"{plan.k_panels} k panels of {plan.block_k}: partial products summed in a "
        f"tree of fan-in {plan.fan_in}"
    )
    if plan.reads_in_tasks:
        sources = "each task reads its panels from the Zarr stores"
    else:
        sources = " and ".join(
            f"{name} {'read from Zarr in panels' if direct else 'rechunked to panels'}"
            for name, direct in zip("AB", plan.panels_from_zarr)
        )
    lines = [
        f"matmul plan: {shape(plan.a_shape)} {plan.a_dtype} @ {shape(plan.b_shape)} "
        f"{plan.b_dtype} -> {shape(plan.out_shape)} {plan.dtype}",
        f"  engine:            {plan.engine}, {_threads_text(plan)}, "
        f"{plan.resources.parallel_tasks} task(s) at once",
        f"  memory budget:     {format_bytes(plan.resources.memory_budget)} per task "
        f"({plan.resources.budget_source})",
        f"  blocks:            batch {shape(plan.batch_chunks)}, n {plan.block_n}, "
        f"k {plan.block_k}, m {plan.block_m}",
        f"  contraction:       {k_line}",
        f"  panels:            A {format_bytes(plan.a_panel_bytes)}, "
        f"B {format_bytes(plan.b_panel_bytes)}"
        + (
            ""
            if plan.stream_steps == 1
            else f", read in steps of A {format_bytes(plan._step_bytes(plan.a_panel_bytes))}, "
            f"B {format_bytes(plan._step_bytes(plan.b_panel_bytes))}"
        )
        + f"; {sources}",
        f"  output chunks:     {plan.output_blocks} block(s) computed, written as "
        f"{_count_chunks(plan.out_shape, plan.output_chunks)} chunk(s) of "
        f"{shape(plan.output_chunks)}",
        f"  tasks:             {plan.matmul_tasks} matmul + {plan.sum_tasks} tree-sum",
        f"  bytes read:        {format_bytes(plan.bytes_read)} from the inputs "
        f"({_reads_text(plan)})"
        + (
            ""
            if plan.reads_in_tasks
            else f"; {format_bytes(plan.panel_bytes_moved)} of panels into tasks"
        ),
        f"  peak memory/task:  {format_bytes(plan.peak_task_bytes)}"
        + ("" if plan.fits_budget else "  (OVER the budget: no smaller blocks exist)")
        + (
            ""
            if plan.reads_in_tasks
            else " (a worker also holds shared panels waiting for their other tasks)"
        ),
        f"  FLOPs:             {plan.flops:.3e}",
        f"  estimated time:    {plan.estimated_seconds:.1f} s (cost model, not a measurement)",
    ]
    return "\n".join(lines)


def matmul_rows(plan: Any) -> list[tuple[str, str]]:
    """(field, value) rows of the facts :func:`describe_matmul` prints, for a notebook's table."""
    shape = _shape_text
    fits = "" if plan.fits_budget else " (OVER the budget: no smaller blocks exist)"
    return [
        ("A", f"{shape(plan.a_shape)} {plan.a_dtype}"),
        ("B", f"{shape(plan.b_shape)} {plan.b_dtype}"),
        ("output shape", shape(plan.out_shape)),
        ("output dtype", str(plan.dtype)),
        ("engine", plan.engine),
        ("threads", f"{_threads_text(plan)}, {plan.resources.parallel_tasks} task(s) at once"),
        (
            "memory budget",
            f"{format_bytes(plan.resources.memory_budget)} per task "
            f"({plan.resources.budget_source})",
        ),
        (
            "blocks",
            f"batch {shape(plan.batch_chunks)}, n {plan.block_n}, k {plan.block_k}, "
            f"m {plan.block_m}",
        ),
        ("k panels", f"{plan.k_panels} (tree fan-in {plan.fan_in})"),
        (
            "output chunks",
            f"{shape(plan.output_chunks)}: {plan.output_blocks} block(s) computed",
        ),
        ("tasks", f"{plan.matmul_tasks} matmul + {plan.sum_tasks} tree-sum"),
        ("bytes read", f"{format_bytes(plan.bytes_read)} ({_reads_text(plan)})"),
        ("peak memory/task", f"{format_bytes(plan.peak_task_bytes)}{fits}"),
        ("FLOPs", f"{plan.flops:.3e}"),
        ("estimated time", f"{plan.estimated_seconds:.1f} s (cost model)"),
    ]


def matmul_html(plan: Any) -> str:
    """:func:`matmul_rows` as an HTML table (a notebook's display of the plan)."""
    from distconv._html import html_table

    return html_table(matmul_rows(plan), title="matmul plan")


def matmul_repr(plan: Any) -> str:
    """One line: the shapes, the engine and the block sizes."""
    return (
        f"<MatmulPlan {_shape_text(plan.a_shape)} @ {_shape_text(plan.b_shape)} -> "
        f"{_shape_text(plan.out_shape)} {plan.dtype} on {plan.engine}: blocks n "
        f"{plan.block_n}, k {plan.block_k}, m {plan.block_m}>"
    )


def _reads_text(plan: Any) -> str:
    """How often each input is read: re-reads cost decode time, so the plan keeps them few."""
    parts = []
    for name, read, size in zip("AB", plan.operand_bytes_read, plan.input_bytes):
        parts.append(f"{name} {read / size:.2f}x" if size else f"{name} empty")
    total = sum(plan.input_bytes)
    ratio = f"{plan.bytes_read / total:.2f}x" if total else "-"
    return f"{ratio} the inputs' {format_bytes(total)}: " + ", ".join(parts)


def _threads_text(plan: Any) -> str:
    if plan.engine == "tensorflow":  # its pools are fixed when TensorFlow starts
        return "TensorFlow's intra-op pool sized to the worker's threads"
    return f"{plan.blas_threads} BLAS thread(s) per task"


def _count_chunks(shape: Sequence[int], chunks: Sequence[int]) -> int:
    return math.prod(block_count(s, c) for s, c in zip(shape, chunks))


def _shape_text(shape: Sequence[int]) -> str:
    return "×".join(map(str, shape)) if len(shape) else "()"
