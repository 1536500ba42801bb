"""Per-block deconvolution: Richardson–Lucy iterations on a haloed tile, Wiener on a tile.

Richardson–Lucy is built on the engines' correlation ops, so it runs on every engine that
correlates (NumPy or CuPy tiles; the estimate stays on the tile's device for all iterations):

    blur  = correlate(estimate, mirrored PSF) + 1e-12
    ratio = image / blur                      (0 where blur < filter_epsilon)
    estimate *= correlate(ratio, PSF)

which is :func:`skimage.restoration.richardson_lucy` with each blur centred as
``scipy.signal.convolve(mode="same")``. A tile carries a halo on its inner sides (neighbours'
pixels) and none at the image's true edges, where every blur extends its input by the boundary
mode. With an exact halo, each blur keeps only its valid part on the inner sides, so the tile
shrinks by the PSF's reach per blur and ends at the core; with a smaller halo the tile keeps
its size and its inner sides are mirrored, so pixels near them are approximate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import scipy.fft

from distconv import kernels
from distconv.backend import array_module, device_arrays_available
from distconv.errors import InputValueError
from distconv.plan import METHOD_OPS, CorrelationPlan
from distconv.plan.arguments import MODES
from distconv.plan.deconvolution import DeconvolutionPlan

__all__ = [
    "EPSILON",
    "check_image_values",
    "richardson_lucy_tile",
    "tile_sides",
    "uploads_host_tiles",
    "wiener_tile",
]

# scikit-image's guard against dividing by zero, added to every blur.
EPSILON = 1e-12

Sides = Sequence[tuple[int, int]]


def tile_sides(
    halo: Sequence[int], location: Sequence[int], counts: Sequence[int], periodic: bool
) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[bool, bool], ...]]:
    """Halo on each side of the tile at ``location`` in a grid of ``counts`` tiles per axis,
    and which sides are true edges of the image.

    Inner sides carry ``halo``; true edges carry none, except with ``wrap`` (``periodic``),
    where the halo comes from the other end and no side is an edge.
    """
    sides, edges = [], []
    for depth, index, count in zip(halo, location, counts):
        edge = (index == 0 and not periodic, index == count - 1 and not periodic)
        sides.append((0 if edge[0] else depth, 0 if edge[1] else depth))
        edges.append(edge)
    return tuple(sides), tuple(edges)


def richardson_lucy_tile(
    image,
    plan: DeconvolutionPlan,
    sides: Sides,
    edges: Sequence[tuple[bool, bool]],
    iterations: int,
    *,
    estimate=None,
    clip: bool = False,
):
    """Run ``iterations`` Richardson–Lucy steps on one tile and return its core.

    Parameters
    ----------
    image : numpy.ndarray or cupy.ndarray
        The tile of the image in the compute dtype: the core plus ``sides`` samples of halo.
    plan : DeconvolutionPlan
        The PSF's correlation plans (``plan.forward``, ``plan.backward``), mode,
        ``filter_epsilon``, and whether the halo is exact (the tile shrinks) or not (it keeps
        its size and mirrors its inner sides).
    sides : sequence of (int, int)
        Halo before and after the core per axis.
    edges : sequence of (bool, bool)
        Which sides are the image's true edges (extended by the mode at every blur).
    iterations : int
        Steps to run here (all of them for tiles, one per pass).
    estimate : array, optional
        The current estimate on the same tile (passes); default 0.5 everywhere.
    clip : bool
        Clip the core to [-1, 1] (after the last step of the job).

    Returns
    -------
    array
        The core's estimate.
    """
    xp = array_module(image)
    u = xp.full(image.shape, 0.5, dtype=image.dtype) if estimate is None else estimate
    region = _Region.whole(image.shape)  # what u covers in the tile, and where it is exact
    for _ in range(iterations):
        blur, blurred = _blur(u, region, plan.forward, plan, edges)
        blur += EPSILON
        observed = image[blurred.slices()]
        if plan.filter_epsilon:
            ratio = xp.where(blur < plan.filter_epsilon, 0, observed / blur)
        else:
            ratio = observed / blur
        del blur, observed
        back, region_back = _blur(ratio, blurred, plan.backward, plan, edges)
        del ratio
        u = u[region_back.slices(region.start)] * back
        region = region_back
    core = tuple(
        slice(lo - begin, size - hi - begin)
        for (lo, hi), begin, size in zip(sides, region.start, image.shape)
    )
    u = u[core]
    return xp.clip(u, -1, 1) if clip else u


def wiener_tile(block, plan: DeconvolutionPlan, sides: Sides):
    """The Wiener filter of one tile (circular over it), its core cut out and clipped."""
    function = kernels.get_op(plan.engine, "wiener_filter")
    out = function(block, plan.psf, plan.balance, plan.reg)
    out = out[tuple(slice(lo, size - hi) for (lo, hi), size in zip(sides, out.shape))]
    return array_module(out).clip(out, -1, 1) if plan.clip else out


def uploads_host_tiles(plan: DeconvolutionPlan) -> bool:
    """Whether a task uploads its host tile to the GPU itself (a GPU engine, CuPy present)."""
    gpu = any(kernels.is_gpu_engine(e) for e in plan.engines_used())
    return gpu and device_arrays_available()


def check_image_values(core, where: str) -> None:
    """Refuse negative, NaN or infinite image values (Richardson–Lucy assumes counts >= 0).

    Raises
    ------
    InputValueError
        Naming the region ``where``; raised in the task, so the job stops and its new output
        is removed, as for a damaged input chunk.
    """
    xp = array_module(core)
    if not bool(xp.isfinite(core).all()):
        raise InputValueError(f"the image has NaN or infinite values in {where}")
    lowest = float(core.min())
    if lowest < 0:
        raise InputValueError(
            f"the image has negative values in {where} (min {lowest:.4g}); Richardson-Lucy "
            "needs non-negative data: subtract a smaller background or clip at 0"
        )


@dataclass(frozen=True)
class _Region:
    """An array's extent in the tile (``start``, ``stop``) and the part of it that is exact
    (``valid_start``, ``valid_stop``); outside it, values are finite but approximate."""

    start: tuple[int, ...]
    stop: tuple[int, ...]
    valid_start: tuple[int, ...]
    valid_stop: tuple[int, ...]

    @classmethod
    def whole(cls, shape) -> _Region:
        zero, full = (0,) * len(shape), tuple(shape)
        return cls(zero, full, zero, full)

    def slices(self, origin=None) -> tuple[slice, ...]:
        """This extent inside an array that starts at ``origin`` (default: the tile's start)."""
        origin = origin or (0,) * len(self.start)
        return tuple(slice(a - o, b - o) for a, b, o in zip(self.start, self.stop, origin))


def _blur(x, region: _Region, plan: CorrelationPlan, deconvolution: DeconvolutionPlan, edges):
    """Correlate ``x`` (covering ``region`` of the tile) with ``plan``'s weights.

    True edges are extended by the mode. With an exact halo the exact part shrinks by the PSF's
    reach on inner sides, and so does the result, except where the FFT length would not
    change: there the array keeps its extent (inner sides mirrored; the values beyond the
    exact part are not used), so the PSF's cached spectrum serves the next blurs too. With a
    smaller halo the array keeps its extent and its inner sides are mirrored.
    """
    xp = array_module(x)
    reach = list(zip(deconvolution.before, deconvolution.after))
    valid_start, valid_stop = list(region.valid_start), list(region.valid_stop)
    out_start, out_stop = list(region.start), list(region.stop)
    method = None
    if deconvolution.exact:
        for axis, (before, after) in enumerate(reach):
            valid_start[axis] += 0 if edges[axis][0] else before
            valid_stop[axis] -= 0 if edges[axis][1] else after
        method = plan.method_for([b - a for a, b in zip(valid_start, valid_stop)])
        for axis, k in enumerate(plan.weights.shape):
            keep = (
                method == "fft"
                and k > 1
                and _fft_length(region.stop[axis] - region.start[axis] + k - 1)
                == _fft_length(valid_stop[axis] - valid_start[axis] + k - 1)
            )
            if not keep:
                out_start[axis], out_stop[axis] = valid_start[axis], valid_stop[axis]
    # The input this output reads: cut from x, the rest padded (mode at true edges).
    cut, edge_pad, inner_pad = [], [], []
    for axis, (before, after) in enumerate(reach):
        low = max(out_start[axis] - before, region.start[axis])
        high = min(out_stop[axis] + after, region.stop[axis])
        cut.append(slice(low - region.start[axis], high - region.start[axis]))
        pads = (low - (out_start[axis] - before), out_stop[axis] + after - high)
        edge_pad.append(tuple(p if edges[axis][i] else 0 for i, p in enumerate(pads)))
        inner_pad.append(tuple(0 if edges[axis][i] else p for i, p in enumerate(pads)))
    x = x[tuple(cut)]
    if any(any(p) for p in edge_pad):
        mode = MODES[deconvolution.mode]
        extra = {"constant_values": 0} if mode == "constant" else {}
        x = xp.pad(x, edge_pad, mode=mode, **extra)
    if any(any(p) for p in inner_pad):
        x = xp.pad(x, inner_pad, mode="symmetric")
    out_shape = [size - k + 1 for size, k in zip(x.shape, plan.weights.shape)]
    method = method or plan.method_for(out_shape)
    function = kernels.get_op(plan.engines[method], METHOD_OPS[method])
    out = function(x, list(plan.factors)) if method == "separable" else function(x, plan.weights)
    return out, _Region(tuple(out_start), tuple(out_stop), tuple(valid_start), tuple(valid_stop))


def _fft_length(size: int) -> int:
    return scipy.fft.next_fast_len(size, real=True)
