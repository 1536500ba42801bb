"""What a cluster offers: the one place that asks a Dask client for its workers, threads, memory
limits, hosts and GPUs.

Importing this module imports no ``distributed``; :func:`current_client` does, when called.
"""

from __future__ import annotations

import os

import dask.system
from dask.utils import format_bytes, parse_bytes

from distconv.errors import DistconvError
from distconv.plan.matmul import SAFETY_FRACTION, Resources

__all__ = ["budget_bytes", "current_client", "detect_resources"]


def current_client():
    """The active ``distributed.Client``, or None when work runs on local threads."""
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


def detect_resources(memory_budget: int | str | None = None) -> Resources:
    """Threads, cores per task and per-task memory of the current client (or this machine)."""
    client = current_client()
    if client is not None:
        found = _client_resources(client)
        if found is not None:
            parallel, cores_per_task, worker_budget, source = found
            if memory_budget is not None:
                return Resources(parallel, cores_per_task, budget_bytes(memory_budget), "given")
            return Resources(parallel, cores_per_task, worker_budget, source)
    from distconv.clusters.local import machine_memory

    threads = int(dask.system.CPU_COUNT)  # Dask's threaded scheduler runs this many tasks
    if memory_budget is not None:
        return Resources(threads, 1, budget_bytes(memory_budget), "given")
    budget = int(machine_memory() / threads * SAFETY_FRACTION)
    return Resources(threads, 1, budget,
                     f"{SAFETY_FRACTION} x machine memory / {threads} threads; no Dask client")


def _client_resources(client) -> tuple[int, int, int, str] | None:
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    if not workers:
        return None
    parallel = sum(int(w["nthreads"]) for w in workers.values())
    per_thread = [int(w["memory_limit"]) / max(1, int(w["nthreads"]))
                  for w in workers.values() if w.get("memory_limit")]
    if per_thread:
        budget = int(min(per_thread) * SAFETY_FRACTION)
        source = (f"{SAFETY_FRACTION} x smallest worker memory_limit per thread, "
                  f"{format_bytes(int(min(per_thread)))}")
    else:  # workers without a memory limit: fall back to this machine's memory
        from distconv.clusters.local import machine_memory

        budget = int(machine_memory() / parallel * SAFETY_FRACTION)
        source = f"{SAFETY_FRACTION} x machine memory / {parallel} threads; workers set no limit"
    return parallel, _cores_per_thread(client, workers), budget, source


def _cores_per_thread(client, workers: dict) -> int:
    """Cores each worker thread may use: a host's cores over the threads running on it."""
    try:
        cores = client.run(os.cpu_count)
    except Exception:  # a worker that cannot answer: assume one core per thread
        return 1
    threads_on_host: dict[str, int] = {}
    cores_on_host: dict[str, int] = {}
    for address, info in workers.items():
        host = info.get("host", address)
        threads_on_host[host] = threads_on_host.get(host, 0) + int(info["nthreads"])
        cores_on_host[host] = int(cores.get(address) or 1)
    return max(1, min(cores_on_host[h] // threads_on_host[h] for h in threads_on_host))


def budget_bytes(value: int | str) -> int:
    try:
        budget = parse_bytes(value) if isinstance(value, str) else int(value)
    except (ValueError, TypeError):
        raise DistconvError(f"memory budget must be bytes or a size like '2GiB', got {value!r}") \
            from None
    if budget <= 0:
        raise DistconvError(f"memory budget must be positive, got {value!r}")
    return budget
