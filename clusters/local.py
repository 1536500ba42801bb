"""The embedded default: a ``distributed.LocalCluster`` sized to this machine, on 127.0.0.1."""

from __future__ import annotations

import os
from contextlib import contextmanager

import dask
from distributed import LocalCluster

# distributed's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536, which also switches off
# glibc's adaptive mmap threshold: every chunk-sized array is then a fresh mmap, paid in page
# faults on each allocation (an 8192² Zarr → Zarr copy in 2048² chunks took 0.55 s instead of
# 0.38 s on the 2-core CI machine). Arrays up to 32 MiB (a 2048² float64 chunk) now come from
# the heap and are reused; free heap beyond 32 MiB still goes back to the system.
_DASK_DEFAULT_TRIM = 65536
_REUSE_BELOW = str(32 * 2**20)


def machine_memory() -> int:
    """Bytes of memory this process may use (cgroup limit where one is set)."""
    try:
        from distributed.system import MEMORY_LIMIT

        return int(MEMORY_LIMIT)
    except ImportError:  # pragma: no cover - distributed always has it today
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def local_cluster(workers: int | None = None, threads_per_worker: int | None = None,
                  memory_limit: str | int | None = None) -> LocalCluster:
    """A LocalCluster of worker processes; scheduler and dashboard bind to 127.0.0.1 only.

    Default: one single-threaded worker per core, so NumPy/SciPy/BLAS in a task never compete
    for cores; memory is split equally between workers.
    """
    cores = os.cpu_count() or 1
    threads = threads_per_worker or 1
    n_workers = workers or max(1, cores // threads)
    limit = memory_limit or int(machine_memory() * 0.9 / n_workers)
    with reusable_worker_memory():
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads,
            processes=True,
            memory_limit=limit,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            silence_logs=40,  # errors only: the CLI prints its own progress
        )


@contextmanager
def reusable_worker_memory():
    """Start worker processes whose chunk-sized buffers are reused, not mapped afresh each time.

    Replaces only distributed's default ``MALLOC_TRIM_THRESHOLD_``; a value the user set in
    ``distributed.nanny.pre-spawn-environ`` is kept as it is.
    """
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    if str(environ.get("MALLOC_TRIM_THRESHOLD_")) != str(_DASK_DEFAULT_TRIM):
        yield
        return
    environ["MALLOC_TRIM_THRESHOLD_"] = _REUSE_BELOW
    environ.setdefault("MALLOC_MMAP_THRESHOLD_", _REUSE_BELOW)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        yield
