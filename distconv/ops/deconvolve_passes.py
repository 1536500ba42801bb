"""Richardson–Lucy by passes: one pass over the image per iteration, through scratch Zarr stores.

Pass 1 reads the image (with one iteration's halo, from :func:`exchange_halos`), writes its tile
cores to ``image.zarr`` and the first estimate to ``estimate-1.zarr``; pass ``k`` reads the
image and estimate ``k - 1`` with that halo from the scratch stores and writes estimate ``k``;
the last pass returns its tiles. Every pixel is exact whatever the iteration count, and the
halo, hence the work per tile, does not grow with it.

Resuming works per chunk: a pass task whose estimate chunks already exist returns at once, and
the graph starts after the last complete estimate. A pass-``k`` task deletes its tile of
estimate ``k - 2``: every task that reads that tile (pass ``k - 1`` of its neighbours) has
finished by then, so about three estimates are on disk at a time.
"""

from __future__ import annotations

import atexit
import itertools
import json
import math
import os
import shutil
import tempfile
from functools import partial

import dask
import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from distconv.backend import array_module, is_gpu_array, to_numpy, upload
from distconv.errors import DistconvError
from distconv.ops.deconvolve_blocks import (
    check_image_values,
    richardson_lucy_tile,
    tile_sides,
    uploads_host_tiles,
)
from distconv.ops.halo import exchange_halos
from distconv.plan.deconvolution import DeconvolutionPlan
from distconv.provenance import remember_scratch, sources

__all__ = ["Scratch", "open_scratch", "pass_markers", "richardson_lucy_passes", "run_passes"]

JOB_FILE = "job.json"


class Scratch:
    """The scratch folder of one passes job: the image's tiles and the estimates, as Zarr."""

    def __init__(self, root: str, plan: DeconvolutionPlan, shape, dtype):
        self.root = os.path.abspath(root)
        self.chunks = plan.layout.chunks
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        # Zarr chunks that never straddle two tiles: each is written by one task only.
        self.zarr_chunks = tuple(
            math.gcd(*axis[:-1]) if len(axis) > 1 else axis[0] for axis in self.chunks
        )

    def path(self, name: str) -> str:
        return os.path.join(self.root, f"{name}.zarr")

    def record(self) -> dict[str, str]:
        """This folder as a working store: the job file the client wrote proves a worker
        sees it (:func:`distconv.save.sight.input_probes`)."""
        return {"path": self.root, "key": JOB_FILE}

    def remember(self, x: da.Array) -> da.Array:
        """``x``, recorded as reading and writing this folder: its workers must see it."""
        return remember_scratch(x, self.record())

    def array(self, name: str) -> zarr.Array:
        """The store ``name`` (``image`` or ``estimate-K``), created when missing."""
        path = self.path(name)
        if os.path.exists(os.path.join(path, "zarr.json")):
            return zarr.open_array(path, mode="r+").with_config({"write_empty_chunks": True})
        return zarr.create_array(
            store=path,
            shape=self.shape,
            chunks=self.zarr_chunks,
            dtype=self.dtype,
            compressors=None,  # scratch: read back soon, written every iteration
            zarr_format=3,
            config={"write_empty_chunks": True},
        )

    def complete(self, name: str) -> bool:
        """Whether every chunk of ``name`` is written."""
        path = self.path(name)
        if not os.path.exists(os.path.join(path, "zarr.json")):
            return False
        array = zarr.open_array(path, mode="r")
        return array.nchunks_initialized == array.nchunks


def open_scratch(root, plan: DeconvolutionPlan, x: da.Array) -> Scratch:
    """Open (or create) the scratch folder for this job; refuse one holding another job.

    ``root=None`` makes a new temporary folder, removed when this process exits.
    """
    fingerprint = tokenize(
        x.name,
        plan.psf.tobytes(),
        plan.psf.shape,
        plan.mode,
        plan.filter_epsilon,
        plan.iterations,
        plan.layout.chunks,
        plan.halo,
        str(plan.compute_dtype),
    )
    if root is None:
        base = dask.config.get("temporary-directory", None) or None
        root = tempfile.mkdtemp(prefix="distconv-passes-", dir=base)
        atexit.register(shutil.rmtree, root, ignore_errors=True)
    root = os.fspath(root)
    job = os.path.join(root, JOB_FILE)
    if os.path.exists(job):
        with open(job) as handle:
            recorded = json.load(handle).get("fingerprint")
        if recorded != fingerprint:
            raise DistconvError(
                f"scratch folder {root} holds another job's estimates; remove it or "
                "choose another (the CLI does so unless --resume)"
            )
    else:
        if os.path.exists(root) and os.listdir(root):
            raise DistconvError(f"scratch folder {root} is not empty and not distconv's")
        os.makedirs(root, exist_ok=True)
        with open(job, "w") as handle:
            json.dump({"fingerprint": fingerprint, "iterations": plan.iterations}, handle)
    return Scratch(root, plan, x.shape, plan.compute_dtype)


