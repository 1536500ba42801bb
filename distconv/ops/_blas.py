"""BLAS threads for matmul tasks: one process-wide limit shared by the tasks running at once."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["limit_blas_threads", "restore_blas_threads"]

_BLAS_LOCK = threading.Lock()
# "pending": library path -> thread count still to restore on a caller's thread (see below).
_BLAS_STATE: dict[str, Any] = {"users": 0, "limit": None, "pending": {}}


@contextlib.contextmanager
def limit_blas_threads(threads: int) -> Iterator[None]:
    """Limit BLAS (OpenBLAS/MKL/BLIS) to ``threads`` while any task in this process runs.

    BLAS thread pools are process-wide, so concurrent tasks share one limit: the first task in
    sets it, the last one out restores the previous setting. Inside a Dask worker this keeps
    ``nthreads`` tasks from each starting a pool of every core.

    Parameters
    ----------
    threads : int
        BLAS threads while the context is open (the first task's value holds for all).

    Yields
    ------
    None
    """
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
