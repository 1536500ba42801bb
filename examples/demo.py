"""The `make demo` job: build a sample image, convolve it with distconv's defaults, show both.

Writes demo-output/sample.zarr (8192×8192 float32 with cell-like structure, chunks 2048²) and a
31×31 difference-of-Gaussians kernel (a blob detector), runs the real `distconv convolve` command
with what a plain `pip install distconv` gives (the FFT method on ducc0, the default `auto`
cluster: 512 MiB of input and output run on threads in this process; its summary line says so,
with time and throughput), and saves demo-output/demo.png with the input and the output side by
side.

    python examples/demo.py [--size 8192] [--out demo-output]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import zarr


def sample_image(size: int, seed: int = 0) -> np.ndarray:
    """A microscopy-like image: smooth background, bright cells of varied size, a little noise."""
    rng = np.random.default_rng(seed)
    y, x = (axis / np.float32(size) for axis in np.ogrid[:size, :size])
    image = (0.2 + 0.1 * np.sin(6 * np.pi * x) * np.cos(4 * np.pi * y)).astype(np.float32)
    for _ in range(size * size // 40_000):
        radius = rng.uniform(size / 400, size / 60)
        cy, cx = rng.uniform(0, size, 2)
        r = int(radius * 2) + 1
        y0, y1 = max(int(cy) - r, 0), min(int(cy) + r, size)
        x0, x1 = max(int(cx) - r, 0), min(int(cx) + r, size)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        d2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / radius**2
        image[y0:y1, x0:x1] += rng.uniform(0.3, 1.0) * np.exp(-d2 * 2).astype(np.float32)
    image += rng.normal(0, 0.03, image.shape).astype(np.float32)
    return image


def dog_kernel(size: int = 31, sigma: float = 4.0) -> np.ndarray:
    """Difference of Gaussians: an edge/blob detector (a real, non-separable kernel)."""
    r = np.arange(size) - size // 2
    d2 = r[:, None] ** 2 + r[None, :] ** 2
    narrow = np.exp(-d2 / (2 * sigma**2))
    wide = np.exp(-d2 / (2 * (2 * sigma) ** 2))
    return narrow / narrow.sum() - wide / wide.sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192, help="image side (default 8192)")
    parser.add_argument("--chunk", type=int, default=2048, help="Zarr chunk side (default 2048)")
    parser.add_argument("--out", default="demo-output", help="output folder")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    image_path = os.path.join(args.out, "sample.zarr")
    kernel_path = os.path.join(args.out, "kernel.npy")
    result_path = os.path.join(args.out, "sample.convolved.zarr")

    start = time.perf_counter()
    image = sample_image(args.size)
    store = zarr.create_array(
        image_path, shape=image.shape, chunks=(args.chunk,) * 2, dtype=image.dtype, overwrite=True
    )
    store[:] = image
    np.save(kernel_path, dog_kernel())
    print(
        f"sample: {image_path} {args.size}×{args.size} float32, chunks {args.chunk}² "
        f"({time.perf_counter() - start:.1f} s to make)"
    )

    distconv = os.path.join(os.path.dirname(sys.executable), "distconv")
    subprocess.run(
        [distconv, "convolve", image_path, kernel_path, "-o", result_path, "--overwrite"],
        check=True,
    )
    subprocess.run([distconv, "info", result_path], check=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step = max(1, args.size // 1024)
    view = (slice(None, None, step),) * 2
    crop = (slice(0, min(args.size, 512)),) * 2
    result = zarr.open_array(result_path, mode="r")
    fig, axes = plt.subplots(2, 2, figsize=(10, 10))
    for column, (title, array) in enumerate((("input", store), ("convolved (DoG 31×31)", result))):
        low, high = np.percentile(array[view], [1, 99.5])
        axes[0, column].imshow(array[view], cmap="gray", vmin=low, vmax=high)
        axes[0, column].set_title(f"{title}, whole image (every {step}th pixel)")
        axes[1, column].imshow(array[crop], cmap="gray", vmin=low, vmax=high)
        axes[1, column].set_title(f"{title}, top-left 512² at full resolution")
    for ax in axes.flat:
        ax.set_axis_off()
    fig.tight_layout()
    png = os.path.join(args.out, "demo.png")
    fig.savefig(png, dpi=80)
    print(f"picture: {png}")


if __name__ == "__main__":
    main()
