"""``cuda``: one Dask worker per visible GPU on this machine, through dask-cuda.

dask-cuda's ``LocalCUDACluster`` gives each worker process its own ``CUDA_VISIBLE_DEVICES``
(its GPU first), so every worker computes on a different device. GPUs are counted by
:func:`distconv.clusters.resources.gpu_count` (NVML or ``CUDA_VISIBLE_DEVICES``, never the CUDA
runtime), so the client process creates no CUDA context (nothing here imports CuPy, Numba's CUDA
target or TensorFlow).
"""

from __future__ import annotations

import importlib.util

from distconv.clusters.local import chunk_job_settings, worker_log_level
from distconv.clusters.resources import gpu_count
from distconv.errors import DistconvError

INSTALL_HINT = "pip install 'distconv[cuda]'"


def cuda_cluster(
    workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | int | None = None,
    rmm_pool_size: str | int | None = None,
    worker_logs: bool = False,
):
    """A ``dask_cuda.LocalCUDACluster`` on 127.0.0.1, one single-threaded worker per GPU.

    Parameters
    ----------
    workers : int, optional
        Use only the first ``workers`` GPUs (default: all visible).
    threads_per_worker : int, optional
        Default 1: one task at a time owns the device.
    memory_limit : str or int, optional
        Host memory per worker before spilling (default: dask-cuda's "auto").
    rmm_pool_size : str or int, optional
        Size of an RMM memory pool per worker (``"24GB"``, bytes, or a fraction of the device);
        CuPy then allocates from it. Needs the ``rmm`` package.
    worker_logs : bool
        Let workers log errors to this terminal (default: critical messages only).

    Returns
    -------
    dask_cuda.LocalCUDACluster
        Every worker declares ``resources={"GPU": 1}``, so GPU-engine tasks routed by resource
        find it, exactly as on a mixed remote cluster.

    Raises
    ------
    DistconvError
        dask-cuda is missing, no GPU is visible, ``workers`` exceeds the GPUs, or RMM is missing
        for ``rmm_pool_size``.
    """
    if importlib.util.find_spec("dask_cuda") is None:
        raise DistconvError(f"the cuda cluster needs dask-cuda ({INSTALL_HINT})")
    try:
        count = gpu_count(required=True)  # NVML or CUDA_VISIBLE_DEVICES: no CUDA context
    except DistconvError as exc:
        raise DistconvError(f"the cuda cluster {exc}") from None
    if workers is not None and workers > count:
        raise DistconvError(
            f"--workers {workers} but only {count} GPU(s) are visible; the cuda "
            "cluster runs one worker per GPU"
        )
    if rmm_pool_size is not None and importlib.util.find_spec("rmm") is None:
        raise DistconvError("--rmm-pool-size needs RMM (pip install rmm-cu12)")
    from dask_cuda import LocalCUDACluster

    try:
        with chunk_job_settings(threads_per_worker or 1):
            return LocalCUDACluster(
                n_workers=workers or count,
                threads_per_worker=threads_per_worker or 1,
                memory_limit=memory_limit or "auto",
                rmm_pool_size=rmm_pool_size,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",
                resources={"GPU": 1},
                silence_logs=worker_log_level(worker_logs),
            )
    except (ValueError, TypeError) as exc:  # dask-cuda's own argument checks
        raise DistconvError(f"cannot start the cuda cluster: {exc}") from None
