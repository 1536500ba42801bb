"""What a cluster offers: the one place that asks a Dask client, or NVML, for workers and GPUs.

Threads, memory limits, hosts and GPUs per worker, and the per-task resources the matmul planner
uses. Importing this module imports no ``distributed`` (:func:`current_client` does, when
called); GPUs are counted with NVML, never through the CUDA runtime, so no CUDA context is made.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import dask.system
from dask.utils import format_bytes, parse_bytes

from distconv.errors import DistconvError

__all__ = [
    "SAFETY_FRACTION",
    "Resources",
    "budget_bytes",
    "current_client",
    "detect_resources",
    "gpu_count",
    "local_sizes",
    "machine_memory",
    "planned_resources",
    "scheduler_info",
    "worker_gpu",
    "worker_infos",
]

# Share of a worker's memory one task may plan for: the rest covers Dask's own buffers, Zarr
# codec buffers, the output block waiting to be written and the engine's temporaries.
SAFETY_FRACTION = 0.5


@dataclass(frozen=True)
class Resources:
    """What the planner knows about where the graph will run."""

    parallel_tasks: int  # tasks that run at once (threads over all workers)
    cores_per_task: int  # the cores one running task may use without oversubscribing
    memory_budget: int  # bytes one task may use
    budget_source: str  # how memory_budget was found, for describe()


def current_client():
    """The active ``distributed.Client``, if any.

    Returns
    -------
    distributed.Client or None
        None when work runs on local threads (or distributed is not installed).
    """
    if "distributed" not in sys.modules:
        return None  # no client can exist, and importing distributed costs ~0.3 s
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


def scheduler_info(client) -> dict[str, Any]:
    """The scheduler's description of the cluster, every worker included.

    ``client`` is a ``distributed.Client``; the result is its ``scheduler_info`` with
    ``n_workers=-1``: a dict with the scheduler's ``address`` and ``workers`` (address →
    ``nthreads``, ``memory_limit``, ``host``, ``resources``, ``metrics``...).
    """
    return client.scheduler_info(n_workers=-1)


def worker_infos(client) -> dict[str, dict[str, Any]]:
    """Every worker of the cluster of ``client`` (a ``distributed.Client``), by address.

    A dict: worker address → the scheduler's record of it (see :func:`scheduler_info`); empty
    while the cluster has no worker.
    """
    return scheduler_info(client).get("workers", {})


def worker_gpu(info: dict[str, Any]) -> dict[str, Any] | None:
    """The GPU a worker reports through distributed's NVML metrics (no CUDA context is made).

    Parameters
    ----------
    info : dict
        One worker's record from :func:`worker_infos`.

    Returns
    -------
    dict or None
        NVML's facts (``name``, ``memory-total``...), or None when the worker reports no GPU.
    """
    gpu = info.get("gpu") or (info.get("metrics") or {}).get("gpu")
    return gpu if isinstance(gpu, dict) else None


def gpu_count(*, required: bool = False) -> int:
    """GPUs that workers started on this machine may use: ``CUDA_VISIBLE_DEVICES`` if set, else
    NVML's device count. Never through the CUDA runtime: no CUDA context is created.

    Parameters
    ----------
    required : bool
        Raise, saying why, when no GPU is usable, instead of returning 0.

    Returns
    -------
    int
        How many GPUs are usable (0 when none is, unless ``required``).

    Raises
    ------
    DistconvError
        With ``required``: ``CUDA_VISIBLE_DEVICES`` hides every device, NVML cannot be used (no
        driver, no pynvml), or it reports no device. The message continues "found no ...".
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        devices = [d for d in visible.split(",") if d.strip() and d.strip() != "-1"]
        if not devices and required:
            raise DistconvError(f"found no GPU: CUDA_VISIBLE_DEVICES={visible!r} hides them all")
        return len(devices)
    try:
        import pynvml

        pynvml.nvmlInit()
        count = int(pynvml.nvmlDeviceGetCount())
    except Exception as exc:  # no pynvml, or NVMLError_* without a driver or device
        if not required:
            return 0
        reason = str(exc).splitlines()[0] if str(exc) else "no NVIDIA driver"
        raise DistconvError(f"found no usable GPU ({type(exc).__name__}: {reason})") from None
    if count < 1 and required:
        raise DistconvError("found no GPU (NVML reports none)")
    return max(0, count)


