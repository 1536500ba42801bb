"""Richardson–Lucy and Wiener deconvolution graphs, lazy like convolve.

The plan (:mod:`distconv.plan.deconvolution`) picks the strategy; this module builds its graph:
``tiles`` (every task iterates on its tile with the halo from :func:`exchange_halos`),
``passes`` (:mod:`distconv.ops.deconvolve_passes`: one pass per iteration through scratch Zarr
stores) or ``whole`` (one Wiener task over the image). The per-block work is in
:mod:`distconv.ops.deconvolve_blocks`. Results come back chunked like the input.
"""

from __future__ import annotations

import dask.array as da
import numpy as np

from distconv.backend import array_module, is_gpu_array, to_numpy, upload
from distconv.clusters.resources import detect_resources
from distconv.config import get_default
from distconv.io import as_dask_array
from distconv.ops.deconvolve_blocks import (
    check_image_values,
    richardson_lucy_tile,
    tile_sides,
    uploads_host_tiles,
    wiener_tile,
)
from distconv.ops.halo import exchange_halos
from distconv.plan.arguments import MODES
from distconv.plan.deconvolution import DeconvolutionPlan, plan_richardson_lucy, plan_wiener
from distconv.provenance import remember_provenance
from distconv.weights import weights_digest

__all__ = [
    "plan_for",
    "richardson_lucy",
    "richardson_lucy_with_plan",
    "wiener",
    "wiener_with_plan",
]


def richardson_lucy(
    image,
    psf,
    iterations: int = 50,
    clip: bool = True,
    filter_epsilon: float | None = None,
    mode: str = "reflect",
    halo: str | int = "auto",
    engine: str | None = None,
    *,
    scratch=None,
    memory_budget: int | str | None = None,
) -> da.Array:
    """Richardson–Lucy deconvolution, as :func:`skimage.restoration.richardson_lucy`, out of core.

    Parameters
    ----------
    image : str, zarr.Array, dask.array.Array or numpy.ndarray
        The blurred image: non-negative and finite (checked while computing; a tile with a
        negative, NaN or infinite value stops the job with :class:`distconv.InputValueError`).
    psf : array_like
        The point spread function: non-negative, finite, not all zero, the image's ``ndim``,
        no larger than the image. Not normalised (as scikit-image): give it sum 1 to keep flux.
    iterations : int
        Number of iterations (scikit-image's ``num_iter``), 1 to 10,000.
    clip : bool
        Clip the result to [-1, 1] (scikit-image's default; pass False for data in counts).
    filter_epsilon : float, optional
        Where the blurred estimate is below this, the ratio is taken as 0.
    mode : str
        How each blur extends its input past the image's edges (scipy.ndimage's modes).
        ``"constant"`` is zero padding: with an exact halo the result is scikit-image's.
    halo : {"auto", "exact"} or int
        ``"exact"``: every pixel as if the whole image were in memory, by tiles with the full
        dependence halo or by passes, whichever costs less; ``"auto"``: that, unless it costs
        more than 1.5 times tiles with a halo of 4 PSF radii (then pixels near tile borders
        are approximate); an int: tiles with that halo.
    engine : str, optional
        The engine of the blurs; default from config ``distconv.engine`` ("auto").
    scratch : str or os.PathLike, optional
        Folder for the ``passes`` strategy's intermediate estimates (on a file system every
        worker sees). Finished chunks there are reused by a rerun of the same job. Default: a
        new temporary folder, removed when this process exits.
    memory_budget : int or str, optional
        Bytes one task may use (default: asked of the cluster).

    Returns
    -------
    dask.array.Array
        Lazy result, chunked like the input, in float32 (float64 for float64 input).
    """
    x = as_dask_array(image)
    tiling = {"mode": mode, "halo": halo, "engine": engine, "memory_budget": memory_budget}
    plan = plan_for(
        x,
        psf,
        "richardson-lucy",
        iterations=iterations,
        clip=clip,
        filter_epsilon=filter_epsilon,
        **tiling,
    )
    return richardson_lucy_with_plan(x, plan, psf, scratch=scratch)


