"""Benchmarks behind ``distconv bench`` and the scripted suite in benchmarks/.

:func:`run` generates the data once (seeded, on disk as Zarr), starts the cluster, times every
contender alternating in this one process (warm-up, median of repeats), and writes the results
as JSON and a PNG chart; :mod:`distconv.bench.report` renders the same rows as a table.

Nothing here is imported by ``import distconv``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from distconv.bench.common import Session
from distconv.bench.report import Result, markdown, print_table, write_chart, write_json

BENCHMARKS = ("convolve", "matmul", "multiply")

__all__ = ["BENCHMARKS", "Result", "markdown", "print_table", "run", "write_outputs"]


def run(
    benchmark: str,
    *,
    size: int,
    engines: Sequence[str],
    kernels: Sequence[int] = (),
    chunk: int | None = None,
    chunks: Sequence[int] | None = None,
    ndim: int = 2,
    dtype: str = "float32",
    repeats: int = 3,
    cluster: str | None = "local",
    workers: int | None = None,
    threads_per_worker: int | None = None,
    workdir: str | os.PathLike | None = None,
    references: bool = True,
    max_seconds: float = 30.0,
    log: Callable[[str], None] | None = None,
) -> Result:
    """Run one benchmark on a cluster started here and return its :class:`Result`.

    Parameters
    ----------
    benchmark : {'convolve', 'matmul', 'multiply'}
    size : int
        Side of the square float32 input(s).
    engines : sequence of str
        distconv engines to time, one row each (per kernel for convolve).
    kernels : sequence of int
        Kernel sizes (convolve only).
    chunk : int, optional
        Zarr chunk side (default 2048 for convolve, 1024 otherwise, at most ``size``).
    chunks : sequence of int, optional
        Convolve: chunk sides to store the data in, one after the other (instead of ``chunk``).
    ndim : {2, 3}
        Convolve: an image or a volume of side ``size``.
    dtype : str
        Convolve: the stored dtype.
    repeats : int
        Timed runs per contender after one warm-up.
    cluster, workers, threads_per_worker
        As for ``distconv convolve --cluster``.
    workdir : path, optional
        Scratch directory for the data (default: a temporary directory, removed afterwards).
    references : bool
        Also time the reference tools (dask-image, dask.array, in-memory SciPy/NumPy).
    max_seconds : float
        Convolve cells estimated to take longer are listed as skipped.
    log : callable, optional
        Called with one line per timed run.
    """
    import distconv as dc

    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}")
    default = (128 if ndim == 3 else 2048) if benchmark == "convolve" else 1024
    chunk = min(chunk or default, size)
    with (
        tempfile.TemporaryDirectory(prefix="distconv-bench-", dir=workdir) as tmp,
        dc.cluster(
            cluster, workers=workers, threads_per_worker=threads_per_worker, quiet=True
        ) as client,
    ):
        session = Session(Path(tmp), chunk, repeats, client, references, log)
        if benchmark == "convolve":
            from distconv.bench.convolve import bench_convolve

            result = bench_convolve(
                size,
                kernels,
                engines,
                session,
                max_seconds,
                chunks=chunks,
                ndim=ndim,
                dtype=dtype,
            )
        else:
            from distconv.bench.linalg import bench_linalg

            result = bench_linalg(benchmark, size, engines, session)
        result.setup["cluster"] = cluster_text(client)
    return result


def cluster_text(client) -> str:
    """``LocalCluster 2 workers × 1 thread(s)`` (or the threaded scheduler)."""
    if client is None:
        return f"threaded scheduler, {os.cpu_count()} threads"
    from distconv.clusters.resources import worker_infos

    workers = worker_infos(client)
    threads = sorted({w["nthreads"] for w in workers.values()})
    return f"{len(workers)} worker(s) × {'/'.join(map(str, threads))} thread(s)"


def write_outputs(result: Result, output_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``bench-<benchmark>.json`` and ``bench-<benchmark>.png`` in ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = output_dir / f"bench-{result.benchmark}"
    return write_json(result, stem.with_suffix(".json")), write_chart(
        result, stem.with_suffix(".png")
    )