def detect_resources(memory_budget: int | str | None = None) -> Resources:
    """Threads, cores per task and per-task memory of the current client (or this machine).

    Parameters
    ----------
    memory_budget : int or str, optional
        Bytes one task may use ("2GiB" is accepted). Default: the smallest worker's
        ``memory_limit`` per thread, else this machine's memory per thread, times
        :data:`~distconv.plan.matmul.SAFETY_FRACTION`.

    Returns
    -------
    Resources
        What :func:`~distconv.plan.matmul.plan_matmul` plans for.

    Raises
    ------
    DistconvError
        A ``memory_budget`` that is not a positive size.
    """
    client = current_client()
    if client is not None:
        found = _client_resources(client)
        if found is not None:
            parallel, cores_per_task, worker_budget, source = found
            if memory_budget is not None:
                return Resources(parallel, cores_per_task, budget_bytes(memory_budget), "given")
            return Resources(parallel, cores_per_task, worker_budget, source)
    threads = int(dask.system.CPU_COUNT)  # Dask's threaded scheduler runs this many tasks
    if memory_budget is not None:
        return Resources(threads, 1, budget_bytes(memory_budget), "given")
    budget = int(machine_memory() / threads * SAFETY_FRACTION)
    return Resources(
        threads,
        1,
        budget,
        f"{SAFETY_FRACTION} x machine memory / {threads} threads; no Dask client",
    )


# Memory limits of this process's cgroup (v1 hard and soft, v2 max, high and low), as
# distributed.system reads them.
_CGROUP_LIMITS = (
    "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    "/sys/fs/cgroup/memory/memory.soft_limit_in_bytes",
    "/sys/fs/cgroup/memory.max",
    "/sys/fs/cgroup/memory.high",
    "/sys/fs/cgroup/memory.low",
)


def machine_memory() -> int:
    """Bytes of memory this process may use: the machine's, or less where a cgroup limit or
    ``RLIMIT_RSS`` says so (``distributed.system.MEMORY_LIMIT``'s rule).

    Read here rather than from distributed, which a threaded job never imports (~0.3 s).
    """
    limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in _CGROUP_LIMITS if sys.platform == "linux" else ():
        try:
            with open(path) as handle:
                found = int(handle.read())
        except (OSError, ValueError):  # absent, or "max"
            continue
        if found > 0:
            limit = min(limit, found)
    try:
        import resource

        hard = resource.getrlimit(resource.RLIMIT_RSS)[1]
        if 0 < hard < limit:
            limit = hard
    except (ImportError, OSError):  # pragma: no cover - Windows
        pass
    return int(limit)


def local_sizes(
    workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | int | None = None,
) -> tuple[int, int, int | str]:
    """(workers, threads per worker, memory limit per worker) of the local cluster
    (:func:`distconv.clusters.local.local_cluster`) these options start."""
    cores = os.cpu_count() or 1
    threads = threads_per_worker or 1
    n_workers = workers or max(1, cores // threads)
    return n_workers, threads, memory_limit or int(machine_memory() * 0.9 / n_workers)


def planned_resources(
    workers: int | None = None, threads_per_worker: int | None = None
) -> Resources:
    """What :func:`distconv.clusters.resources.detect_resources` would find on the local
    cluster these options start, without starting it (a dry run plans from arithmetic)."""
    n_workers, threads, limit = local_sizes(workers, threads_per_worker)
    parallel = n_workers * threads
    per_thread = int(limit) / threads
    return Resources(
        parallel,
        max(1, (os.cpu_count() or 1) // parallel),
        int(per_thread * SAFETY_FRACTION),
        f"{SAFETY_FRACTION} x the local cluster's memory_limit per thread, "
        f"{format_bytes(int(per_thread))} (planned, not started)",
    )


def _client_resources(client) -> tuple[int, int, int, str] | None:
    """Threads, cores per thread, per-task budget and its source, from the client's workers
    (None when it has none yet)."""
    workers = worker_infos(client)
    if not workers:
        return None
    parallel = sum(int(w["nthreads"]) for w in workers.values())
    per_thread = [
        int(w["memory_limit"]) / max(1, int(w["nthreads"]))
        for w in workers.values()
        if w.get("memory_limit")
    ]
    if per_thread:
        budget = int(min(per_thread) * SAFETY_FRACTION)
        source = (
            f"{SAFETY_FRACTION} x smallest worker memory_limit per thread, "
            f"{format_bytes(int(min(per_thread)))}"
        )
    else:  # workers without a memory limit: fall back to this machine's memory
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


def budget_bytes(value: int | str, what: str = "memory budget", example: str = "2GiB") -> int:
    """A per-task memory budget (or another size: ``what``, for the error) in bytes.

    Parameters
    ----------
    value : int or str
        Bytes, or a size such as ``"2GiB"``.
    what, example : str
        How the error names the size, and an example of one.

    Returns
    -------
    int

    Raises
    ------
    DistconvError
        Anything that is not a positive size.
    """
    try:
        budget = parse_bytes(value) if isinstance(value, str) else int(value)
    except (ValueError, TypeError):
        raise DistconvError(
            f"{what} must be bytes or a size like '{example}', got {value!r}"
        ) from None
    if budget <= 0:
        raise DistconvError(f"{what} must be positive, got {value!r}")
    return budget