def richardson_lucy_passes(x: da.Array, plan: DeconvolutionPlan, scratch=None) -> da.Array:
    """The lazy result of the passes strategy: the passes not yet complete in ``scratch``.

    Parameters
    ----------
    x : dask.array.Array
        The image.
    plan : DeconvolutionPlan
        With ``strategy == "passes"``; ``plan.halo`` is one iteration's reach.
    scratch : str, os.PathLike or Scratch, optional
        See :func:`distconv.richardson_lucy`.

    Returns
    -------
    dask.array.Array
        Chunked as ``plan.layout.chunks``.
    """
    store = scratch if isinstance(scratch, Scratch) else open_scratch(scratch, plan, x)
    return store.remember(pass_markers(x, plan, store, plan.iterations))


def pass_markers(x: da.Array, plan: DeconvolutionPlan, store: Scratch, last: int) -> da.Array:
    """The graph of passes up to ``last``: one marker per tile, or the result when ``last`` is
    the final iteration. Passes already complete in ``store`` are not in it.

    Parameters
    ----------
    x : dask.array.Array
    plan : DeconvolutionPlan
    store : Scratch
    last : int
        1 to ``plan.iterations``.

    Returns
    -------
    dask.array.Array
    """
    done = next(
        (k for k in range(last - 1, 0, -1) if store.complete(f"estimate-{k}")),
        0,
    )
    if done and not store.complete("image"):
        done = 0
    arrays = {"image": store.array("image")}
    for k in range(max(done, 1), last + 1):
        arrays[k] = store.array(f"estimate-{k}") if k < plan.iterations else None
    grid = tuple(len(c) for c in plan.layout.chunks)
    starts = [np.cumsum((0,) + c)[:-1] for c in plan.layout.chunks]
    regions = {
        index: tuple(
            (int(s[i]), int(s[i]) + c[i]) for s, c, i in zip(starts, plan.layout.chunks, index)
        )
        for index in np.ndindex(*grid)
    }
    # Host chunks with a GPU engine: each task uploads what it reads, and the final estimate
    # comes back to the host (the client of a cluster never made the chunks CuPy).
    on_host = not is_gpu_array(x)
    to_gpu = not on_host or uploads_host_tiles(plan)
    job = _Job(plan, store, arrays, regions, grid, to_gpu=to_gpu, host_output=on_host)
    markers = np.empty((0,) * x.ndim, dtype=bool)
    if done == 0:
        merged, haloed = exchange_halos(
            x.rechunk(plan.layout.chunks) if x.chunks != plan.layout.chunks else x,
            plan.halo,
            "wrap" if plan.periodic else None,
            0.0,
            plan.compute_dtype,
        )
        is_result = plan.iterations == 1
        meta = _result_meta(x, plan) if is_result else markers
        current = haloed.map_blocks(
            _first_pass,
            job=job,
            final=is_result,
            chunks=merged.chunks if is_result else (1,) * x.ndim,
            dtype=meta.dtype,
            meta=meta,
            token=f"distconv-rl-pass-1-{tokenize(store.root)}",
        )
        first = 2
    else:
        current, first = None, done + 1
    for k in range(first, last + 1):
        name = f"distconv-rl-pass-{k}-" + tokenize(store.root, x.name, done)
        layer = {}
        for index in np.ndindex(*grid):
            needs = [] if current is None else [(current.name,) + n for n in job.neighbours(index)]
            layer[(name,) + index] = (partial(_next_pass, job, k, index), needs)
        dependencies = [] if current is None else [current]
        graph = HighLevelGraph.from_collections(name, layer, dependencies=dependencies)
        is_result = k == plan.iterations
        chunks = plan.layout.chunks if is_result else tuple((1,) * n for n in grid)
        current = da.Array(
            graph, name, chunks, meta=_result_meta(x, plan) if is_result else markers
        )
    return current


