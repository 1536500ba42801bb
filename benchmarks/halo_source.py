"""Halos exchanged between tiles or read again from the store, side by side on one cluster.

One seeded store per run, one LocalCluster (2 single-threaded workers unless told otherwise),
then convolve → save with ``distconv.halo_source`` = exchange and store, timed by
:func:`distconv.bench.common.run_alternating` (a warm-up, then ``--repeats`` runs each; each
run first removes the previous output, the same for both). Prints the medians and
store / exchange: what ``distconv.plan.tiles.choose_halo_source`` was set from.

    python benchmarks/halo_source.py --size 16384 --chunk 256 --kernel 5
    python benchmarks/halo_source.py --ndim 3 --size 512 --chunk 128 --kernel 5 --dtype uint16
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import dask
import numpy as np

import distconv as dc
from distconv.bench.common import Contender, make_input, run_alternating


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
    with tempfile.TemporaryDirectory(prefix="distconv-halo-") as tmp:
        source, output = Path(tmp) / "in.zarr", Path(tmp) / "out.zarr"
        make_input(source, (args.size,) * args.ndim, args.chunk, seed=0, dtype=args.dtype)

        def convolve_with(halo_source: str):
            def run() -> None:
                shutil.rmtree(output, ignore_errors=True)
                with dask.config.set({"distconv.halo_source": halo_source}):
                    y = dc.convolve(dc.open(source), weights, output=np.float32)
                    dc.save(y, output, progress=False)

            return Contender(halo_source, run)

        contenders = [convolve_with("exchange"), convolve_with("store")]
        with dc.cluster("local", quiet=True, workers=args.workers, threads_per_worker=1):
            run_alternating(contenders, args.repeats)
    medians = {c.name: c.seconds for c in contenders}
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
