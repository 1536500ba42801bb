"""Defaults under dask.config's ``distconv`` namespace.

Dask users set them as they set any dask option: ``dask.config.set({"distconv.engine": "numba"})``,
a YAML file in ``~/.config/dask/``, or the environment (``DASK_DISTCONV__ENGINE=numba``).
"""

from __future__ import annotations

from typing import Any

import dask.config

DEFAULTS: dict[str, Any] = {
    "engine": "auto",  # which library computes a chunk (see `distconv engines`)
    "method": "auto",  # direct | fft | separable | auto (per-chunk cost model)
    # auto: small jobs on threads in this process, a local cluster (worker processes) from
    # auto-local-bytes of input plus output on (distconv.clusters.auto)
    "cluster": "auto",
    "auto-local-bytes": "1GiB",
    "progress": True,  # progress bar on jobs that last more than a moment
    # Target input bytes of one task's tile of stored chunks (distconv/plan/tiles.py).
    "tile_size": "16MiB",
    # Most tiles (tasks per stage) a job's plan makes: tiles grow past tile_size until there are
    # at most this many, memory permitting. The distributed scheduler spends milliseconds per
    # task whatever it holds (benchmarks/scheduler_cost.py: 3.7 ms on a busy 2-core machine).
    "max_tasks": 100_000,
    # Where tiles' halos come from: "exchange" (cut from decoded neighbours), "store" (read
    # again: memory independent of the image's width) or "auto" (store when an exchange would
    # hold more than the running tasks do; distconv/plan/tiles.py).
    "halo_source": "auto",
    # Codec pipeline that reads inputs: "auto" (zarrs when installed), "zarrs" or "zarr".
    "read_pipeline": "auto",
    # Seconds a distributed job waits for a worker that may run it once every such worker is
    # lost (killed, batch job cancelled) before it stops with WorkersLost (distconv/executor.py).
    "lost_workers_wait": 120,
}

dask.config.update_defaults({"distconv": DEFAULTS})


def get_default(key: str) -> Any:
    """The configured value of ``distconv.<key>`` (environment and YAML included)."""
    return dask.config.get(f"distconv.{key}", default=DEFAULTS[key])
