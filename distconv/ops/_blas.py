"""BLAS threads for matmul tasks: one process-wide limit shared by the tasks running at once,
set only where the process's BLAS settings are distconv's to change."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["limit_blas_threads", "restore_blas_threads"]

_BLAS_LOCK = threading.Lock()
# "pending": library path -> thread count still to restore on a caller's thread (see below).
_BLAS_STATE: dict[str, Any] = {"users": 0, "limit": None, "pending": {}}
# Threads of distconv's own job pool (distconv.executor._compute_on_threads names them so):
# its job ends with restore_blas_threads on the caller's thread, after the pool is gone.
_OWN_POOL_PREFIX = "distconv-task"


def _may_limit() -> bool:
    """Whether a task on this thread may change the process-wide BLAS limit.

    Yes on distconv's own job pool (restored after the pool is gone), on the main thread (dask's
    synchronous scheduler: set and put back on one thread, no other thread ran limited calls)
    and in a Dask worker (a worker's process is the cluster's). No on any other thread of the
    caller's process, such as dask's own threaded scheduler under ``.compute()``: OpenBLAS
    (0.3.30/0.3.31, pthreads)
    ignores a raise of its thread count while threads that ran limited calls still exist, and
    dask's pool outlives the call, so a limit set there would stay with the caller (its ``a @ b``
    on one thread). ``openblas_set_num_threads_local`` is no way out: in the pthreads build it
    sets the same process-wide count. Unlimited tasks share the cores with BLAS's own threads
    instead; on 2 cores a 4096² float32 product ran as fast either way.
    """
    thread = threading.current_thread()
    if thread is threading.main_thread() or thread.name.startswith(_OWN_POOL_PREFIX):
        return True
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return False
    try:
        distributed.get_worker()
    except ValueError:
        return False
    return True


@contextlib.contextmanager
def limit_blas_threads(threads: int) -> Iterator[None]:
    """Limit BLAS (OpenBLAS/MKL/BLIS) to ``threads`` while any task in this process runs.

    BLAS thread pools are process-wide, so concurrent tasks share one limit: the first task in
    sets it, the last one out restores the previous setting. Inside a Dask worker this keeps
    ``nthreads`` tasks from each starting a pool of every core. On a thread where the caller's
    settings could not be put back (see :func:`_may_limit`) nothing is limited.

    Parameters
    ----------
    threads : int
        BLAS threads while the context is open (the first task's value holds for all).

    Yields
    ------
    None
    """
    if not _may_limit():
        yield
        return
    with _BLAS_LOCK:
        if _BLAS_STATE["users"] == 0:
            # A fresh controller each time: libraries loaded since the last task (another
            # engine's BLAS) are limited too, and a controller kept from before can go stale.
            from threadpoolctl import ThreadpoolController

            _BLAS_STATE["limit"] = ThreadpoolController().limit(
                limits=int(threads), user_api="blas"
            )
        _BLAS_STATE["users"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_STATE["users"] -= 1
            if _BLAS_STATE["users"] == 0:
                limiter = _BLAS_STATE["limit"]
                limiter.restore_original_limits()
                _BLAS_STATE["limit"] = None
                # OpenBLAS (0.3.30/0.3.31, pthreads) ignores a raise of its thread count while
                # the threads that ran limited calls still exist (it reads back 1): the caller's
                # thread puts it back once the job's pool is gone (restore_blas_threads).
                for info in limiter._original_info:
                    _BLAS_STATE["pending"][info["filepath"]] = info["num_threads"]


@contextlib.contextmanager
def restore_blas_threads() -> Iterator[None]:
    """Around a job on local threads and its pool, on the thread that runs it: once no matmul
    task holds the limit, every BLAS library the tasks limited is back at its thread count from
    before, set from this thread after the pool's threads are gone (the caller's process is
    left as it was found)."""
    try:
        yield
    finally:
        with _BLAS_LOCK:
            pending = _BLAS_STATE["pending"]
            if _BLAS_STATE["users"] == 0 and pending:
                from threadpoolctl import ThreadpoolController

                for lib in ThreadpoolController().lib_controllers:
                    threads = pending.get(lib.filepath)
                    if threads is not None and lib.num_threads != threads:
                        lib.set_num_threads(threads)
                    if threads is not None and lib.num_threads == threads:
                        del pending[lib.filepath]  # else the next job's end tries again
