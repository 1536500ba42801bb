"""The multi-host harness of tests/_hosts.py, on real processes: a worker on its own disk does not
see the client's files, what it writes stays on its disk, and a killed host stays lost.

Each test has a scheduler, a worker on the shared disk (``near``) and one on its own disk
(``far``); they skip where ``unshare -m --propagation private`` is not permitted.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest
from distributed import Client

from tests._hosts import Hosts, hosts_or_skip, worker_addresses

LOST_TIMEOUT = 30  # the scheduler sees a killed worker's connection close at once; slack for CI


@pytest.fixture
def hosts(tmp_path):
    with hosts_or_skip(tmp_path / "hosts", tmp_path / "data") as hosts:
        hosts.add_worker("near", own_disk=False)
        hosts.add_worker("far", own_disk=True)
        hosts.wait_for_workers(2)
        yield hosts


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: whoever reaps orphans here may be slow)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_own_disk_does_not_see_the_clients_files(hosts: Hosts):
    token = hosts.data / "token.txt"
    token.write_text("from the client")
    with Client(hosts.address, timeout="10s") as client:
        where = worker_addresses(client)
        seen = {
            name: client.run(os.path.exists, str(token), workers=[where[name]])[where[name]]
            for name in ("near", "far")
        }
    assert seen == {"near": True, "far": False}
    assert hosts.stray_files() == {"far": []}


def test_what_the_own_disk_worker_writes_stays_on_its_disk(hosts: Hosts):
    target = hosts.data / "out.zarr" / "c" / "0" / "0"

    def write(path: str) -> None:  # defined here: pickled by value, the worker cannot import us
        Path(path).parent.mkdir(parents=True)
        Path(path).write_bytes(b"chunk")

    with Client(hosts.address, timeout="10s") as client:
        client.run(write, str(target), workers=[worker_addresses(client)["far"]])
    assert hosts.stray_files() == {"far": ["out.zarr/c/0/0"]}
    assert (hosts.disk("far") / "out.zarr" / "c" / "0" / "0").read_bytes() == b"chunk"
    assert not (hosts.data / "out.zarr").exists()
    assert list(hosts.data.iterdir()) == []


def test_a_killed_worker_is_lost_for_good(hosts: Hosts):
    with Client(hosts.address, timeout="10s") as client:
        address = worker_addresses(client)["far"]
        pids = [client.run(get, workers=[address])[address] for get in (os.getpid, os.getppid)]
        hosts.kill_worker("far")
        deadline = time.monotonic() + LOST_TIMEOUT
        while "far" in (names := set(worker_addresses(client))):
            assert time.monotonic() < deadline, f"the scheduler still lists {names}"
            time.sleep(0.05)
        assert names == {"near"}
        # The nanny died with its worker, so nothing can bring "far" back: both are gone now
        # (kill_worker returned only then), not merely not back yet.
        assert not [pid for pid in pids if running(pid)], pids
        client.wait_for_workers(1, timeout=10)  # the other host still serves
        assert client.submit(sum, [1, 2], pure=False).result(timeout=10) == 3
