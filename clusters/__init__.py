"""Where the work runs: one spec parser for the CLI and the API.

Forms:

``auto``
    The default: ``threads`` for a job under 1 GiB of input plus output, else ``local``
    (:mod:`.auto`; without the job's size, ``local``).
``local``
    An embedded ``distributed.LocalCluster`` of worker processes sized to this machine's cores
    and memory, scheduler and dashboard on 127.0.0.1.
``threads``
    No cluster: Dask's threaded scheduler in this process.
``cuda``
    dask-cuda's ``LocalCUDACluster``: one worker per visible GPU (:mod:`.cuda`).
``tcp://HOST:PORT`` / ``tls://HOST:PORT``
    A scheduler that already runs; TLS from Dask's security config (:mod:`.remote`).
``PATH.yaml``
    A dask-jobqueue cluster (SLURM, PBS, SGE, LSF) described by a file (:mod:`.jobqueue`).

Every cluster gets distconv's worker plugins (:mod:`.plugins`): thread pools capped at each
worker's share of the cores, and TensorFlow/CuPy set up to share a GPU worker's device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from distconv.clusters.auto import AutoChoice, choose
from distconv.clusters.guard import check_main_guard
from distconv.errors import DistconvError

SPEC_FORMS = (
    "auto, local, threads, cuda, tcp://HOST:PORT, tls://HOST:PORT, PATH.yaml (dask-jobqueue)"
)
KINDS = ("auto", "local", "threads", "cuda", "remote", "jobqueue")


@dataclass(frozen=True)
class ClusterSpec:
    """A parsed ``--cluster`` value.

    Attributes
    ----------
    kind : str
        One of :data:`KINDS`.
    address : str, optional
        The scheduler address of a ``remote`` spec.
    path : str, optional
        The YAML file of a ``jobqueue`` spec.
    """

    kind: str
    address: str | None = None
    path: str | None = None


def parse_spec(spec: str | None) -> ClusterSpec:
    """Parse a cluster spec; an unknown one is a one-line error listing the forms.

    Parameters
    ----------
    spec : str, optional
        See :data:`SPEC_FORMS`; default from config ``distconv.cluster`` ("auto").

    Raises
    ------
    DistconvError
        For anything else, or a ``.yaml`` path that does not exist.
    """
    if spec is None:
        from distconv.config import get_default

        spec = get_default("cluster")
    text = str(spec).strip()
    if text in ("auto", "local", "threads", "cuda"):
        return ClusterSpec(text)
    if text.startswith(("tcp://", "tls://")):
        host_port = text.split("://", 1)[1]
        host, _, port = host_port.rpartition(":")
        if host and port.isdigit():
            return ClusterSpec("remote", address=text)
        raise DistconvError(f"cluster address {spec!r} must be tcp://HOST:PORT or tls://HOST:PORT")
    from distconv.clusters.jobqueue import is_yaml_path

    if is_yaml_path(text):
        import os

        if not os.path.isfile(text):
            raise DistconvError(f"cluster file {text}: no such file")
        return ClusterSpec("jobqueue", path=text)
    raise DistconvError(f"unknown cluster {spec!r}; use one of: {SPEC_FORMS}")


def resolve(
    spec: str | None = None, work: Any = None, *, sized: bool = False
) -> tuple[ClusterSpec, AutoChoice | None]:
    """Parse a spec and, for ``auto``, choose ``threads`` or ``local`` for this job.

    Parameters
    ----------
    spec : str, optional
        See :data:`SPEC_FORMS`; default from config ``distconv.cluster`` ("auto").
    work : int, array or iterable of arrays, optional
        The job's input and output arrays (or their bytes), for ``auto``.
    sized : bool
        Workers or threads per worker were given (``auto`` then starts worker processes).

    Returns
    -------
    (ClusterSpec, AutoChoice or None)
        The spec to start (never ``auto``) and, when ``auto`` chose it, the choice and reason.
    """
    parsed = parse_spec(spec)
    if parsed.kind != "auto":
        return parsed, None
    choice = choose(work, sized=sized)
    return ClusterSpec(choice.kind), choice


@contextlib.contextmanager
def cluster(
    spec: str | None = None,
    *,
    work: Any = None,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | int | None = None,
    rmm_pool_size: str | int | None = None,
    quiet: bool = False,
    worker_logs: bool = False,
) -> Iterator[Any]:
    """Start (or connect to) the cluster a spec names and yield its ``distributed.Client``.

    Parameters
    ----------
    spec : str, optional
        See :data:`SPEC_FORMS`; default from config ``distconv.cluster`` ("auto").
    work : int, array or iterable of arrays, optional
        For ``auto``: the job's input and output arrays (or their bytes). Under 1 GiB
        (config ``distconv.auto-local-bytes``) the job runs on threads in this process and
        None is yielded; from there on, or when ``work`` is not given, a local cluster starts.
    workers, threads_per_worker, memory_limit
        Sizing for ``local`` (default: one single-threaded worker process per core, memory
        shared equally) and ``cuda`` (default: one single-threaded worker per GPU).
    rmm_pool_size : str or int, optional
        ``cuda`` only: an RMM pool of this size on each GPU worker (e.g. ``"24GB"``).
    quiet : bool
        Do not print the dashboard link.
    worker_logs : bool
        Let the workers of a cluster started here (``local``, ``cuda``) log errors to this
        terminal (the CLI's ``--debug``). Off by default: a failed task reaches you once, as
        the exception the job raises, not again as a worker's "Compute Failed" log.

    Yields
    ------
    distributed.Client or None
        None for ``threads``: Dask's threaded scheduler runs in this process.

    Examples
    --------
    >>> with dc.cluster("tcp://10.0.0.5:8786") as client:   # doctest: +SKIP
    ...     dc.save(dc.convolve(dc.open("big.zarr"), w), "out.zarr")
    >>> y = dc.convolve(dc.open("big.zarr"), w)
    >>> with dc.cluster(work=[y]) as client:   # auto: threads if small    # doctest: +SKIP
    ...     dc.save(y, "out.zarr")

    Notes
    -----
    A ``local`` or ``cuda`` cluster started by a script's top-level code outside
    ``if __name__ == "__main__":`` stops the script with one line saying so
    (:mod:`.guard`): its worker processes would run the script again.
    """
    parsed, _ = resolve(spec, work, sized=bool(workers or threads_per_worker))
    if rmm_pool_size is not None and parsed.kind != "cuda":
        raise DistconvError("--rmm-pool-size applies to --cluster cuda only")
    if parsed.kind == "threads":
        yield None
        return
    if parsed.kind in ("local", "cuda"):
        check_main_guard(parsed.kind)
    from distributed import Client

    from distconv.clusters.plugins import register_plugins

    if parsed.kind == "remote":
        from distconv.clusters.remote import connect

        with connect(parsed.address) as client:
            register_plugins(client)
            yield client
        return
    if parsed.kind in ("local", "cuda"):
        if parsed.kind == "local":
            from distconv.clusters.local import local_cluster as start

            gpu = {}
        else:
            from distconv.clusters.cuda import cuda_cluster as start

            gpu = {"rmm_pool_size": rmm_pool_size}
        made = start(
            workers=workers,
            threads_per_worker=threads_per_worker,
            memory_limit=memory_limit,
            worker_logs=worker_logs,
            **gpu,
        )
    else:
        if workers or threads_per_worker or memory_limit:
            raise DistconvError(
                "--workers/--threads-per-worker do not apply to a cluster file; "
                "size it with the file's 'cluster', 'scale' or 'adapt'"
            )
        from distconv.clusters.jobqueue import jobqueue_cluster

        made = jobqueue_cluster(parsed.path, worker_logs=worker_logs)
    with made, Client(made) as client:
        register_plugins(client, rmm=rmm_pool_size is not None)
        if not quiet and client.dashboard_link:
            # stdout: stderr is kept for errors, so a failed job's stderr is its one line.
            print(f"dashboard: {client.dashboard_link}", flush=True)
        yield client


def describe(client) -> dict[str, Any]:
    """Scheduler, workers, threads, memory, resources and GPUs of a connected cluster.

    GPU names come from the worker's NVML metrics when distributed reports them (no CUDA
    context is made for this), else from a ``GPU`` resource.

    Parameters
    ----------
    client : distributed.Client

    Returns
    -------
    dict
        ``scheduler``, ``dashboard``, ``workers`` (one dict each: address, name, threads,
        memory_limit, resources, gpu, gpu_memory) and the totals ``total_threads``,
        ``total_memory`` and ``gpus``.
    """
    from distconv.clusters.resources import scheduler_info, worker_gpu

    info = scheduler_info(client)
    workers = []
    for address, worker in sorted(info["workers"].items()):
        gpu = worker_gpu(worker)
        gpu_name = gpu.get("name") if gpu is not None else None
        resources = dict(worker.get("resources") or {})
        workers.append(
            {
                "address": address,
                "name": str(worker.get("name")),
                "threads": int(worker.get("nthreads", 0)),
                "memory_limit": int(worker.get("memory_limit") or 0),
                "resources": resources,
                "gpu": gpu_name or ("GPU resource" if resources.get("GPU") else None),
                "gpu_memory": int(gpu.get("memory-total", 0)) if gpu is not None else None,
            }
        )
    return {
        "scheduler": info.get("address"),
        "dashboard": client.dashboard_link,
        "workers": workers,
        "total_threads": sum(w["threads"] for w in workers),
        "total_memory": sum(w["memory_limit"] for w in workers),
        "gpus": sum(1 for w in workers if w["gpu"]),
    }
