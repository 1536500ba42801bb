"""What the workers see: proved before the first tile, and for every worker that joins later.

On a real cluster a local path can name another folder, or nothing, on each worker, and Zarr
reads a chunk it cannot find as the fill value: a job whose workers cannot see its input
computes zeros, and writes to a local output land on the workers' own disks. So before any
work the client reads a fingerprint of every input (its metadata and first chunk) and writes a
token into the output, and each worker reads them back (:meth:`Location.fingerprint`). Only the
workers that see everything are given the job's resource, which every task of the job requires
(``client.compute(resources=...)``); a worker that joins later is probed the same way before
the scheduler can place a task on it (:meth:`Sight.admit_newcomers`, run by the executor while
the job waits). On threads, and on a local cluster this process started, the workers are this
machine's processes and see what the client sees: nothing is probed.
"""

from __future__ import annotations

import os
import secrets
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from distconv.clusters.resources import current_client, scheduler_info
from distconv.errors import WorkersCannotSee
from distconv.stores import Location

__all__ = [
    "Probe",
    "Sight",
    "check_workers_see",
    "input_probes",
    "path_probes",
    "remove_stale_tokens",
    "see_on_workers",
]

#: Key of the token the client writes into an output (removed after the check).
TOKEN_PREFIX = ".distconv-sight-"
# A granted worker runs as many of the job's tasks at once as its threads allow: the resource
# only marks who may run them.
_PLENTY = 1e9


@dataclass(frozen=True)
class Probe:
    """One object a worker must read as the client read it.

    Attributes
    ----------
    location : Location
        The store (or the folder of a file).
    key : str
        The object inside it.
    expected : str or None
        The client's :meth:`Location.fingerprint` (None: the client found no object).
    shown : str
        The store as messages name it.
    """

    location: Location
    key: str
    expected: str | None
    shown: str


def input_probes(read: Sequence[dict[str, Any]]) -> list[Probe]:
    """Probes of the stores a result reads (:func:`distconv.provenance.sources` records):
    each Zarr array's metadata document and first chunk, or a file's first bytes; a working
    store's record (:func:`distconv.provenance.scratch_stores`) names its own ``key``."""
    probes = []
    for record in read:
        location = Location.parse(record["path"])
        if "key" in record:  # a working store: the object the client wrote in it
            probes.append(_probe(location, record["key"], location.shown))
            continue
        if record.get("zarr_format") is None:  # a TIFF or .npy file
            folder = (
                location.parent()
                if location.remote
                else Location.parse(os.path.dirname(location.url))
            )
            if folder is not None:
                probes.append(_probe(folder, location.name, location.shown))
            continue
        metadata = "zarr.json" if record["zarr_format"] == 3 else ".zarray"
        probes.append(_probe(location, metadata, location.shown))
        first = _first_chunk_key(location)
        if first is not None:
            probes.append(_probe(location, first, location.shown))
    return probes


def path_probes(location: Location) -> tuple[list[Probe], str | None]:
    """Probes for any path a user names (``distconv cluster info --check``): a Zarr store's
    metadata and first chunk, a file's first bytes, or, for a folder (or where one would be
    made), a token the client writes into it. Returns the probes and the token's key to delete
    afterwards (None: nothing was written)."""
    for metadata, record in (("zarr.json", 3), (".zarray", 2), (".zgroup", 2)):
        if location.fingerprint(metadata) is not None:
            if metadata == ".zgroup":
                return [_probe(location, metadata, location.shown)], None
            return input_probes([{"path": location.url, "zarr_format": record}]), None
    parent = location.parent() if location.remote else Location.parse(os.path.dirname(location.url))
    if parent is not None and parent.fingerprint(location.name) is not None:  # a file
        return [_probe(parent, location.name, location.shown)], None
    folder = location if location.exists() else parent
    if folder is None:
        return [], None
    key = TOKEN_PREFIX + secrets.token_hex(8)
    folder.put(key, key.encode())
    return [Probe(folder, key, folder.fingerprint(key), location.shown)], key


def _probe(location: Location, key: str, shown: str) -> Probe:
    return Probe(location, key, location.fingerprint(key), shown)


