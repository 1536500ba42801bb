"""Deconvolution planned before its graph exists: PSF checks, halo, strategy and their cost.

Richardson–Lucy blurs twice per iteration (the estimate by the PSF, the ratio by its mirror), so
after ``n`` iterations a pixel depends on ``2 * (k // 2) * n`` pixels per side (``k``: the PSF's
size on that axis): the *dependence* halo. Three ways to compute it out of core, chosen by cost:

* ``tiles``: each task iterates on its tile with the whole dependence halo: exact, one read and
  one write, but the halo grows with the iterations;
* ``passes``: one pass over the array per iteration through scratch Zarr stores, each with the
  halo of one iteration: exact at any iteration count, but every iteration reads and writes;
* ``tiles`` with a smaller halo (``halo="auto"`` when the exact ways cost much more, or
  ``halo=N``): the common practice; pixels near tile borders differ from the exact result.

Wiener is one filter in the Fourier domain: exact (as :func:`skimage.restoration.wiener`, whose
Fourier transform is circular over the whole image) only as one ``whole`` task, else per tile with
a halo. :mod:`distconv.ops.deconvolve` builds the graphs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from dask.utils import format_bytes

from distconv.clusters.resources import Resources
from distconv.errors import DistconvError
from distconv.plan.arguments import MODES, compute_dtype_for, normalize_mode
from distconv.plan.correlation import CorrelationPlan, plan_correlation
from distconv.plan.deconvolution_checks import (
    check_balance,
    check_filter_epsilon,
    check_iterations,
    check_psf,
    check_reg,
    check_requested_halo,
)
from distconv.plan.deconvolution_tiles import (
    ELEMENTWISE_SECONDS,
    TILE_ARRAYS_RL,
    TILE_ARRAYS_WIENER,
    Layout,
    TileSearch,
    rl_tile_seconds,
)

__all__ = [
    "AUTO_EXACT_FACTOR",
    "DeconvolutionPlan",
    "Layout",
    "auto_halo",
    "dependence_depth",
    "plan_richardson_lucy",
    "plan_wiener",
    "wiener_auto_halo",
]

# halo="auto" keeps an exact strategy while it costs at most this many times the smaller halo.
AUTO_EXACT_FACTOR = 1.5
# The smaller halo of halo="auto", in iterations' worth of dependence (each 2 PSF radii): the
# common practice of an overlap of about the PSF's size, doubled. Its measured difference from
# the exact result is in docs/deconvolution.md.
AUTO_HALO_ITERATIONS = 2
# Wiener's tiled halo in PSF sizes (the filter's impulse response decays over a few PSF widths).
WIENER_HALO_PSF_SIZES = 4


@dataclass(frozen=True)
class DeconvolutionPlan:
    """A deconvolution fully specified for the graph builders and the per-block functions.

    ``psf`` has the image's ``ndim`` in the compute dtype. ``forward`` correlates the estimate
    with the mirrored PSF (the blur, centred as ``scipy.signal.convolve(mode="same")``),
    ``backward`` correlates the ratio with the PSF; their engines and methods are chosen per
    block as for :func:`distconv.correlate`.
    """

    algorithm: str  # "richardson-lucy" or "wiener"
    psf: np.ndarray
    mode: str
    strategy: str  # "tiles", "passes" or "whole"
    layout: Layout
    dependence: tuple[int, ...]
    compute_dtype: np.dtype
    requested_halo: str | int
    candidates: dict[str, Layout] = field(compare=False)
    resources: Resources = field(compare=False)
    iterations: int = 1
    clip: bool = True
    filter_epsilon: float | None = None
    balance: float | None = None
    reg: np.ndarray | None = None
    forward: CorrelationPlan | None = field(default=None, compare=False)
    backward: CorrelationPlan | None = field(default=None, compare=False)
    engine: str = "scipy"  # the engine of the Wiener filter (Richardson–Lucy: see forward)

    @property
    def ndim(self) -> int:
        return self.psf.ndim

    @property
    def exact(self) -> bool:
        return self.layout.exact

    @property
    def halo(self) -> tuple[int, ...]:
        return self.layout.halo

    @property
    def before(self) -> tuple[int, ...]:
        """Samples each blur reads before an output sample (``k // 2``)."""
        return tuple(k // 2 for k in self.psf.shape)

    @property
    def after(self) -> tuple[int, ...]:
        return tuple((k - 1) // 2 for k in self.psf.shape)

    @property
    def periodic(self) -> bool:
        """``wrap``: tiles take their halo from the other end, and have no true edges."""
        return MODES[self.mode] == "wrap"

    def engines_used(self) -> list[str]:
        if self.algorithm == "wiener":
            return [self.engine]
        names = list(self.forward.engines.values()) + list(self.backward.engines.values())
        return sorted(set(names))

    def parameters(self) -> dict:
        """The provenance of the job (what a resumed run must repeat)."""
        record = {"mode": self.mode, "halo": self.requested_halo, "clip": self.clip}
        if self.algorithm == "richardson-lucy":
            record.update(iterations=self.iterations, filter_epsilon=self.filter_epsilon)
        else:
            record.update(balance=self.balance)
        return record

    def describe(self) -> str:
        """The plan for ``--dry-run``: strategy, halo, tasks, memory and each candidate's cost."""
        lines = [
            f"{self.algorithm}: {self.psf.shape} PSF"
            + (f", {self.iterations} iterations" if self.algorithm == "richardson-lucy" else "")
            + f", mode {self.mode}, halo={self.requested_halo!r}",
            f"  strategy:          {self.strategy} ({'exact' if self.exact else 'approximate'})",
            f"  halo per axis:     {list(self.halo)} (exact needs "
            f"{list(self.dependence) if self.algorithm == 'richardson-lucy' else 'one tile'})",
            f"  tasks:             {self.layout.tasks}"
            + (f" per pass, {self.iterations} passes" if self.strategy == "passes" else ""),
            f"  tile:              {[max(c) for c in self.layout.chunks]} + halo",
            f"  peak per task:     {format_bytes(self.layout.peak_bytes)} "
            f"(budget {format_bytes(self.resources.memory_budget)})",
            f"  engines:           {', '.join(self.engines_used())}",
            f"  estimated time on {self.resources.parallel_tasks} threads, per strategy:",
        ]
        for name, layout in self.candidates.items():
            when = "n/a (does not fit)" if math.isinf(layout.seconds) else f"{layout.seconds:.3g} s"
            chosen = "  <- chosen" if layout is self.layout else ""
            lines.append(f"    {name:<28} {when}{chosen}")
        return "\n".join(lines)

    def table_rows(self) -> list[tuple[str, str]]:
        """(field, value) rows of the facts :meth:`describe` prints, for a notebook's table."""
        rows = [
            ("algorithm", self.algorithm),
            ("PSF shape", _shape_text(self.psf.shape)),
        ]
        if self.algorithm == "richardson-lucy":
            rows.append(("iterations", str(self.iterations)))
        exact_needs = (
            _shape_text(self.dependence) if self.algorithm == "richardson-lucy" else "one tile"
        )
        rows += [
            ("mode", self.mode),
            ("halo requested", repr(self.requested_halo)),
            ("strategy", f"{self.strategy} ({'exact' if self.exact else 'approximate'})"),
            ("halo per axis", f"{_shape_text(self.halo)} (exact needs {exact_needs})"),
            (
                "tasks",
                f"{self.layout.tasks}"
                + (f" per pass, {self.iterations} passes" if self.strategy == "passes" else ""),
            ),
            ("tile", _shape_text([max(c) for c in self.layout.chunks]) + " + halo"),
            ("compute dtype", str(self.compute_dtype)),
            (
                "peak memory/task",
                f"{format_bytes(self.layout.peak_bytes)} "
                f"(budget {format_bytes(self.resources.memory_budget)})",
            ),
            ("engine", ", ".join(self.engines_used())),
        ]
        for name, layout in self.candidates.items():
            when = "n/a (does not fit)" if math.isinf(layout.seconds) else f"{layout.seconds:.3g} s"
            chosen = " (chosen)" if layout is self.layout else ""
            rows.append((f"time if {name}", f"{when}{chosen}"))
        return rows

    def _repr_html_(self) -> str:
        from distconv._html import html_table

        return html_table(self.table_rows(), title=f"{self.algorithm} plan")

    def __repr__(self) -> str:
        return (
            f"<DeconvolutionPlan {self.algorithm}: {_shape_text(self.psf.shape)} PSF, "
            f"{self.strategy} strategy, {self.layout.tasks} task(s), "
            f"halo {_shape_text(self.halo)}>"
        )


def _shape_text(shape: Sequence[int]) -> str:
    return "×".join(map(str, shape)) if len(shape) else "()"


def dependence_depth(psf_shape: Sequence[int], iterations: int) -> tuple[int, ...]:
    """The halo per axis that makes every tile's Richardson–Lucy result exact.

    Each iteration blurs the estimate (``k // 2`` samples before, ``(k - 1) // 2`` after) and then
    correlates the ratio with the PSF (the same reach), so ``n`` iterations reach
    ``2 * (k // 2) * n`` samples on each side: a tuple of int, from the PSF's shape and the
    number of iterations.
    """
    return tuple(2 * (k // 2) * int(iterations) for k in psf_shape)


def auto_halo(psf_shape: Sequence[int], iterations: int) -> tuple[int, ...]:
    """The smaller halo ``halo="auto"`` falls back to: two iterations' worth (4 PSF radii).

    Parameters
    ----------
    psf_shape : sequence of int
    iterations : int

    Returns
    -------
    tuple of int
        Never more than the dependence halo.
    """
    return dependence_depth(psf_shape, min(int(iterations), AUTO_HALO_ITERATIONS))


def wiener_auto_halo(psf_shape: Sequence[int]) -> tuple[int, ...]:
    """The halo of a tiled Wiener filter: four PSF sizes per side (0 on unfiltered axes)."""
    return tuple(WIENER_HALO_PSF_SIZES * k if k > 1 else 0 for k in psf_shape)


def plan_richardson_lucy(
    shape: Sequence[int],
    chunks: Sequence[Sequence[int]],
    dtype,
    psf,
    *,
    iterations: int,
    clip: bool = True,
    filter_epsilon: float | None = None,
    mode: str = "reflect",
    halo: str | int = "auto",
    engine: str = "auto",
    gpu_chunks: bool = False,
    resources: Resources | None = None,
    strategy: str | None = None,
) -> DeconvolutionPlan:
    """Validate the arguments of a Richardson–Lucy deconvolution and choose how to run it.

    Parameters
    ----------
    shape, chunks, dtype
        The image's shape, Dask chunks and dtype.
    psf : array_like
        Non-negative, finite, not all zero, the image's ``ndim``, no larger than the image.
    iterations : int
        1 to :data:`~distconv.plan.deconvolution_checks.MAX_ITERATIONS`.
    clip : bool
        Clip the result to [-1, 1] (scikit-image's default).
    filter_epsilon : float, optional
        Where the blurred estimate is below it, the ratio is 0 (scikit-image's meaning).
    mode : str
        How each blur extends its input past the image's edges (scipy.ndimage's modes;
        ``"constant"`` is zero padding, as scikit-image).
    halo : {"auto", "exact"} or int
        ``"exact"``: the cheaper exact strategy; ``"auto"``: that, unless it costs more than
        :data:`AUTO_EXACT_FACTOR` times tiles with the smaller :func:`auto_halo`; an int: tiles
        with that halo on every filtered axis (exact when it reaches the dependence halo).
    engine : str
        The engine of the blurs (``"auto"`` picks per block, as for convolve).
    gpu_chunks : bool
        The chunks are CuPy arrays.
    resources : Resources, optional
        Threads and memory per task (default: asked of the current cluster).
    strategy : {"tiles", "passes"}, optional
        Force a strategy instead of choosing by cost ("passes" is exact: ``halo`` must not be
        a number).

    Returns
    -------
    DeconvolutionPlan

    Raises
    ------
    DistconvError
        Invalid arguments, or no strategy fits the memory per task.
    """
    iterations = check_iterations(iterations)
    filter_epsilon = check_filter_epsilon(filter_epsilon)
    common = _Common.check(shape, dtype, psf, mode, halo)
    shape, mode, requested, compute_dtype, psf64 = common
    resources = resources or _detect()

    def correlation(weights: np.ndarray) -> CorrelationPlan:
        return plan_correlation(
            shape,
            compute_dtype,
            weights,
            mode="constant",  # the blocks are padded by ops.deconvolve, never by the plan
            method="auto",
            engine=engine,
            gpu_chunks=gpu_chunks,
        )

    forward = correlation(np.flip(psf64))
    backward = correlation(psf64)
    dependence = dependence_depth(psf64.shape, iterations)
    periodic = MODES[mode] == "wrap"
    itemsize = compute_dtype.itemsize

    memo: dict = {}

    def tile_seconds(low, core, high, shrink, passes):
        return rl_tile_seconds(
            forward, backward, low, core, high, shrink, iterations, passes, itemsize, memo
        )

    search = TileSearch(shape, chunks, periodic, resources, itemsize)
    candidates = {
        "tiles, exact halo": search.best(dependence, True, TILE_ARRAYS_RL, tile_seconds),
        "passes, exact": search.best(
            dependence_depth(psf64.shape, 1), True, TILE_ARRAYS_RL, tile_seconds, passes=True
        ),
    }
    if isinstance(requested, int):
        depth = tuple(min(requested, d) if d else 0 for d in dependence)
        name = f"tiles, halo {requested}"
        candidates[name] = search.best(
            depth, depth == dependence, TILE_ARRAYS_RL, tile_seconds, shrink=depth == dependence
        )
    else:
        small = auto_halo(psf64.shape, iterations)
        name = f"tiles, halo {max(small)}"
        if small != dependence:
            candidates[name] = search.best(small, False, TILE_ARRAYS_RL, tile_seconds, shrink=False)
    if strategy is not None:
        candidates = _only(candidates, strategy, requested)
    return common.plan(
        "richardson-lucy",
        candidates,
        name,
        dependence,
        resources,
        iterations=iterations,
        clip=bool(clip),
        filter_epsilon=filter_epsilon,
        forward=forward,
        backward=backward,
    )


def plan_wiener(
    shape: Sequence[int],
    chunks: Sequence[Sequence[int]],
    dtype,
    psf,
    *,
    mode: str = "reflect",
    halo: str | int = "auto",
    engine: str = "auto",
    gpu_chunks: bool = False,
    resources: Resources | None = None,
    balance: float,
    reg=None,
    clip: bool = True,
) -> DeconvolutionPlan:
    """Validate the arguments of a Wiener deconvolution and choose how to run it.

    ``halo="exact"`` is one task over the whole image (the Fourier transform is circular over it,
    as scikit-image's); ``"auto"`` keeps that while it fits a task's memory and costs at most
    :data:`AUTO_EXACT_FACTOR` times the tiled filter with :func:`wiener_auto_halo`; an int is
    the tiled filter with that halo. Tiles extend the image past its edges by ``mode``.

    Returns a :class:`DeconvolutionPlan`; raises :class:`DistconvError` for invalid arguments,
    or where the requested strategy does not fit the memory per task.
    """
    from distconv import kernels

    balance = check_balance(balance)
    common = _Common.check(shape, dtype, psf, mode, halo)
    shape, mode, requested, compute_dtype, psf64 = common
    reg64 = check_reg(reg, len(shape))
    resources = resources or _detect()
    ndim = len(shape)
    engine = kernels.resolve_engine(
        engine, "wiener_filter", ndim, compute_dtype, gpu_chunks=gpu_chunks
    )
    fft_cost = kernels.ENGINES[engine].cost.get("fft", kernels.ENGINES["scipy"].cost["fft"])
    fft_cost = fft_cost[1] if isinstance(fft_cost, tuple) else fft_cost

    def tile_seconds(low, core, high, shrink, passes):
        voxels = math.prod(lo + c + hi for lo, c, hi in zip(low, core, high))
        return 2 * voxels * max(math.log2(voxels), 1.0) * fft_cost + voxels * ELEMENTWISE_SECONDS

    search = TileSearch(shape, chunks, MODES[mode] == "wrap", resources, compute_dtype.itemsize)
    whole = search.whole(TILE_ARRAYS_WIENER, tile_seconds)
    candidates = {"whole image, exact": whole}
    if isinstance(requested, int):
        depth = tuple(requested if k > 1 else 0 for k in psf64.shape)
    else:
        depth = wiener_auto_halo(psf64.shape)
    name = f"tiles, halo {max(depth)}"
    if requested != "exact":
        candidates[name] = search.best(depth, False, TILE_ARRAYS_WIENER, tile_seconds, pad=True)
    return common.plan(
        "wiener",
        candidates,
        name,
        tuple(shape),
        resources,
        clip=bool(clip),
        balance=balance,
        reg=None if reg64 is None else reg64.astype(compute_dtype),
        engine=engine,
    )


class _Common(NamedTuple):
    """The arguments both planners check alike, checked."""

    shape: tuple[int, ...]
    mode: str
    requested: str | int
    dtype: np.dtype  # the compute dtype
    psf: np.ndarray  # float64

    @classmethod
    def check(cls, shape, dtype, psf, mode, halo) -> _Common:
        shape = tuple(int(s) for s in shape)
        mode = normalize_mode(mode)
        requested = check_requested_halo(halo)
        return cls(shape, mode, requested, compute_dtype_for(dtype), check_psf(psf, shape))

    def plan(
        self, algorithm: str, candidates, approximate: str, dependence, resources, **specific
    ) -> DeconvolutionPlan:
        """The plan of the candidate :func:`_choose` picks (``approximate``: the smaller halo's
        name), with the algorithm's own fields."""
        strategy, layout = _choose(candidates, self.requested, approximate)
        return DeconvolutionPlan(
            algorithm=algorithm,
            psf=self.psf.astype(self.dtype),
            mode=self.mode,
            strategy=strategy,
            layout=layout,
            dependence=dependence,
            compute_dtype=self.dtype,
            requested_halo=self.requested,
            candidates=candidates,
            resources=resources,
            **specific,
        )


def _choose(candidates: dict[str, Layout], requested, approximate: str) -> tuple[str, Layout]:
    """The strategy and layout for ``requested`` ("exact", "auto" or a halo) among candidates."""
    exact = {n: c for n, c in candidates.items() if c.exact and not math.isinf(c.seconds)}
    if isinstance(requested, int):
        chosen = candidates[approximate]
        if math.isinf(chosen.seconds):
            raise DistconvError(
                f"a halo of {requested} does not fit the memory per task "
                f"({format_bytes(chosen.peak_bytes)} needed); use a smaller halo"
            )
        return _strategy(approximate), chosen
    if requested == "exact" or approximate not in candidates:
        if not exact:
            need = min(c.peak_bytes for c in candidates.values())
            raise DistconvError(
                f"no exact strategy fits the memory per task ({format_bytes(need)} needed); "
                "use halo='auto' or a halo in pixels"
            )
        name = min(exact, key=lambda n: exact[n].seconds)
        return _strategy(name), exact[name]
    small = candidates[approximate]
    if exact:
        name = min(exact, key=lambda n: exact[n].seconds)
        if math.isinf(small.seconds) or exact[name].seconds <= AUTO_EXACT_FACTOR * small.seconds:
            return _strategy(name), exact[name]
    if math.isinf(small.seconds):
        raise DistconvError(
            f"no strategy fits the memory per task ({format_bytes(small.peak_bytes)} needed)"
        )
    return _strategy(approximate), small


def _only(candidates: dict[str, Layout], strategy: str, requested) -> dict[str, Layout]:
    """The candidates of a forced strategy."""
    if strategy not in ("tiles", "passes"):
        raise DistconvError(f"unknown strategy {strategy!r}; choose tiles or passes")
    if strategy == "passes" and isinstance(requested, int):
        raise DistconvError("strategy 'passes' is exact: use halo='exact', not a halo in pixels")
    return {n: c for n, c in candidates.items() if _strategy(n) == strategy}


def _strategy(name: str) -> str:
    return name.split(",")[0].split()[0]


def _detect() -> Resources:
    from distconv.clusters.resources import detect_resources

    return detect_resources()
