"""What proving that workers see a job's stores costs (distconv/save/sight.py).

A ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1 (tests/_hosts.py, the test
suite's loopback hosts, both on the shared disk); the client fingerprints a Zarr input, writes
a token into an output folder, every worker reads both back and is given the job's resource,
which is then taken back: the whole check a job on a remote cluster pays once (threads and a
local cluster this process started pay nothing). Prints the median and minimum of ``--repeats``.

    python benchmarks/sight_cost.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/_hosts.py

from tests._hosts import Hosts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    from distributed import Client

    from distconv.save.sight import check_workers_see, input_probes
    from distconv.stores import Location

    root = Path(tempfile.mkdtemp(prefix="sight-cost-"))
    with Hosts(root / "hosts", root / "data") as hosts:
        hosts.add_worker("a", own_disk=False)
        hosts.add_worker("b", own_disk=False)
        hosts.wait_for_workers(2)
        data = np.random.default_rng(1).random((512, 512))
        zarr.create_array(str(root / "data" / "in.zarr"), data=data, chunks=(64, 64))
        (root / "data" / "out").mkdir()
        source = {"path": str(root / "data" / "in.zarr"), "zarr_format": 3}
        output = Location.parse(str(root / "data" / "out"))
        with Client(hosts.address) as client:
            seconds = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                sight = check_workers_see(input_probes([source]), output, client=client)
                sight.release_now()
                seconds.append(time.perf_counter() - start)
    median, fastest = statistics.median(seconds) * 1e3, min(seconds) * 1e3
    print(f"check and release on 2 workers: median {median:.1f} ms, min {fastest:.1f} ms")


if __name__ == "__main__":
    main()
