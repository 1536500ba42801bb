"""A multi-GPU job: one Dask worker per GPU (``--cluster cuda``), chunks computed on the devices.

The image is smoothed by the CuPy engine and then gamma-corrected by a user function that
:func:`distconv.map_chunks` runs on CuPy arrays; each worker owns one GPU, so N GPUs work on N
chunks at once. The result is written to Zarr from the GPU workers.

Without a GPU (or without dask-cuda) the script says so and, unless ``--fallback none``, runs
the very same job on CPU engines (``--fallback threads``, the default, or ``local``), so it can
be tried, and tested, anywhere. It always exits 0 in that case.

    python examples/multi_gpu.py                                   # 2048², every GPU here
    python examples/multi_gpu.py --size 65536 --chunk 8192 --out /scratch/run --workers 4
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time

import numpy as np
import zarr

import distconv as dc


def gamma(block, power):
    # Plain array methods, so the same function runs on CuPy (GPU) and NumPy (CPU) chunks.
    return block.clip(0, None) ** power


def run(image_path: str, out_path: str, gpu: bool) -> float:
    """The job itself: smooth → gamma → save. Returns the seconds it took."""
    start = time.perf_counter()
    engine = "cupy" if gpu else "auto"
    smooth = dc.convolve(
        dc.open(image_path), dc.load_weights("gaussian:sigma=4", ndim=2), engine=engine
    )
    corrected = dc.map_chunks(
        gamma,
        smooth,
        power=0.5,
        engine="cupy" if gpu else "numpy",
        dtype="float32",
        chunks=smooth.chunks,
    )
    dc.save(corrected, out_path, overwrite=True, progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="image side (default 2048)")
    parser.add_argument("--chunk", type=int, default=512, help="Zarr chunk side")
    parser.add_argument("--cluster", default="cuda", help="cluster spec (default: cuda)")
    parser.add_argument("--workers", type=int, help="GPUs to use (default: all)")
    parser.add_argument(
        "--fallback",
        default="threads",
        choices=("threads", "local", "none"),
        help="what to run on when there is no GPU (default: threads)",
    )
    parser.add_argument("--out", help="output folder (default: a temporary one)")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="distconv-multigpu-")
    os.makedirs(out, exist_ok=True)
    image_path, out_path = os.path.join(out, "image.zarr"), os.path.join(out, "gamma.zarr")
    # The input grows band by band (any size fits in memory): rows of random float32 pixels.
    image = zarr.create_array(
        image_path, shape=(0, args.size), chunks=(args.chunk,) * 2, dtype="float32", overwrite=True
    )
    rng = np.random.default_rng(0)
    for top in range(0, args.size, args.chunk):
        image.append(rng.random((min(args.chunk, args.size - top), args.size), dtype=np.float32))

    with contextlib.ExitStack() as stack:
        try:  # only starting the cluster may fall back; errors in the job itself are errors
            client = stack.enter_context(dc.cluster(args.cluster, workers=args.workers, quiet=True))
        except dc.DistconvError as error:
            if args.cluster != "cuda":
                raise
            print(f"No GPU cluster here: {error}.")
            print("This example needs NVIDIA GPUs and dask-cuda to run on GPUs.")
            if args.fallback == "none":
                return
            print(f"Running the same job on CPU engines instead (--fallback {args.fallback}).")
            stack.enter_context(dc.cluster(args.fallback, quiet=True))
            seconds, where = run(image_path, out_path, gpu=False), f"the CPU ({args.fallback})"
        else:
            devices = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES", "?"))
            print(
                f"{len(devices)} GPU worker(s): "
                + ", ".join(
                    f"{address} → CUDA_VISIBLE_DEVICES={value}"
                    for address, value in devices.items()
                )
            )
            seconds, where = run(image_path, out_path, gpu=True), f"{len(devices)} GPU(s)"
    print(
        f"{args.size}² smooth → gamma on {where}: {seconds:.2f} s "
        f"({args.size**2 / seconds / 1e6:.2f} Mpx/s) -> {out_path}"
    )


if __name__ == "__main__":
    main()
