"""Zarr → Zarr convolution vs the copy floor and dask-image, side by side in one run.

8192² float32 in 2048² Zarr chunks (defaults), kernels 3×3 and 31×31, on the embedded
LocalCluster (one single-threaded worker per core). Each repeat runs every contender once, in
turn, on the same data; the table reports medians and ratios to the copy time measured in the
same run. Results go to benchmarks/RESULTS.md (section "convolve").

    python benchmarks/convolve.py [--size 8192] [--chunk 2048] [--kernels 3,31] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import dask.array as da
import numpy as np
import zarr

import distconv as dc
from results import machine, write_section


def make_input(path: Path, size: int, chunk: int) -> None:
    """Random float32 (seeded, never zeros), written strip by strip to bound memory."""
    rng = np.random.default_rng(0)
    array = zarr.create_array(str(path), shape=(size, size), chunks=(chunk, chunk),
                              dtype="float32")
    for start in range(0, size, chunk):
        array[start:start + chunk] = rng.random((min(chunk, size - start), size),
                                                dtype=np.float32)


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def contenders(source: Path, out: Path, kernel: np.ndarray) -> dict[str, callable]:
    def fresh(name):
        target = out / name
        shutil.rmtree(target, ignore_errors=True)
        return str(target)

    def copy():
        da.from_zarr(str(source)).to_zarr(fresh("copy.zarr"))

    def distconv_auto():
        dc.save(dc.convolve(dc.open(source), kernel), fresh("dc.zarr"), progress=False)

    found = {"Zarr→Zarr copy (floor)": copy, "distconv (auto)": distconv_auto}
    try:
        from dask_image.ndfilters import convolve as dask_image_convolve

        def dask_image():
            x = da.from_zarr(str(source))
            dask_image_convolve(x, kernel).to_zarr(fresh("di.zarr"))

        found["dask-image ndfilters.convolve"] = dask_image
    except ImportError:
        pass
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--kernels", default="3,31")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slow-repeats", type=int, default=1,
                        help="repeats for dask-image at kernels ≥ 15 (minutes each)")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="distconv-bench-") as tmp, \
            dc.cluster("local", quiet=True) as client:
        tmp = Path(tmp)
        source = tmp / "input.zarr"
        make_input(source, args.size, args.chunk)
        workers = client.scheduler_info()["workers"]
        cluster_text = f"LocalCluster {len(workers)} workers × " \
                       f"{next(iter(workers.values()))['nthreads']} thread(s)"
        for size in (int(k) for k in args.kernels.split(",")):
            kernel = np.random.default_rng(size).standard_normal((size, size))
            runs = contenders(source, tmp, kernel)
            times: dict[str, list[float]] = {name: [] for name in runs}
            for name, function in runs.items():  # warm-up: imports, compilation, page cache
                if not name.startswith("dask-image") or size < 15:
                    function()
            for repeat in range(args.repeats):
                for name, function in runs.items():
                    if name.startswith("dask-image") and size >= 15 and \
                            repeat >= args.slow_repeats:
                        continue
                    times[name].append(timed(function))
                    print(f"k={size} {name}: {times[name][-1]:.2f} s", flush=True)
            method = dc.info(tmp / "dc.zarr")["provenance"]["steps"][0]
            floor = statistics.median(times["Zarr→Zarr copy (floor)"])
            for name, values in times.items():
                median = statistics.median(values)
                rows.append((size, name, median, median / floor, len(values),
                             f"{method['method']}/{method['engine']}" if "distconv" in name
                             else ""))

    mpx = args.size * args.size / 1e6
    lines = [
        "## Convolution, Zarr → Zarr (benchmarks/convolve.py)",
        "",
        f"{args.size}² float32, Zarr chunks {args.chunk}², {cluster_text}. Machine: {machine()}.",
        f"Command: `python benchmarks/convolve.py --size {args.size} --chunk {args.chunk} "
        f"--kernels {args.kernels} --repeats {args.repeats}`. Median of the runs; ratio = time "
        "/ the copy floor measured in the same run.",
        "",
        "| kernel | contender | seconds | Mpx/s | × copy floor | runs | method/engine |",
        "|---|---|---|---|---|---|---|",
    ]
    for size, name, median, ratio, runs, how in rows:
        lines.append(f"| {size}×{size} | {name} | {median:.2f} | {mpx / median:.1f} | "
                     f"{ratio:.2f} | {runs} | {how} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("convolve", text)


if __name__ == "__main__":
    main()