class _Job:
    """What every pass task needs: the plan, the stores, and the tiles' regions."""

    def __init__(self, plan, store, arrays, regions, grid, to_gpu, host_output):
        self.plan, self.store, self.arrays = plan, store, arrays
        self.regions, self.grid, self.to_gpu = regions, grid, to_gpu
        self.host_output = host_output

    def neighbours(self, index):
        """Tiles whose cores the haloed region of tile ``index`` overlaps."""
        axes = []
        for axis, i in enumerate(index):
            reach = [i]
            if self.plan.halo[axis]:
                reach = [i - 1, i, i + 1]
            count = self.grid[axis]
            if self.plan.periodic:
                reach = sorted({j % count for j in reach})
            else:
                reach = [j for j in reach if 0 <= j < count]
            axes.append(reach)
        return list(itertools.product(*axes))

    def sides(self, index):
        return tile_sides(self.plan.halo, index, self.grid, self.plan.periodic)

    def written(self, name, index) -> bool:
        """Whether every Zarr chunk of tile ``index`` exists in store ``name``."""
        return all(os.path.exists(path) for path in self._chunk_files(name, index))

    def forget(self, name, index) -> None:
        for path in self._chunk_files(name, index):
            if os.path.exists(path):
                os.remove(path)

    def _chunk_files(self, name, index):
        array = self.arrays[name] if name in self.arrays else None
        root = self.store.path(name if isinstance(name, str) else f"estimate-{name}")
        ranges = [
            range(lo // size, -(-hi // size))
            for (lo, hi), size in zip(self.regions[index], self.store.zarr_chunks)
        ]
        encode = (array or self.arrays["image"]).metadata.encode_chunk_key
        return [os.path.join(root, encode(c)) for c in itertools.product(*ranges)]

    def read(self, name, index):
        """Tile ``index`` of store ``name`` with its halo (wrapped across the ends if periodic)."""
        array = self.arrays["image"] if name == "image" else self.store.array(f"estimate-{name}")
        sides, _ = self.sides(index)
        selection = []
        for (lo, hi), (before, after), size in zip(self.regions[index], sides, array.shape):
            if self.plan.periodic:
                selection.append(np.arange(lo - before, hi + after) % size)
            else:
                selection.append(slice(lo - before, hi + after))
        if self.plan.periodic:
            data = array.oindex[tuple(selection)]
        else:
            data = array[tuple(selection)]
        # The tile goes to the device once; the estimate stays there.
        return upload(data) if self.to_gpu else data

    def write(self, name, index, core) -> None:
        array = self.arrays[name]
        array[tuple(slice(lo, hi) for lo, hi in self.regions[index])] = to_numpy(core)


def _first_pass(tile, job: _Job, final: bool, block_info=None):
    index = tuple(block_info[0]["chunk-location"])
    plan = job.plan
    sides, edges = job.sides(index)
    core = tuple(slice(lo, size - hi) for (lo, hi), size in zip(sides, tile.shape))
    if not final and job.written(1, index):
        return np.ones((1,) * tile.ndim, dtype=bool)
    where = "[" + ", ".join(f"{lo}:{hi}" for lo, hi in job.regions[index]) + "]"
    check_image_values(tile[core], where)
    estimate = richardson_lucy_tile(tile, plan, sides, edges, 1, clip=final and plan.clip)
    if final:
        return estimate
    job.write("image", index, tile[core])
    job.write(1, index, estimate)
    return np.ones((1,) * tile.ndim, dtype=bool)


def _next_pass(job: _Job, k: int, index, _neighbours_done):
    plan = job.plan
    final = k == plan.iterations
    if not final and job.written(k, index):
        return np.ones((1,) * len(index), dtype=bool)
    sides, edges = job.sides(index)
    estimate = richardson_lucy_tile(
        job.read("image", index),
        plan,
        sides,
        edges,
        1,
        estimate=job.read(k - 1, index),
        clip=final and plan.clip,
    )
    if k >= 3:
        job.forget(f"estimate-{k - 2}", index)  # its readers, pass k - 1 of the neighbours, ran
    if final:
        return to_numpy(estimate) if job.host_output else estimate
    job.write(k, index, estimate)
    return np.ones((1,) * len(index), dtype=bool)


def _result_meta(x: da.Array, plan: DeconvolutionPlan):
    return array_module(x._meta).empty((0,) * x.ndim, dtype=plan.compute_dtype)


def run_passes(x: da.Array, plan: DeconvolutionPlan, store: Scratch, progress=None) -> int:
    """Run every pass but the last, one after the other, each with its own progress bar.

    Passes already complete in ``store`` are skipped; the last pass is the graph that
    :func:`richardson_lucy_passes` returns (written by :func:`distconv.save`).

    Returns
    -------
    int
        How many passes ran here.
    """
    from distconv.executor import compute_blocks
    from distconv.save.sight import check_workers_see, input_probes

    image_done = store.complete("image")
    start = next(
        (
            k
            for k in range(plan.iterations - 1, 0, -1)
            if image_done and store.complete(f"estimate-{k}")
        ),
        0,
    )
    if start + 1 >= plan.iterations:
        return 0
    # The passes' workers must see the image's store and this folder, as save's do.
    sight = check_workers_see(input_probes([*sources(x), store.record()]))
    try:
        for k in range(start + 1, plan.iterations):
            compute_blocks(
                pass_markers(x, plan, store, k),
                description=f"iteration {k}/{plan.iterations}",
                progress=progress,
                resources={sight.resource: 1} if sight.resource else None,
                watchers=[sight.watch] if sight.resource else (),
            )
    finally:
        sight.release_now()
    return plan.iterations - 1 - start
