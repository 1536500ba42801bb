"""Route GPU-engine work to GPU workers on a cluster that mixes CPU and GPU workers.

Workers that own a GPU declare the resource ``GPU`` (dask-cuda workers started by the ``cuda``
spec do; elsewhere ``dask worker --resources GPU=1`` or a jobqueue file's
``worker_extra_args: ["--resources", "GPU=1"]``). A job whose graph runs a GPU engine is
submitted with ``resources={"GPU": 1}``.

The requirement is given at *submission* (``Client.compute(..., resources=...)``), not with
``dask.annotate`` while the graph is built: the scheduler applies a submission's resources to
every task it materialises, after graph optimisation, so fused tasks keep it; per-layer
annotations are lost when low-level fusion merges layers. The whole job goes to GPU workers
(reading and writing are fused into the engine tasks anyway, and a chunk then never crosses
between a CPU and a GPU worker).
"""

from __future__ import annotations

import re
from typing import Any

GPU_RESOURCE = "GPU"


def gpu_engines(x) -> list[str]:
    """GPU engines named in the provenance of the layers of ``x`` (a Dask collection)."""
    from distconv import kernels
    from distconv.provenance import engines_used

    names = []
    for engine in engines_used(x):
        if isinstance(engine, str) and kernels.is_gpu_engine(engine) and engine not in names:
            names.append(engine)
    return names


def gpu_workers(client) -> list[str]:
    """Addresses of the workers that declare a ``GPU`` resource.

    Parameters
    ----------
    client : distributed.Client

    Returns
    -------
    list of str
    """
    from distconv.clusters.resources import worker_infos

    return [
        address
        for address, info in worker_infos(client).items()
        if float((info.get("resources") or {}).get(GPU_RESOURCE, 0)) > 0
    ]


def cluster_will_have_gpu_workers(client) -> bool:
    """A dask-jobqueue cluster whose job script starts workers with a GPU resource: adaptive
    clusters may have no worker yet when a job is submitted."""
    job_script = getattr(getattr(client, "cluster", None), "job_script", None)
    if not callable(job_script):
        return False
    return re.search(r"--resources[ =]\S*\bGPU=", job_script()) is not None


def submit_resources(x, client) -> dict[str, Any] | None:
    """Resources to submit ``x`` with: ``{"GPU": 1}`` for GPU-engine work when some worker has
    (or the cluster's job script gives workers) a GPU resource, else None (no worker declares
    one: any worker may run it, as before)."""
    if client is None or not gpu_engines(x):
        return None
    if not gpu_workers(client) and not cluster_will_have_gpu_workers(client):
        return None
    return {GPU_RESOURCE: 1}
