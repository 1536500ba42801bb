"""A convolution or correlation planned, not built: what ``distconv convolve --dry-run`` prints.

:func:`plan_convolve` and :func:`plan_correlate` take the arguments of
:func:`~distconv.ops.convolve.convolve` and return the :class:`FilterPlan` the graph would be
built from: the tiles (:mod:`distconv.plan.tiles`), tasks, bytes decoded, halo, peak memory per
task, and the method and engine each tile shape gets.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from distconv.clusters.resources import Resources
from distconv.io import as_dask_array
from distconv.ops.convolve import correlate, correlation_plan, correlation_tiles, output_dtype
from distconv.plan import CorrelationPlan
from distconv.plan.tiles import TilePlan
from distconv.provenance import source_of

__all__ = ["FilterPlan", "plan_convolve", "plan_correlate", "plan_filter"]


@dataclass(frozen=True)
class FilterPlan:
    """A correlation (or convolution) and the tiles it runs on."""

    operation: str  # "convolve" or "correlate"
    input_shape: tuple[int, ...]
    input_dtype: np.dtype
    source: str | None  # the store read, if any
    weights_shape: tuple[int, ...]
    correlation: CorrelationPlan
    tiles: TilePlan

    # The tiles' own figures (tasks: one per tile for each stage: read, halo, compute, write).
    tile_shape = property(lambda self: self.tiles.tile_shape)
    tasks = property(lambda self: self.tiles.tasks)
    bytes_decoded = property(lambda self: self.tiles.bytes_decoded)
    peak_task_bytes = property(lambda self: self.tiles.peak_task_bytes)

    def per_tile(self) -> list[tuple[tuple[int, ...], int, str, str]]:
        """(tile shape, how many tiles, method, engine) for each distinct tile shape, largest
        first (the method is chosen per tile by the cost model when it is "auto")."""
        # Chunks thinner than the halo are merged into their neighbour before the halo
        # exchange, so the shapes are those of the merged tiles.
        from distconv.ops.halo import merge_small_chunks

        axes = [
            Counter(merge_small_chunks(axis, d))
            for axis, d in zip(self.tiles.chunks, self.correlation.depth)
        ]
        rows = []
        for combination in itertools.product(*[sorted(a.items(), reverse=True) for a in axes]):
            shape = tuple(size for size, _ in combination)
            count = math.prod(n for _, n in combination)
            method = self.correlation.method_for(shape)
            rows.append((shape, count, method, self.correlation.engines[method]))
        return rows

    def describe(self) -> str:
        """Several lines for ``distconv convolve --dry-run``."""
        text = _shape_text
        plan = self.correlation
        where = f" ({self.source})" if self.source else ""
        lines = [
            f"{self.operation} plan: {text(self.input_shape)} {self.input_dtype}{where} with "
            f"{text(self.weights_shape)} weights -> {plan.out_dtype} (computed in "
            f"{plan.compute_dtype}), mode {plan.mode}",
            self.tiles.describe(),
            "  method per tile:   "
            + "; ".join(
                f"{text(shape)} x{count}: {method} on {engine}"
                for shape, count, method, engine in self.per_tile()
            ),
        ]
        return "\n".join(lines)

    def table_rows(self) -> list[tuple[str, str]]:
        """(field, value) rows of the facts :meth:`describe` prints, for a notebook's table."""
        text = _shape_text
        plan = self.correlation
        per_tile = self.per_tile()
        rows = [("operation", self.operation)]
        if self.source:
            rows.append(("source", self.source))
        rows += [
            ("input shape", text(self.input_shape)),
            ("input dtype", str(self.input_dtype)),
            ("weights shape", text(self.weights_shape)),
            ("output dtype", str(plan.out_dtype)),
            ("compute dtype", str(plan.compute_dtype)),
            ("mode", str(plan.mode)),
            *self.tiles.table_rows(),
            ("engine", ", ".join(sorted({engine for *_, engine in per_tile}))),
            (
                "method per tile",
                "; ".join(
                    f"{text(shape)} x{count}: {method} on {engine}"
                    for shape, count, method, engine in per_tile
                ),
            ),
        ]
        return rows

    def _repr_html_(self) -> str:
        from distconv._html import html_table

        return html_table(self.table_rows(), title=f"{self.operation} plan")

    def __repr__(self) -> str:
        where = f" of {self.source}" if self.source else ""
        return (
            f"<FilterPlan {self.operation}{where}: {_shape_text(self.input_shape)} "
            f"{self.input_dtype} with {_shape_text(self.weights_shape)} weights, "
            f"{self.tasks:,} tile(s) of {_shape_text(self.tile_shape)}>"
        )

    def summary(self) -> dict[str, Any]:
        """The plan as plain values."""
        return {
            **self.tiles.summary(),
            "methods": [
                {"tile": list(s), "count": n, "method": m, "engine": e}
                for s, n, m, e in self.per_tile()
            ],
        }


def plan_filter(
    *args: Any, convolution: bool = False, resources: Resources | None = None, **kwargs: Any
) -> FilterPlan:
    """The plan of :func:`~distconv.ops.convolve.correlate` (``convolution=False``) or
    :func:`~distconv.ops.convolve.convolve` on these arguments, without building a graph.

    Parameters
    ----------
    *args, **kwargs
        The arguments of :func:`~distconv.ops.convolve.correlate` (``input, weights, output,
        mode, cval, origin``, scipy.ndimage's order, then ``axes``, ``method``, ``engine``,
        ``dtype``), checked against its signature.
    convolution : bool
        Plan a convolution.
    resources : Resources, optional
        Threads and per-task memory to plan for (default: the current Dask client's workers,
        else this machine).

    Returns
    -------
    FilterPlan
    """
    bound = inspect.signature(correlate).bind(*args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    x = as_dask_array(a["input"])
    plan = correlation_plan(
        x,
        a["weights"],
        a["mode"],
        a["cval"],
        a["origin"],
        a["axes"],
        a["method"],
        a["engine"],
        output_dtype(a["output"], a["dtype"]),
        convolution,
    )
    record = source_of(x)
    return FilterPlan(
        operation="convolve" if convolution else "correlate",
        input_shape=tuple(x.shape),
        input_dtype=x.dtype,
        source=record["path"] if record else None,
        weights_shape=tuple(np.shape(a["weights"])),
        correlation=plan,
        tiles=correlation_tiles(x, plan, resources),
    )


def plan_convolve(*args: Any, **kwargs: Any) -> FilterPlan:
    """The :class:`FilterPlan` :func:`distconv.convolve` would run on the same arguments
    (``resources=`` as for :func:`plan_filter`)."""
    return plan_filter(*args, convolution=True, **kwargs)


def plan_correlate(*args: Any, **kwargs: Any) -> FilterPlan:
    """The :class:`FilterPlan` :func:`distconv.correlate` would run on the same arguments
    (``resources=`` as for :func:`plan_filter`)."""
    return plan_filter(*args, convolution=False, **kwargs)


def _shape_text(shape: Sequence[int]) -> str:
    return "×".join(map(str, shape)) if len(shape) else "()"
