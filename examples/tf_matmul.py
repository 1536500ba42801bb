"""Matrix product of two Zarr matrices through TensorFlow graphs.

Each block product runs in one ``tf.function`` (traced once per worker, whatever the block
shapes); distconv plans the panels against a memory budget and sums partial products as a tree.

    python examples/tf_matmul.py                       # 512 x 384 @ 384 x 256, chunks of 128
    python examples/tf_matmul.py --n 8192 --chunk 2048 --out /data/mm
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import zarr

import distconv as dc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--n", type=int, default=512, help="rows of A (A is n x 3n/4, B 3n/4 x n/2)"
    )
    parser.add_argument("--chunk", type=int, default=128, help="Zarr chunk side")
    parser.add_argument("--out", help="folder for the Zarr stores (default: a temporary one)")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="distconv-matmul-")
    os.makedirs(out, exist_ok=True)

    # Two random float32 matrices written to Zarr, as a real job would find them.
    rng = np.random.default_rng(0)
    n, k, m = args.n, 3 * args.n // 4, args.n // 2
    for name, shape in (("a", (n, k)), ("b", (k, m))):
        store = zarr.create_array(
            os.path.join(out, f"{name}.zarr"),
            shape=shape,
            chunks=(args.chunk, args.chunk),
            dtype="float32",
            overwrite=True,
        )
        store[:] = rng.standard_normal(shape, dtype=np.float32)

    a, b = dc.open(os.path.join(out, "a.zarr")), dc.open(os.path.join(out, "b.zarr"))
    product = dc.matmul(a, b, engine="tensorflow")  # lazy: nothing computed yet
    start = time.perf_counter()
    dc.save(product, os.path.join(out, "ab.zarr"), overwrite=True, progress=False)
    seconds = time.perf_counter() - start
    print(
        f"A {a.shape} @ B {b.shape} -> {product.shape} in {seconds:.2f} s "
        f"({2 * n * k * m / seconds / 1e9:.2f} GFLOP/s) -> {out}/ab.zarr"
    )

    # Check against NumPy in float64 (small sizes only: this reads both matrices into memory).
    if n <= 4096:
        expected = a.compute().astype(np.float64) @ b.compute().astype(np.float64)
        error = np.abs(zarr.open_array(os.path.join(out, "ab.zarr"))[:] - expected).max()
        print(f"max |error| vs numpy float64: {error:.2e}")


if __name__ == "__main__":
    main()