def wiener(
    image,
    psf,
    balance: float,
    reg=None,
    clip: bool = True,
    mode: str = "reflect",
    halo: str | int = "auto",
    engine: str | None = None,
    *,
    memory_budget: int | str | None = None,
) -> da.Array:
    """Wiener–Hunt deconvolution, as :func:`skimage.restoration.wiener`, out of core.

    Parameters
    ----------
    image : str, zarr.Array, dask.array.Array or numpy.ndarray
    psf : array_like
        The point spread function (impulse response), checked as for :func:`richardson_lucy`.
    balance : float
        Weight of the regulariser (scikit-image's ``balance``), >= 0.
    reg : array_like, optional
        The regulariser's impulse response; default the Laplacian.
    clip : bool
        Clip the result to [-1, 1] (scikit-image's default).
    mode : str
        How tiles extend the image past its edges (not used by ``whole``).
    halo : {"auto", "exact"} or int
        ``"exact"``: one task over the whole image, circular as scikit-image's (it must fit a
        task's memory); ``"auto"``: that while it fits and costs at most 1.5 times tiles with
        a halo of 4 PSF sizes, else those tiles; an int: tiles with that halo.
    engine : str, optional
        ``scipy`` or ``cupy`` (default from config, "auto").
    memory_budget : int or str, optional
        Bytes one task may use (default: asked of the cluster).

    Returns
    -------
    dask.array.Array
        Lazy result, chunked like the input.
    """
    x = as_dask_array(image)
    tiling = {"mode": mode, "halo": halo, "engine": engine, "memory_budget": memory_budget}
    plan = plan_for(x, psf, "wiener", balance=balance, reg=reg, clip=clip, **tiling)
    return wiener_with_plan(x, plan, psf, reg)


def plan_for(
    x: da.Array,
    psf,
    algorithm: str,
    *,
    engine=None,
    memory_budget=None,
    resources=None,
    **arguments,
) -> DeconvolutionPlan:
    """The :class:`DeconvolutionPlan` :func:`richardson_lucy` or :func:`wiener` would follow.

    Parameters
    ----------
    x : dask.array.Array
        The image.
    psf : array_like
    algorithm : {"richardson-lucy", "wiener"}
    engine : str, optional
    memory_budget : int or str, optional
    resources : distconv.clusters.resources.Resources, optional
        Threads and memory per task (default: asked of the cluster, with ``memory_budget``).
    **arguments
        The algorithm's other arguments (for Richardson–Lucy also ``strategy``, to force
        "tiles" or "passes").

    Returns
    -------
    DeconvolutionPlan
    """
    planner = plan_richardson_lucy if algorithm == "richardson-lucy" else plan_wiener
    return planner(
        x.shape,
        x.chunks,
        x.dtype,
        psf,
        engine=engine or get_default("engine"),
        gpu_chunks=is_gpu_array(x),
        resources=resources or detect_resources(memory_budget),
        **arguments,
    )


def richardson_lucy_with_plan(x: da.Array, plan: DeconvolutionPlan, psf, *, scratch=None):
    """The Richardson–Lucy graph for a resolved plan, with its provenance recorded."""
    if plan.strategy == "passes":
        from distconv.ops.deconvolve_passes import richardson_lucy_passes

        y = richardson_lucy_passes(x, plan, scratch)
    else:
        y = _richardson_lucy_tiles(x, plan)
    return _record(y.rechunk(x.chunks), plan, psf, None, x)


