"""Segment blobs: train a tiny Keras model in seconds, then apply it to a large Zarr image.

Synthetic blobs (smoothed disks of varied size and brightness on an uneven background, with
noise) and their masks train a tiny fully convolutional network (a few 3×3 convolutions around
one max-pool/upsampling pair, a sigmoid out) on 64² patches for a few seconds on a CPU. The
model is saved as ``blobs.keras``; a large image of the same kind is written to Zarr and
``dc.apply`` runs the model over it tile by tile (each tile with the model's receptive field as
its halo: the result equals ``model.predict`` on the whole image). Printed: the training time,
the seconds ``dc.apply`` + ``dc.save`` took and the Dice score of the thresholded prediction vs
the true mask; ``segment.png`` shows a crop: image | prediction | threshold.

    python examples/segment.py                      # 2048² in 256² chunks, threads
    python examples/segment.py --size 512 --out /tmp/segment
    python examples/segment.py --cluster local --workers 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import scipy.ndimage as ndi
import zarr

import distconv as dc


def make_blobs(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An image of smoothed disks on an uneven background with noise, and the disks' mask."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), bool)
    bright = np.zeros((size, size), np.float32)
    for _ in range(max(1, size * size // 900)):
        radius = rng.uniform(3, 9)
        cy, cx = rng.uniform(0, size, 2)
        r = int(radius) + 1
        y0, y1 = max(int(cy) - r, 0), min(int(cy) + r + 1, size)
        x0, x1 = max(int(cx) - r, 0), min(int(cx) + r + 1, size)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.ogrid[y0:y1, x0:x1]
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        mask[y0:y1, x0:x1] |= disk
        bright[y0:y1, x0:x1][disk] = np.maximum(bright[y0:y1, x0:x1][disk], rng.uniform(0.5, 1.0))
    y, x = (axis / np.float32(max(size, 64)) for axis in np.ogrid[:size, :size])
    phase = rng.uniform(0, 2 * np.pi, 2)
    background = 0.2 + 0.1 * np.sin(4 * np.pi * x + phase[0]) * np.cos(3 * np.pi * y + phase[1])
    image = ndi.gaussian_filter(bright, 1.5) + background
    image += rng.normal(0, 0.08, image.shape)
    return image.astype(np.float32), mask


def tiny_model(seed: int = 0):
    """Conv, conv / max-pool / conv / upsample / conv, sigmoid: any size that is a multiple of 2."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    image = keras.Input((None, None, 1))
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(image)
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = layers.UpSampling2D(2)(x)
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    out = layers.Conv2D(1, 1, activation="sigmoid")(x)
    return keras.Model(image, out, name="blobs")


def train(path: str, epochs: int, seed: int = 0) -> float:
    """Train the tiny model on 64² patches of synthetic blobs, save it to ``path``; seconds."""
    import keras

    start = time.perf_counter()
    image, mask = make_blobs(1024, seed=seed + 1)  # 256 patches of 64²
    patches = image.reshape(16, 64, 16, 64).transpose(0, 2, 1, 3).reshape(-1, 64, 64, 1)
    targets = mask.reshape(16, 64, 16, 64).transpose(0, 2, 1, 3).reshape(-1, 64, 64, 1)
    model = tiny_model(seed)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    model.fit(
        patches, targets.astype(np.float32), batch_size=16, epochs=epochs, shuffle=True, verbose=0
    )
    model.save(path)
    return time.perf_counter() - start


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


def save_png(path: str, panels: dict[str, np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.3))
    for axis, (title, image) in zip(axes, panels.items()):
        axis.imshow(image, cmap="gray")
        axis.set_title(title)
        axis.set_axis_off()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="image side (default 2048)")
    parser.add_argument("--chunk", type=int, default=256, help="Zarr chunk side (default 256)")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs (default 4)")
    parser.add_argument("--cluster", default="threads", help="threads, local, tcp://HOST:PORT")
    parser.add_argument("--workers", type=int, default=2, help="local cluster worker processes")
    parser.add_argument("--out", help="output folder (default: a temporary one)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    out = args.out or tempfile.mkdtemp(prefix="distconv-segment-")
    os.makedirs(out, exist_ok=True)
    model_path = os.path.join(out, "blobs.keras")
    image_path = os.path.join(out, "blobs.zarr")
    result_path = os.path.join(out, "blobs.prediction.zarr")

    seconds = train(model_path, args.epochs)
    print(f"trained {model_path} ({args.epochs} epochs on 256 patches of 64²) in {seconds:.1f} s")

    image, mask = make_blobs(args.size, seed=100)  # a new image: not seen in training
    store = zarr.create_array(
        image_path, shape=image.shape, chunks=(args.chunk,) * 2, dtype="f4", overwrite=True
    )
    for row in range(0, args.size, args.chunk):  # one row of chunks at a time
        store[row : row + args.chunk] = image[row : row + args.chunk]
    print(f"image: {image_path} {args.size}×{args.size} float32, chunks {args.chunk}²")

    workers = args.workers if args.cluster == "local" else None
    with dc.cluster(args.cluster, workers=workers, quiet=True):
        start = time.perf_counter()
        predicted = dc.apply(model_path, image_path)
        written = dc.save(predicted, result_path, overwrite=True, progress=False)
        seconds = time.perf_counter() - start
    step = written.attrs["distconv"]["steps"][-1]["parameters"]
    probability = written[..., 0]
    segmented = probability > 0.5
    print(
        f"applied in {seconds:.2f} s: tile {step['tile']}, halo {step['halo']}, "
        f"batch {step['batch']} -> {result_path} {tuple(written.shape)}"
    )
    print(f"dice vs the true mask: {dice(segmented, mask):.3f}")

    crop = (slice(0, min(256, args.size)),) * 2
    png = os.path.join(out, "segment.png")
    save_png(
        png,
        {
            "image": image[crop],
            "prediction": probability[crop],
            "prediction > 0.5": segmented[crop],
        },
    )
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
