"""The embedded default: a ``distributed.LocalCluster`` sized to this machine, on 127.0.0.1."""

from __future__ import annotations

import logging
from contextlib import contextmanager

import dask
from distributed import LocalCluster

from distconv.clusters.resources import local_sizes

# distributed's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536, which also switches off
# glibc's adaptive mmap threshold: every chunk-sized array is then a fresh mmap, paid in page
# faults on each allocation (an 8192² Zarr → Zarr copy in 2048² chunks took 0.55 s instead of
# 0.38 s on the 2-core CI machine). Arrays up to 32 MiB (a 2048² float64 chunk) now come from
# the heap and are reused; free heap beyond 32 MiB still goes back to the system. One malloc
# arena per computing thread keeps the worker's other threads (zarr's event loop, zarrs'
# decoders) from holding free lists of their own: a one-thread worker with two arenas peaked
# 50 MiB higher and grew 13 % from 8192² to 32768² (9×9 convolve, 2048² chunks), with one
# arena 10 % and no slower (16384², 9 runs each: median 4.41 s vs 4.45 s).
_DASK_DEFAULT_TRIM = 65536
_REUSE_BELOW = str(32 * 2**20)
# distributed hands root tasks (chunk reads) to a worker only while it runs fewer than
# ceil(1.1 × threads) tasks. A halo task waiting for its neighbours' strips holds one of a
# one-thread worker's two slots, so the next read came one scheduler round trip late (about
# 0.12 s idle per worker per 16384² convolve); three slots keep a read ready, with the same
# peak memory at 32768².
_DASK_DEFAULT_SATURATION = 1.1
_SATURATION = 2.5


def worker_log_level(worker_logs: bool = False) -> int:
    """The level from which a cluster distconv starts lets its scheduler and workers log.

    A failed task reaches the user once, as the exception the job raises (one line from the
    CLI); the worker's own "Compute Failed" report of it, logged at ERROR, is left out unless
    ``worker_logs`` (the CLI's ``--debug``).
    """
    return logging.ERROR if worker_logs else logging.CRITICAL


def local_cluster(
    workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | int | None = None,
    worker_logs: bool = False,
) -> LocalCluster:
    """A LocalCluster of worker processes; scheduler and dashboard bind to 127.0.0.1 only.

    Default: one single-threaded worker per core, so NumPy/SciPy/BLAS in a task never compete
    for cores; memory is split equally between workers. Workers log critical messages only,
    or errors too with ``worker_logs`` (:func:`worker_log_level`).
    """
    n_workers, threads, limit = local_sizes(workers, threads_per_worker, memory_limit)
    with chunk_job_settings(threads):
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads,
            processes=True,
            memory_limit=limit,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            silence_logs=worker_log_level(worker_logs),
        )


@contextmanager
def chunk_job_settings(threads_per_worker: int = 1):
    """Settings for the clusters distconv starts: reused chunk buffers, one malloc arena per
    computing thread (``threads_per_worker``), a read kept ready.

    Only distributed's defaults are replaced (see the comments above); a
    ``MALLOC_TRIM_THRESHOLD_`` in ``distributed.nanny.pre-spawn-environ`` or a
    ``distributed.scheduler.worker-saturation`` the user set is kept as it is.
    """
    settings = {}
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    if str(environ.get("MALLOC_TRIM_THRESHOLD_")) == str(_DASK_DEFAULT_TRIM):
        environ["MALLOC_TRIM_THRESHOLD_"] = _REUSE_BELOW
        environ.setdefault("MALLOC_MMAP_THRESHOLD_", _REUSE_BELOW)
        environ.setdefault("MALLOC_ARENA_MAX", str(max(1, threads_per_worker)))
        settings["distributed.nanny.pre-spawn-environ"] = environ
    saturation = dask.config.get("distributed.scheduler.worker-saturation", None)
    if saturation is not None and float(saturation) == _DASK_DEFAULT_SATURATION:
        settings["distributed.scheduler.worker-saturation"] = _SATURATION
    with dask.config.set(settings):
        yield