def wiener_with_plan(x: da.Array, plan: DeconvolutionPlan, psf, reg=None) -> da.Array:
    """The Wiener graph for a resolved plan, with its provenance recorded."""
    if plan.strategy == "whole":
        sides = ((0, 0),) * x.ndim
        whole = x.rechunk(tuple((s,) for s in x.shape)).astype(plan.compute_dtype)
        y = whole.map_blocks(
            wiener_tile, plan=plan, sides=sides, dtype=plan.compute_dtype, meta=_meta(x, plan)
        )
    else:
        y = _wiener_tiles(x, plan)
    return _record(y.rechunk(x.chunks), plan, psf, reg, x)


def _richardson_lucy_tiles(x: da.Array, plan: DeconvolutionPlan) -> da.Array:
    merged, haloed = _tiles(x, plan, "wrap" if plan.periodic else None)
    return haloed.map_blocks(
        _richardson_lucy_block,
        plan=plan,
        counts=merged.numblocks,
        chunks=merged.chunks,
        dtype=plan.compute_dtype,
        meta=_meta(merged, plan),
        token="distconv-richardson-lucy",
    )


def _richardson_lucy_block(tile, plan: DeconvolutionPlan, counts, block_info=None):
    sides, edges = tile_sides(plan.halo, block_info[0]["chunk-location"], counts, plan.periodic)
    core = tuple(slice(lo, size - hi) for (lo, hi), size in zip(sides, tile.shape))
    check_image_values(tile[core], _where(block_info[None]["array-location"]))
    # Host tiles (chunks are not uploaded in the client of a cluster) go to the GPU once here,
    # so the iterations' estimate stays on the device.
    uploaded = not is_gpu_array(tile) and uploads_host_tiles(plan)
    if uploaded:
        tile = upload(tile)
    out = richardson_lucy_tile(tile, plan, sides, edges, plan.iterations, clip=plan.clip)
    return to_numpy(out) if uploaded else out


def _wiener_tiles(x: da.Array, plan: DeconvolutionPlan) -> da.Array:
    merged, haloed = _tiles(x, plan, MODES[plan.mode])
    sides = tuple((h, h) for h in plan.halo)
    return haloed.map_blocks(
        wiener_tile,
        plan=plan,
        sides=sides,
        chunks=merged.chunks,
        dtype=plan.compute_dtype,
        meta=_meta(merged, plan),
        token="distconv-wiener",
    )


def _tiles(x: da.Array, plan: DeconvolutionPlan, pad_mode: str | None):
    """The plan's tiles of ``x`` and their haloed blocks (true edges padded by ``pad_mode``)."""
    if x.chunks != plan.layout.chunks:
        x = x.rechunk(plan.layout.chunks)
    return exchange_halos(x, plan.halo, pad_mode, 0.0, plan.compute_dtype)


def _meta(x: da.Array, plan: DeconvolutionPlan):
    return array_module(x._meta).empty((0,) * x.ndim, dtype=plan.compute_dtype)


def _where(location) -> str:
    return "[" + ", ".join(f"{start}:{stop}" for start, stop in location) + "]"


def _record(y: da.Array, plan: DeconvolutionPlan, psf, reg, x: da.Array) -> da.Array:
    parameters = {**plan.parameters(), "exact": plan.exact}
    if not plan.exact:
        parameters["halo_pixels"] = list(plan.halo)  # approximate pixels depend on it
    if reg is not None:
        parameters["reg_sha256"] = weights_digest(np.asarray(reg, dtype=np.float64))
    return remember_provenance(
        y,
        {
            "operation": plan.algorithm.replace("-", "_"),
            "parameters": parameters,
            "psf_sha256": weights_digest(np.asarray(psf, dtype=np.float64)),
            "psf_shape": list(np.shape(psf)),
            "strategy": plan.strategy,
            "halo": list(plan.halo),
            "plan": {"tasks": plan.layout.tasks, "tile": [max(c) for c in plan.layout.chunks]},
            "method": f"{plan.strategy} ({'exact' if plan.exact else 'smaller halo'})",
            "engine": ",".join(plan.engines_used()),
            "input_shape": list(x.shape),
            "input_dtype": str(x.dtype),
        },
    )
