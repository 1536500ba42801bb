"""The embedded default: a ``distributed.LocalCluster`` sized to this machine, on 127.0.0.1."""

from __future__ import annotations

import os

from distributed import LocalCluster


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
    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads,
        processes=True,
        memory_limit=limit,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=40,  # errors only: the CLI prints its own progress
    )
