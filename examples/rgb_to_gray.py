"""RGB → grayscale of a large RGB Zarr image through ``tf.image.rgb_to_grayscale``.

The TensorFlow function is used as is: :func:`distconv.map_chunks` wraps it in a ``tf.function``
traced once per worker, feeds it one (rows, cols, 3) chunk at a time and infers from a tiny probe
that the result is (rows, cols, 1) uint8.

    python examples/rgb_to_gray.py                      # 1024 x 768 x 3, chunks of 256
    python examples/rgb_to_gray.py --size 32768 --chunk 4096 --out /data/gray
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
    parser.add_argument("--size", type=int, default=1024, help="image height (width = 3/4 of it)")
    parser.add_argument("--chunk", type=int, default=256, help="Zarr chunk side")
    parser.add_argument("--out", help="folder for the Zarr stores (default: a temporary one)")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="distconv-gray-")
    os.makedirs(out, exist_ok=True)

    # A synthetic uint8 RGB image, written band by band so a large one never sits in memory.
    height, width = args.size, 3 * args.size // 4
    rgb = zarr.create_array(
        os.path.join(out, "rgb.zarr"),
        shape=(height, width, 3),
        chunks=(args.chunk, args.chunk, 3),
        dtype="uint8",
        overwrite=True,
    )
    rng = np.random.default_rng(0)
    for top in range(0, height, args.chunk):
        rows = min(args.chunk, height - top)
        rgb[top : top + rows] = rng.integers(0, 256, (rows, width, 3), dtype=np.uint8)

    import tensorflow as tf  # imported here only to name the function; workers import it too

    gray = dc.map_chunks(
        tf.image.rgb_to_grayscale, dc.open(os.path.join(out, "rgb.zarr")), engine="tensorflow"
    )
    print(f"{rgb.shape} {rgb.dtype} -> {gray.shape} {gray.dtype}")
    start = time.perf_counter()
    dc.save(gray, os.path.join(out, "gray.zarr"), overwrite=True, progress=False)
    seconds = time.perf_counter() - start
    print(f"{height * width / seconds / 1e6:.1f} Mpx/s ({seconds:.2f} s) -> {out}/gray.zarr")

    # Spot check one chunk against the ITU-R 601 weights TensorFlow uses.
    block = rgb[: args.chunk, : args.chunk].astype(np.float64)
    expected = block @ np.array([0.2989, 0.5870, 0.1140])
    written = zarr.open_array(os.path.join(out, "gray.zarr"))[: args.chunk, : args.chunk, 0]
    print(
        f"max |error| on the first chunk: {np.abs(written - expected).max():.2f} (uint8 rounding)"
    )


if __name__ == "__main__":
    main()
