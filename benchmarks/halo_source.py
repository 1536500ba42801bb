"""Halos exchanged between tiles or read again from the store, side by side on one cluster.

One seeded store per run, one LocalCluster (2 single-threaded workers unless told otherwise),
then convolve → save with ``distconv.halo_source`` = exchange and store, alternating, a warm-up
and ``--repeats`` timed runs each. Prints the medians and store / exchange. What
``distconv.plan.tiles.CHEAP_STRIP_READS`` and ``choose_halo_source`` were set from.

    python benchmarks/halo_source.py --size 16384 --chunk 256 --kernel 5
    python benchmarks/halo_source.py --ndim 3 --size 512 --chunk 128 --kernel 5 --dtype uint16
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import dask
import numpy as np
import zarr

import distconv as dc


def make_store(path: Path, size: int, chunk: int, ndim: int, dtype: str) -> None:
    """Seeded random data (scaled to 0..4000 for integer dtypes), written in 64 MiB slabs."""
    shape = (size,) * ndim
    target = zarr.create_array(str(path), shape=shape, chunks=(chunk,) * ndim, dtype=dtype)
    rng = np.random.default_rng(0)
    step = max(1, (64 << 20) // (4 * size ** (ndim - 1)))
    for start in range(0, size, step):
        block = rng.random((min(step, size - start),) + shape[1:], dtype=np.float32)
        kind = np.dtype(dtype).kind
        target[start : start + step] = (block * 4000).astype(dtype) if kind in "iu" else block


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--kernel", type=int, default=9)
    parser.add_argument("--ndim", type=int, default=2, choices=(2, 3))
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    weights = np.random.default_rng(1).standard_normal((args.kernel,) * args.ndim)
    times: dict[str, list[float]] = {"exchange": [], "store": []}
    with tempfile.TemporaryDirectory(prefix="distconv-halo-") as tmp:
        source, output = Path(tmp) / "in.zarr", Path(tmp) / "out.zarr"
        make_store(source, args.size, args.chunk, args.ndim, args.dtype)
        with dc.cluster("local", quiet=True, workers=args.workers, threads_per_worker=1):
            for repeat in range(args.repeats + 1):  # the first round warms up
                for halo_source in times:
                    shutil.rmtree(output, ignore_errors=True)
                    os.sync()  # the previous run's writes are not this one's cost
                    with dask.config.set({"distconv.halo_source": halo_source}):
                        start = time.perf_counter()
                        y = dc.convolve(dc.open(source), weights, output=np.float32)
                        dc.save(y, output, progress=False)
                        if repeat:
                            times[halo_source].append(time.perf_counter() - start)
    medians = {name: float(np.median(runs)) for name, runs in times.items()}
    power = "³" if args.ndim == 3 else "²"
    print(
        f"{args.size}{power} {args.dtype} in {args.chunk}{power} chunks, {args.kernel}-wide "
        f"kernel, {args.workers} workers: exchange {medians['exchange']:.2f} s, store "
        f"{medians['store']:.2f} s (medians of {args.repeats}); store / exchange "
        f"{medians['store'] / medians['exchange']:.2f}"
    )
    return medians


if __name__ == "__main__":
    main()
