"""NumPy/SciPy vs TensorFlow (vs Numba) convolution of the same image, as a measured table.

Every engine convolves the same Zarr image Zarr→Zarr with the same kernel and method; the table
shows wall time, throughput and the largest difference from the SciPy engine's result.

    python examples/convolve_engines.py                          # 1024², kernels 3 and 15
    python examples/convolve_engines.py --size 8192 --kernels 3,9,31 --out /data/engines
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time

import dask.array as da
import numpy as np
import zarr

import distconv as dc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="image side (default 1024)")
    parser.add_argument("--chunk", type=int, default=512, help="Zarr chunk side")
    parser.add_argument("--kernels", default="3,15", help="kernel sides, comma separated")
    parser.add_argument("--methods", default="direct,fft", help="methods, comma separated")
    parser.add_argument("--out", help="folder for the Zarr stores (default: a temporary one)")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="distconv-engines-")
    os.makedirs(out, exist_ok=True)

    image_path = os.path.join(out, "image.zarr")
    image = zarr.create_array(
        image_path,
        shape=(args.size, args.size),
        dtype="float32",
        chunks=(args.chunk, args.chunk),
        overwrite=True,
    )
    rng = np.random.default_rng(0)
    for top in range(0, args.size, args.chunk):  # written in bands: any size fits in memory
        rows = min(args.chunk, args.size - top)
        image[top : top + rows] = rng.random((rows, args.size), dtype=np.float32)

    engines = ["scipy"] + [e for e in ("numba", "tensorflow") if importlib.util.find_spec(e)]
    print(f"{args.size}² float32, chunks {args.chunk}², engines: {', '.join(engines)}")
    print(
        f"{'kernel':>6} {'method':<7} {'engine':<11} {'seconds':>8} {'Mpx/s':>8} "
        f"{'max |diff| vs scipy':>20}"
    )
    for side in (int(s) for s in args.kernels.split(",")):
        weights = rng.standard_normal((side, side))  # not separable: every tap counts
        for method in args.methods.split(","):
            reference = None
            for engine in engines:
                try:
                    result = dc.convolve(dc.open(image_path), weights, method=method, engine=engine)
                except dc.EngineError:
                    continue  # this engine has no such method (numba has no FFT)
                # Warm-up on a small image: imports, compilation and traces are not timed.
                dc.convolve(
                    np.ones((64, 64), np.float32), weights, method=method, engine=engine
                ).compute()
                path = os.path.join(out, f"k{side}-{method}-{engine}.zarr")
                start = time.perf_counter()
                dc.save(result, path, overwrite=True, progress=False)
                seconds = time.perf_counter() - start
                if reference is None:
                    reference, diff = path, 0.0
                else:
                    diff = float(da.fabs(dc.open(path) - dc.open(reference)).max().compute())
                print(
                    f"{side:>6} {method:<7} {engine:<11} {seconds:8.3f} "
                    f"{args.size**2 / seconds / 1e6:8.1f} {diff:20.2e}"
                )


if __name__ == "__main__":
    main()
