"""How far a smaller halo's Richardson–Lucy result is from the exact one, measured on the data.

A sample core at the image's centre is computed twice: exactly (its window carries the whole
dependence halo) and as a tile of the plan with its smaller halo, mirrored at every side as an
inner tile's (the worst case). The difference is what ``--dry-run`` reports; it is only
measured when the cost model prices the exact window within a time budget.
"""

from __future__ import annotations

import dataclasses
import time

import dask.array as da
import numpy as np

from distconv.ops.deconvolve_blocks import richardson_lucy_tile
from distconv.plan.deconvolution import DeconvolutionPlan
from distconv.plan.deconvolution_tiles import rl_tile_seconds

__all__ = ["MEASURE_BUDGET_SECONDS", "SAMPLE_CORE", "measure_halo_difference"]

# The sample's core per axis, and the longest the measurement may be estimated to take.
SAMPLE_CORE = 32
MEASURE_BUDGET_SECONDS = 20.0


def measure_halo_difference(x: da.Array, plan: DeconvolutionPlan) -> dict:
    """Compare the plan's smaller halo with the exact result on a sample of ``x``.

    Parameters
    ----------
    x : dask.array.Array
        The image.
    plan : DeconvolutionPlan
        A Richardson–Lucy plan; when it is exact nothing is computed.

    Returns
    -------
    dict
        ``measured`` (bool); when measured, ``max_relative`` (largest difference over the
        sample's largest exact value), ``mean_relative`` (mean difference over the mean exact
        value), ``sample`` (its region, as slices text) and ``seconds``; when not,
        ``reason``.
    """
    if plan.exact:
        return {"measured": False, "reason": "the plan is exact"}
    depth, halo = plan.dependence, plan.halo
    core = [
        (max(0, n // 2 - SAMPLE_CORE // 2), min(n, n // 2 - SAMPLE_CORE // 2 + SAMPLE_CORE))
        for n in x.shape
    ]
    exact_window = _window(core, depth, x.shape, plan.periodic)
    sizes = [(c0 - w0, c1 - c0, w1 - c1) for (c0, c1), (w0, w1) in zip(core, exact_window)]
    low, mid, high = zip(*sizes)
    cost = rl_tile_seconds(
        plan.forward, plan.backward, low, mid, high, True, plan.iterations, False, 4
    )
    if cost > MEASURE_BUDGET_SECONDS:
        return {
            "measured": False,
            "reason": f"the exact sample would take about {cost:.0f} s "
            f"(budget {MEASURE_BUDGET_SECONDS:.0f} s)",
        }
    start = time.perf_counter()
    exact_plan = dataclasses.replace(
        plan, layout=dataclasses.replace(plan.layout, exact=True, halo=depth)
    )
    reference = _run(x, exact_plan, core, exact_window)
    approximate = _run(x, plan, core, _window(core, halo, x.shape, plan.periodic))
    difference = np.abs(approximate.astype(np.float64) - reference)
    scale = float(np.abs(reference).max()) or 1.0
    return {
        "measured": True,
        "max_relative": float(difference.max()) / scale,
        "mean_relative": float(difference.mean()) / (float(np.abs(reference).mean()) or 1.0),
        "sample": "[" + ", ".join(f"{a}:{b}" for a, b in core) + "]",
        "seconds": time.perf_counter() - start,
    }


def _window(core, depth, shape, periodic):
    if periodic:
        return [(c0 - d, c1 + d) for (c0, c1), d in zip(core, depth)]
    return [(max(0, c0 - d), min(n, c1 + d)) for (c0, c1), d, n in zip(core, depth, shape)]


def _run(x, plan, core, window):
    """``plan``'s tile result for the ``core`` inside ``window`` (read with wrap if periodic)."""
    shape = x.shape
    if plan.periodic:
        for axis, ((w0, w1), n) in enumerate(zip(window, shape)):
            x = da.take(x, np.arange(w0, w1) % n, axis=axis)
    else:
        x = x[tuple(slice(a, b) for a, b in window)]
    tile = np.ascontiguousarray(np.asarray(x.compute()), dtype=plan.compute_dtype)
    sides = [(c0 - w0, w1 - c1) for (c0, c1), (w0, w1) in zip(core, window)]
    # True edges where the window stops at the image's end; every other side is an inner one.
    edges = [
        (not plan.periodic and w0 == 0, not plan.periodic and w1 == n)
        for (w0, w1), n in zip(window, shape)
    ]
    out = richardson_lucy_tile(tile, plan, sides, edges, plan.iterations, clip=plan.clip)
    return np.asarray(out, dtype=np.float64)
