"""Element-wise multiply of two Zarr arrays three ways: a Numba CUDA kernel, TensorFlow, NumPy.

Each is one :func:`distconv.map_chunks` call with the same inputs; only the function and the
engine change. Without a GPU the CUDA kernel runs in Numba's CUDA simulator (on the CPU, very
slowly: keep --size small there); on a GPU the chunks are copied to the device and back.

    python examples/multiply_engines.py                    # 64² (simulator) or 4096² (GPU)
    python examples/multiply_engines.py --size 16384 --chunk 4096 --out /data/mul
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import tempfile
import time


def gpu_present() -> bool:
    """Ask the driver, not the CUDA runtime: importing numba.cuda would fix the simulator choice."""
    if shutil.which("nvidia-smi") is None:
        return False
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return listed.returncode == 0 and "GPU" in listed.stdout


# The simulator must be switched on before numba.cuda is first imported.
SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or not gpu_present()
if SIMULATOR:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import dask.array as da  # noqa: E402
import numpy as np  # noqa: E402
import zarr  # noqa: E402
from numba import cuda  # noqa: E402

import distconv as dc  # noqa: E402


@cuda.jit
def multiply_kernel(a, b, out):
    # One thread per element of a 2-D chunk.
    i, j = cuda.grid(2)
    if i < out.shape[0] and j < out.shape[1]:
        out[i, j] = a[i, j] * b[i, j]


def numba_multiply(a, b):
    """Runs on Numba device arrays (map_chunks put the chunks on the GPU)."""
    out = cuda.device_array(a.shape, dtype=a.dtype)
    threads = (16, 16)
    blocks = (math.ceil(a.shape[0] / 16), math.ceil(a.shape[1] / 16))
    multiply_kernel[blocks, threads](a, b, out)
    return out


def tensorflow_multiply(a, b):
    import tensorflow as tf

    return tf.multiply(a, b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size",
        type=int,
        default=64 if SIMULATOR else 4096,
        help="side of the square arrays (default: 64 simulated, 4096 on a GPU)",
    )
    parser.add_argument(
        "--chunk", type=int, default=32 if SIMULATOR else 1024, help="Zarr chunk side"
    )
    parser.add_argument("--out", help="folder for the Zarr stores (default: a temporary one)")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="distconv-multiply-")
    os.makedirs(out, exist_ok=True)
    print("CUDA: " + ("Numba's CUDA simulator (no GPU found)" if SIMULATOR else "GPU"))

    rng = np.random.default_rng(0)
    paths = []
    for name in ("a", "b"):
        path = os.path.join(out, f"{name}.zarr")
        data = rng.standard_normal((args.size, args.size), dtype=np.float32)
        zarr.create_array(path, data=data, chunks=(args.chunk, args.chunk), overwrite=True)
        paths.append(path)

    runs = [
        ("numpy", np.multiply),
        ("tensorflow", tensorflow_multiply),
        ("numba-cuda", numba_multiply),
    ]
    print(f"{'engine':<12} {'seconds':>8} {'Melem/s':>9} {'max |err|':>10}")
    for engine, function in runs:
        a, b = dc.open(paths[0]), dc.open(paths[1])
        product = dc.map_chunks(function, a, b, engine=engine)
        start = time.perf_counter()
        dc.save(product, os.path.join(out, f"{engine}.zarr"), overwrite=True, progress=False)
        seconds = time.perf_counter() - start
        # The reference is NumPy in float64, chunk by chunk (never all in memory).
        expected = a.astype(np.float64) * b.astype(np.float64)
        error = float(
            da.fabs(dc.open(os.path.join(out, f"{engine}.zarr")) - expected).max().compute()
        )
        print(f"{engine:<12} {seconds:8.3f} {args.size**2 / seconds / 1e6:9.2f} {error:10.2e}")


if __name__ == "__main__":
    main()
