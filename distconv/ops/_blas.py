"""BLAS threads for matmul tasks: one process-wide limit shared by the tasks running at once."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["limit_blas_threads"]

_BLAS_LOCK = threading.Lock()
_BLAS_STATE: dict[str, Any] = {"users": 0, "limit": None}


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
                _BLAS_STATE["limit"].restore_original_limits()
                _BLAS_STATE["limit"] = None
