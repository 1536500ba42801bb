"""``auto``, the default cluster: small jobs on threads in this process, large ones on ``local``.

Starting the embedded ``LocalCluster`` (a scheduler and one worker process per core, each
importing NumPy, Dask and Zarr) costs seconds before the first chunk is read, while every
engine releases the GIL, so threads in this process run a chunk job about as fast. Measured on
the shared 2-core CI machine (``distconv convolve``, wall time including the start, threads vs
local, load 4-8): 512² float32 4.4 s vs 8.0 s; 1024² 5.7 s vs 15.3 s; 4096² 8.1 s vs 28.7 s;
8192² (512 MiB of input and output) 12.3 s vs 20.1 s with ``gaussian:sigma=2`` and 12.8 s vs
25.3 s with a 31×31 kernel: threads won at every size. What a local cluster adds past that is
what large jobs need beyond speed: a memory limit per worker (a worker over it is paused and
restarted, not the whole machine), the dashboard, and workers that do not share one
interpreter's GIL for Dask's own per-task bookkeeping. ``auto`` therefore starts it from 1 GiB
of input plus output (``distconv.auto-local-bytes``), where its start is a few percent of the
job.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from dask.utils import format_bytes, parse_bytes

__all__ = ["AutoChoice", "choose", "local_threshold", "work_bytes"]


class AutoChoice:
    """What ``auto`` chose for a job and why, for the command's summary line.

    Attributes
    ----------
    kind : {'threads', 'local'}
        The cluster the job runs on.
    reason : str
        Why, in a few words (``"2.0 MiB < 1.00 GiB"``).
    """

    def __init__(self, kind: str, reason: str) -> None:
        self.kind, self.reason = kind, reason

    def __repr__(self) -> str:
        return f"AutoChoice({self.kind!r}, {self.reason!r})"


def local_threshold() -> int:
    """Bytes of input plus output from which ``auto`` starts a local cluster (config
    ``distconv.auto-local-bytes``, e.g. ``DASK_DISTCONV__AUTO_LOCAL_BYTES=256MiB``)."""
    from distconv.config import get_default
    from distconv.errors import DistconvError

    value = get_default("auto-local-bytes")
    try:
        return int(parse_bytes(value) if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise DistconvError(
            f"distconv.auto-local-bytes must be a size such as 1GiB, got {value!r}"
        ) from None


def work_bytes(work: Any) -> int | None:
    """Bytes a job reads and writes: ``work`` is a byte count, an array (``nbytes``) or an
    iterable of them (its input and output arrays); None when nothing is known."""
    if work is None:
        return None
    if isinstance(work, (int, float)) and not isinstance(work, bool):
        return int(work)
    if hasattr(work, "nbytes"):
        return int(work.nbytes)
    if isinstance(work, Iterable) and not isinstance(work, (str, bytes)):
        sizes = [work_bytes(item) for item in work]
        return sum(size for size in sizes if size is not None)
    return None


def choose(work: Any = None, *, sized: bool = False) -> AutoChoice:
    """Where ``auto`` runs a job of this size.

    Parameters
    ----------
    work : int, array or iterable of arrays, optional
        The job's input and output arrays (or their bytes). Without it the job's size is
        unknown and a local cluster is started, as a ``with dc.cluster():`` block around
        work not yet built asks for.
    sized : bool
        Workers or threads per worker were given: the user wants worker processes.

    Returns
    -------
    AutoChoice
    """
    if sized:
        return AutoChoice("local", "--workers/--threads-per-worker given")
    nbytes = work_bytes(work)
    if nbytes is None:
        return AutoChoice("local", "job size not given")
    threshold = local_threshold()
    if (os.cpu_count() or 1) == 1:
        return AutoChoice("threads", "one core: no worker processes to gain")
    if nbytes < threshold:
        return AutoChoice("threads", f"{format_bytes(nbytes)} < {format_bytes(threshold)}")
    return AutoChoice("local", f"{format_bytes(nbytes)} ≥ {format_bytes(threshold)}")
