"""A convolution or correlation planned, not built: what ``distconv convolve --dry-run`` prints.

:func:`plan_convolve` and :func:`plan_correlate` take the arguments of
:func:`~distconv.ops.convolve.convolve` and return the :class:`FilterPlan` the graph would be
built from: the tiles (:mod:`distconv.plan.tiles`), tasks, bytes decoded, halo, peak memory per
task, and the method and engine each tile shape gets.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from distconv.backend import is_gpu_array
from distconv.clusters.resources import Resources
from distconv.config import get_default
from distconv.io import as_dask_array
from distconv.ops.convolve import correlation_tiles
from distconv.plan import CorrelationPlan, plan_correlation
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

    @property
    def tile_shape(self) -> tuple[int, ...]:
        return self.tiles.tile_shape

    @property
    def tasks(self) -> int:
        """Tiles: one task per tile for each stage (read, halo, compute, write)."""
        return self.tiles.tasks

    @property
    def bytes_decoded(self) -> int:
        return self.tiles.bytes_decoded

    @property
    def peak_task_bytes(self) -> int:
        return self.tiles.peak_task_bytes

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
    input,
    weights,
    mode: str = "reflect",
    cval: float = 0.0,
    origin=0,
    *,
    axes: Sequence[int] | None = None,
    method: str | None = None,
    engine: str | None = None,
    dtype=None,
    convolution: bool = False,
    resources: Resources | None = None,
) -> FilterPlan:
    """The plan of :func:`~distconv.ops.convolve.correlate` (``convolution=False``) or
    :func:`~distconv.ops.convolve.convolve` on these arguments, without building a graph.

    Parameters
    ----------
    input, weights, mode, cval, origin, axes, method, engine, dtype
        As for :func:`~distconv.ops.convolve.correlate`.
    convolution : bool
        Plan a convolution.
    resources : Resources, optional
        Threads and per-task memory to plan for (default: the current Dask client's workers,
        else this machine).

    Returns
    -------
    FilterPlan
    """
    x = as_dask_array(input)
    plan = plan_correlation(
        x.shape,
        x.dtype,
        weights,
        mode=mode,
        cval=cval,
        origin=origin,
        axes=axes,
        method=method or get_default("method"),
        engine=engine or get_default("engine"),
        dtype=dtype,
        convolution=convolution,
        gpu_chunks=is_gpu_array(x),
    )
    record = source_of(x)
    return FilterPlan(
        operation="convolve" if convolution else "correlate",
        input_shape=tuple(x.shape),
        input_dtype=x.dtype,
        source=record["path"] if record else None,
        weights_shape=tuple(np.shape(weights)),
        correlation=plan,
        tiles=correlation_tiles(x, plan, resources),
    )


def plan_convolve(input, weights, mode="reflect", cval=0.0, origin=0, **kwargs) -> FilterPlan:
    """The plan :func:`distconv.convolve` would run (see :func:`plan_filter`)."""
    return plan_filter(input, weights, mode, cval, origin, convolution=True, **kwargs)


def plan_correlate(input, weights, mode="reflect", cval=0.0, origin=0, **kwargs) -> FilterPlan:
    """The plan :func:`distconv.correlate` would run (see :func:`plan_filter`)."""
    return plan_filter(input, weights, mode, cval, origin, convolution=False, **kwargs)


def _shape_text(shape: Sequence[int]) -> str:
    return "×".join(map(str, shape)) if len(shape) else "()"
