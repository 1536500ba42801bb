"""Where the work runs: one spec parser for the CLI and the API.

Forms: ``local`` (embedded LocalCluster, default), ``threads`` (no cluster, this process),
``tcp://HOST:PORT`` / ``tls://HOST:PORT`` (an existing scheduler). The multi-GPU (``cuda``) and
job-queue (``*.yaml``) kinds plug in here as they land.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

from distconv.errors import DistconvError

SPEC_FORMS = "local, threads, tcp://HOST:PORT, tls://HOST:PORT"


@dataclass(frozen=True)
class ClusterSpec:
    """A parsed ``--cluster`` value."""

    kind: str  # "local" | "threads" | "remote"
    address: str | None = None


def parse_spec(spec: str | None) -> ClusterSpec:
    """Parse a cluster spec; an unknown one is a one-line error listing the forms."""
    if spec is None:
        from distconv.config import get_default

        spec = get_default("cluster")
    text = str(spec).strip()
    if text in ("local", "threads"):
        return ClusterSpec(text)
    if text.startswith(("tcp://", "tls://")) and len(text) > len("tcp://"):
        return ClusterSpec("remote", text)
    raise DistconvError(f"unknown cluster {spec!r}; use one of: {SPEC_FORMS}")


@contextlib.contextmanager
def cluster(spec: str | None = None, *, workers: int | None = None,
            threads_per_worker: int | None = None, memory_limit: str | int | None = None,
            quiet: bool = False) -> Iterator[object]:
    """Start (or connect to) the cluster a spec names and yield its ``distributed.Client``.

    Parameters
    ----------
    spec : str, optional
        See :data:`SPEC_FORMS`; default from config ``distconv.cluster`` ("local").
    workers, threads_per_worker, memory_limit
        Sizing for ``local`` (default: one single-threaded worker process per core, memory
        shared equally).
    quiet : bool
        Do not print the dashboard link.

    Yields
    ------
    distributed.Client or None
        None for ``threads``: Dask's threaded scheduler runs in this process.
    """
    parsed = parse_spec(spec)
    if parsed.kind == "threads":
        yield None
        return
    from distributed import Client

    if parsed.kind == "remote":
        try:
            client = Client(parsed.address, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise DistconvError(f"cannot reach the scheduler at {parsed.address} ({exc})") \
                from None
        with client:
            yield client
        return
    from distconv.clusters.local import local_cluster

    with local_cluster(workers=workers, threads_per_worker=threads_per_worker,
                       memory_limit=memory_limit) as lc, Client(lc) as client:
        if not quiet and client.dashboard_link:
            import sys

            print(f"dashboard: {client.dashboard_link}", file=sys.stderr)
        yield client
