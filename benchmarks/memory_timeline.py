"""The largest worker's resident memory over one convolve: does it keep growing, or plateau?

benchmarks/memory.py reports one peak per image size. A longer run samples a fluctuating
working set more often, so its peak can be higher without anything accumulating. This prints
the running maximum of the largest worker every 2 s of one Zarr → Zarr convolve (2048² chunks,
9×9 kernel, LocalCluster as in memory.py), and the client's peak.

    python benchmarks/memory_timeline.py [--size 32768]
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import distconv as dc
from distconv.bench.common import PeakMemory, fresh, make_input
from distconv.bench.convolve import kernel_for


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32768)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="distconv-timeline-") as tmp:
        source = Path(tmp) / "in.zarr"
        make_input(source, args.size, 2048, seed=args.size)
        with dc.cluster("local", quiet=True) as client:
            client.run(gc.collect)
            time.sleep(1.0)
            with PeakMemory() as memory:
                y = dc.convolve(dc.open(source), kernel_for(9))
                dc.save(y, fresh(Path(tmp) / "out.zarr"), progress=False)
    timeline = memory.timeline
    for second in range(2, int(timeline[-1][0]) + 3, 2):
        seen = [worker for at, _, worker in timeline if at <= second]
        print(f"by {second:3d} s: largest worker's peak {max(seen) / 2**20:.0f} MiB")
    client = max(root for _, root, _ in timeline)
    print(f"client (and scheduler) peak {client / 2**20:.0f} MiB")
    if memory.exact_process:
        print(
            f"kernel peaks (VmHWM): largest process {memory.exact_process / 2**20:.0f} MiB, "
            f"sum over the tree {memory.exact_total_bound / 2**20:.0f} MiB"
        )


if __name__ == "__main__":
    main()
