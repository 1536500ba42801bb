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
import os
import tempfile
import threading
import time
from pathlib import Path

import distconv as dc
from distconv.bench.common import fresh, make_input
from distconv.bench.convolve import kernel_for


def sample(stop: threading.Event, client_peak: list[int], series: list[tuple[float, int]]):
    """Every 50 ms: this process's RSS (the client and scheduler) and its children's largest."""
    import psutil

    me = psutil.Process(os.getpid())
    while not stop.is_set():
        sizes = []
        for process in me.children(recursive=True):
            try:
                sizes.append(process.memory_info().rss)
            except psutil.Error:  # a process that just ended
                continue
        client_peak[0] = max(client_peak[0], me.memory_info().rss)
        series.append((time.perf_counter(), max(sizes, default=0)))
        stop.wait(0.05)


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
            client_peak, series = [0], []
            stop = threading.Event()
            thread = threading.Thread(target=sample, args=(stop, client_peak, series))
            thread.start()
            y = dc.convolve(dc.open(source), kernel_for(9))
            dc.save(y, fresh(Path(tmp) / "out.zarr"), progress=False)
            stop.set()
            thread.join()
    start = series[0][0]
    for second in range(2, int(series[-1][0] - start) + 3, 2):
        seen = [rss for at, rss in series if at - start <= second]
        print(f"by {second:3d} s: largest worker's peak {max(seen) / 2**20:.0f} MiB")
    print(f"client (and scheduler) peak {client_peak[0] / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