def _first_chunk_key(location: Location) -> str | None:
    """The key of the array's first chunk (shard), or None where it cannot be told."""
    import zarr

    try:
        array = zarr.open_array(location.zarr_store(), mode="r")
    except Exception:  # not an array the client can open: the metadata probe says enough
        return None
    return array.metadata.encode_chunk_key((0,) * array.ndim)


def _unseen(probes: Sequence[Probe]) -> list[str]:
    """On a worker: a reason for each store it does not see as the client does (none: all)."""
    reasons: dict[str, str] = {}
    for probe in probes:
        if probe.shown in reasons:
            continue
        try:
            found = probe.location.fingerprint(probe.key)
        except Exception as exc:  # no credentials, unreachable, denied: not seen either
            reasons[probe.shown] = f"{probe.shown}: {type(exc).__name__}"
            continue
        if found == probe.expected:
            continue
        if found is None and probe.key.startswith(TOKEN_PREFIX):
            reasons[probe.shown] = f"{probe.shown}: a file the client wrote there is not there"
        elif found is None:
            reasons[probe.shown] = f"{probe.shown}: {probe.key} not found"
        elif probe.expected is None:
            reasons[probe.shown] = f"{probe.shown}: {probe.key} exists only there"
        else:
            reasons[probe.shown] = f"{probe.shown}: {probe.key} differs"
    return list(reasons.values())


def see_on_workers(client, probes: Sequence[Probe], workers=None) -> dict[str, list[str]]:
    """Ask each worker (or those of ``workers``) which of ``probes`` it cannot see.

    Returns
    -------
    dict
        Worker address → reasons (``"PATH: KEY not found"``); an empty list: it sees them all.
    """
    answers = client.run(_unseen, list(probes), workers=workers, on_error="return")
    return {
        address: answer if isinstance(answer, list) else [f"worker failed: {answer!r}"]
        for address, answer in answers.items()
    }


async def _grant(resource: str, dask_worker=None) -> None:
    await dask_worker.set_resources(**{resource: _PLENTY})


def _place_waiting_tasks(addresses: Sequence[str], dask_scheduler=None) -> None:
    """On the scheduler: tasks that found no worker may now run on ``addresses`` (a worker
    given a resource after it joined is not offered them otherwise)."""
    for address in addresses:
        ws = dask_scheduler.workers.get(address)
        if ws is None:
            continue
        recommendations = dask_scheduler.bulk_schedule_unrunnable_after_adding_worker(ws)
        if recommendations:
            dask_scheduler.transitions(recommendations, stimulus_id=f"distconv-sight-{time.time()}")


def _revoke(resource: str, dask_worker=None) -> None:
    state = dask_worker.state
    state.total_resources.pop(resource, None)
    state.available_resources.pop(resource, None)


def _forget(resource: str, dask_scheduler=None) -> None:
    for ws in dask_scheduler.workers.values():
        ws.resources.pop(resource, None)
        ws.used_resources.pop(resource, None)
    dask_scheduler.resources.pop(resource, None)


