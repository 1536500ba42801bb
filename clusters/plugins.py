"""Worker plugins distconv registers on every cluster it starts or connects to.

``ThreadLimits``
    Caps the thread pools of BLAS (through threadpoolctl), TensorFlow and Numba to the worker's
    share of the cores: its ``nthreads``, which is what Dask allots it (LocalCluster splits the
    cores between workers, dask-jobqueue gives ``cores / processes``, ``dask worker --nthreads``
    says it outright). Without this every worker process on a host sizes its pools to *all* the
    host's cores, and N workers oversubscribe the machine N times.
``GPUSetup``
    On a worker that owns a GPU (``resources={"GPU": ...}`` or a ``CUDA_VISIBLE_DEVICES`` of its
    own, as dask-cuda gives each worker): TensorFlow sees only that GPU with memory growth on, so
    it does not take the whole device, and CuPy allocates from a pool (RMM's when the worker has
    an RMM pool, else CuPy's own, capped below the device size so TensorFlow keeps room).

Both set environment variables first, which is what libraries not yet imported read, and then
adjust libraries the worker has already imported where they still allow it. Both are idempotent:
re-registering (a second client on the same cluster) replaces them by name.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

logger = logging.getLogger("distconv.clusters")

# Environment variables each library reads once, when it is first imported in the worker.
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
)


def worker_share(worker) -> int:
    """Cores a worker may use: its ``nthreads`` (Dask's allotment), at least one."""
    return max(1, int(worker.state.nthreads))


class ThreadLimits(WorkerPlugin):
    """Cap BLAS, TensorFlow and Numba thread pools at the worker's share of the cores.

    Parameters
    ----------
    threads : int, optional
        Use this many threads instead of the worker's ``nthreads``.
    """

    name = "distconv-thread-limits"
    idempotent = False  # a new registration may carry a new ``threads``: replace the old one

    def __init__(self, threads: int | None = None):
        self.threads = threads
        self.applied: dict[str, Any] = {}
        self._limiter = None

    def setup(self, worker) -> None:
        threads = self.threads or worker_share(worker)
        for name in THREAD_ENV_VARS:
            os.environ[name] = str(threads)
        applied: dict[str, Any] = {"threads": threads}

        # BLAS/OpenMP libraries already loaded (NumPy's BLAS always is): limit them now.
        from threadpoolctl import threadpool_limits

        self._limiter = threadpool_limits(limits=threads)
        applied["threadpoolctl"] = {
            lib["internal_api"]: lib["num_threads"] for lib in _threadpool_info()
        }

        if "tensorflow" in sys.modules:
            tf = sys.modules["tensorflow"]
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(threads)
                applied["tensorflow"] = threads
            except RuntimeError:  # TF already ran an op here: its pools are fixed for good
                applied["tensorflow"] = "fixed (runtime already started)"
        if "numba" in sys.modules:
            numba = sys.modules["numba"]
            # NUMBA_NUM_THREADS is read at import: after that only set_num_threads (a mask per
            # calling thread) can lower it, and only up to the pool size already launched.
            applied["numba"] = min(threads, int(numba.config.NUMBA_NUM_THREADS))
        self.applied = applied

    def teardown(self, worker) -> None:
        if self._limiter is not None:
            self._limiter.restore_original_limits()
            self._limiter = None


def _threadpool_info() -> list[dict[str, Any]]:
    from threadpoolctl import threadpool_info

    return threadpool_info()


def worker_has_gpu(worker) -> bool:
    """True when the worker declares a GPU resource or was given its own CUDA device."""
    if float(worker.state.total_resources.get("GPU", 0)) > 0:
        return True
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return bool(visible) and visible not in ("-1", "none", "NoDevFiles")


class GPUSetup(WorkerPlugin):
    """Make a GPU worker share its device well between TensorFlow and CuPy.

    Parameters
    ----------
    cupy_pool_fraction : float
        Largest share of the device memory CuPy's own pool may hold (ignored with RMM).
    rmm : bool
        The worker has an RMM pool (dask-cuda's ``rmm_pool_size``): CuPy allocates from it.
    """

    name = "distconv-gpu-setup"
    idempotent = False

    def __init__(self, cupy_pool_fraction: float = 0.8, rmm: bool = False):
        self.cupy_pool_fraction = cupy_pool_fraction
        self.rmm = rmm
        self.applied: dict[str, Any] = {}

    def setup(self, worker) -> None:
        if not worker_has_gpu(worker):
            self.applied = {"gpu": False}
            return
        applied: dict[str, Any] = {"gpu": True}
        # TensorFlow reads this when its GPU runtime starts: allocate as needed, not all at once.
        os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
        # dask-cuda lists the worker's own GPU first in CUDA_VISIBLE_DEVICES, so device 0 is
        # the worker's. CuPy and Numba use device 0 by default; TensorFlow would open every
        # visible GPU, so it is narrowed to the first one here if already imported, else by
        # the tensorflow engine when it is imported (kernels/tensorflow.py does the same).
        if "tensorflow" in sys.modules:
            applied["tensorflow"] = _tensorflow_one_gpu(sys.modules["tensorflow"])
        else:
            applied["tensorflow"] = "memory growth via TF_FORCE_GPU_ALLOW_GROWTH"
        applied["cupy"] = self._cupy_pool()
        self.applied = applied

    def _cupy_pool(self) -> str:
        import importlib.util

        if importlib.util.find_spec("cupy") is None:
            return "not installed"
        import cupy

        if self.rmm:
            from rmm.allocators.cupy import rmm_cupy_allocator

            cupy.cuda.set_allocator(rmm_cupy_allocator)
            return "RMM pool"
        pool = cupy.cuda.MemoryPool()
        pool.set_limit(fraction=self.cupy_pool_fraction)
        cupy.cuda.set_allocator(pool.malloc)
        return f"CuPy pool, limit {self.cupy_pool_fraction:.0%} of the device"


def _tensorflow_one_gpu(tf) -> str:
    """Only the first visible GPU, memory growth on; possible only before TF's runtime starts."""
    try:
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            tf.config.set_visible_devices(gpus[:1], "GPU")
            tf.config.experimental.set_memory_growth(gpus[0], True)
        return f"{len(gpus[:1])} GPU visible, memory growth on"
    except RuntimeError:
        return "fixed (runtime already started)"


def register_plugins(client, *, threads: int | None = None, rmm: bool = False) -> None:
    """Register :class:`ThreadLimits` and :class:`GPUSetup` on every current and future worker."""
    from distributed.comm import CommClosedError

    for plugin in (ThreadLimits(threads), GPUSetup(rmm=rmm)):
        try:
            client.register_plugin(plugin, name=plugin.name)
        except (CommClosedError, OSError) as exc:
            # A worker died during the broadcast: the scheduler keeps the plugin and gives it
            # to the worker that replaces it, so the job can go on.
            logger.warning("registering %s: a worker was lost (%s)", plugin.name, exc)


def plugin_report(dask_worker=None) -> dict[str, Any]:
    """What the plugins applied on this worker (run it with ``client.run(plugin_report)``)."""
    from distributed import get_worker

    worker = dask_worker or get_worker()
    return {
        name: getattr(worker.plugins.get(name), "applied", None)
        for name in (ThreadLimits.name, GPUSetup.name)
    }