@dataclass
class Sight:
    """The workers a job may run on, and the resource its tasks require to stay there.

    Attributes
    ----------
    resource : str or None
        The resource every task requires (None: no check was needed, any worker may run it).
    probes : list of Probe
    seen : dict
        Worker address → reasons it cannot see (empty: admitted), for every worker probed.
    """

    resource: str | None = None
    probes: list[Probe] = field(default_factory=list)
    seen: dict[str, list[str]] = field(default_factory=dict)
    token: tuple[Location, str] | None = None  # the output's token: (location, key)
    client: Any = None

    @property
    def admitted(self) -> list[str]:
        return [address for address, reasons in self.seen.items() if not reasons]

    def cannot_see(self) -> Counter:
        """Path → how many probed workers cannot see it."""
        return Counter(reason.split(": ", 1)[0] for r in self.seen.values() for reason in r)

    def record(self) -> dict[str, Any] | None:
        """What the output's provenance says of where the job could run."""
        if self.resource is None:
            return None
        return {
            "probed": len(self.seen),
            "admitted": len(self.admitted),
            "cannot_see": dict(self.cannot_see()),
        }

    def admit(self, client, workers: Sequence[str] | None = None) -> list[str]:
        """Probe ``workers`` (default all), grant the job's resource to those that see
        everything, and return them."""
        answers = see_on_workers(client, self.probes, workers)
        self.seen.update(answers)
        passed = [address for address, reasons in answers.items() if not reasons]
        if passed:
            client.run(_grant, self.resource, workers=passed, on_error="return")
        return passed

    def admit_newcomers(self, client) -> None:
        """Probe the workers that joined since the last look (the executor calls this while
        the job runs); those that pass may take the job's waiting tasks at once."""
        current = set(scheduler_info(client).get("workers", {}))
        new = sorted(current - set(self.seen))
        if new and self.admit(client, new):
            client.run_on_scheduler(_place_waiting_tasks, self.admitted)

    def watch(self, client) -> None:
        """The executor's watcher: admit the workers that joined (never stops the job)."""
        self.admit_newcomers(client)

    def release_now(self) -> None:
        """Remove the output's token; take the job's resource back from every worker and the
        scheduler (the job has ended; calling again does nothing)."""
        if self.token is not None:
            self.token[0].delete(self.token[1])
            self.token = None
        if self.resource is None or self.client is None:
            return
        client, self.client = self.client, None
        try:
            client.run(_revoke, self.resource, on_error="return")
            client.run_on_scheduler(_forget, self.resource)
        except Exception:  # the cluster is gone: nothing holds the resource any more
            pass


def probes_needed(client) -> bool:
    """Whether the workers may see other disks than this process: any cluster but threads or
    a local cluster this process started (its workers are children on this machine)."""
    if client is None:
        return False
    cluster = getattr(client, "cluster", None)
    return type(cluster).__name__ not in ("LocalCluster", "LocalCUDACluster")


def check_workers_see(
    inputs: Sequence[Probe], output: Location | None = None, *, client=None
) -> Sight:
    """Prove which workers see ``inputs`` and the ``output`` location before any work.

    The client writes a token into ``output`` (removed again before returning) and every worker
    reads it and the inputs' fingerprints back.

    Parameters
    ----------
    inputs : sequence of Probe
        What the job reads (:func:`input_probes`).
    output : Location, optional
        Where the job writes (an existing folder or store).
    client : distributed.Client, optional
        Default: the current client; on threads nothing is checked.

    Returns
    -------
    Sight
        The workers admitted and the resource the job's tasks must require.

    Raises
    ------
    WorkersCannotSee
        No worker sees every input and the output.
    """
    client = client if client is not None else current_client()
    if not probes_needed(client):
        return Sight()
    token = secrets.token_hex(8)
    sight = Sight(resource=f"distconv-sees-{token}", probes=list(inputs), client=client)
    if output is not None:  # kept until release(): workers that join later read it too
        sight.token = (output, TOKEN_PREFIX + token)
        output.put(sight.token[1], token.encode())
        sight.probes.append(_probe(output, sight.token[1], output.shown))
    try:
        admitted = sight.admit(client)
    except BaseException:
        sight.release_now()
        raise
    if not admitted and sight.seen:
        sight.release_now()
        raise WorkersCannotSee(_refusal(sight))
    return sight


def remove_stale_tokens(location: Location) -> None:
    """Remove the tokens a killed job left in its output (a resume writes its own)."""
    if not location.remote:
        names = os.listdir(location.url) if os.path.isdir(location.url) else []
    else:
        fs, root = location.filesystem()
        names = [path.rstrip("/").rsplit("/", 1)[-1] for path in fs.ls(root, detail=False)]
    for name in names:
        if name.startswith(TOKEN_PREFIX):
            location.delete(name)


def _refusal(sight: Sight) -> str:
    blind = sight.cannot_see()
    path, count = blind.most_common(1)[0]
    example = next(r for reasons in sight.seen.values() for r in reasons if r.startswith(path))
    return (
        f"no worker can see {path}: {count} of {len(sight.seen)} workers cannot see it "
        f"({example.split(': ', 1)[1]}); put it on a filesystem the workers share, or use "
        "an object-store URL (s3://...)"
    )
