"""How far smaller halos are from the exact result: the tables of docs/deconvolution.md.

Richardson–Lucy: synthetic beads (blurred by the PSF, Poisson noise) deconvolved with tiles of
128² and halos of 1, 2 (``halo="auto"``) and 4 iterations' worth of dependence, against the
exact result (passes), for three PSFs: Gaussian, a uniform disc (defocus, sharp edges) and a
Lorentzian (long tails). Wiener: the tiled filter (halo of 4 PSF sizes) against the whole-image
filter, i.e. scikit-image's, on a smooth image and on beads.

    python benchmarks/deconvolve_halo.py [--size 384] [--chunk 128]
"""

from __future__ import annotations

import argparse
import tempfile

import dask.array as da
import numpy as np
from scipy import ndimage

import distconv as dc
from distconv.clusters.resources import Resources
from distconv.ops.deconvolve import plan_for, richardson_lucy_with_plan

# Many threads: tiles stay at the chunk size, the case a smaller halo is for.
SMALL_TILES = Resources(64, 1, 2**31, "fixed for the table")


def psfs() -> dict[str, np.ndarray]:
    r = np.hypot(*np.mgrid[-12:13, -12:13])
    disc = (r <= 4.5).astype(float)
    lorentz = 1.0 / (1.0 + (r / 1.5) ** 2)
    return {
        "Gaussian σ=2 (17²)": dc.load_weights("gaussian:sigma=2", ndim=2),
        "disc r=4.5 (25²)": disc / disc.sum(),
        "Lorentzian γ=1.5 (25²)": lorentz / lorentz.sum(),
    }


def beads(size: int, psf: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    truth = np.full((size, size), 2.0)
    count = size * size // 400
    truth[rng.integers(0, size, count), rng.integers(0, size, count)] += rng.uniform(
        200, 1000, count
    )
    return rng.poisson(ndimage.convolve(truth, psf, mode="reflect")).astype(np.float32)


def richardson_lucy_rows(size: int, chunk: int) -> list[str]:
    rows = [
        "| PSF | iterations | halo (pixels) | max difference / max | mean difference / mean |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, psf in psfs().items():
        x = da.from_array(beads(size, psf, seed=1), chunks=chunk)
        for iterations in (10, 30):
            with tempfile.TemporaryDirectory() as scratch:
                exact_plan = plan_for(x, psf, "richardson-lucy", iterations=iterations,
                                      clip=False, halo="exact", strategy="passes",
                                      resources=SMALL_TILES)  # fmt: skip
                exact = richardson_lucy_with_plan(x, exact_plan, psf, scratch=scratch).compute()
            reach = 2 * (psf.shape[0] // 2)
            for worth in (1, 2, 4):
                plan = plan_for(x, psf, "richardson-lucy", iterations=iterations, clip=False,
                                halo=reach * worth, resources=SMALL_TILES)  # fmt: skip
                out = richardson_lucy_with_plan(x, plan, psf).compute()
                d = np.abs(out.astype(np.float64) - exact)
                label = f"{reach * worth}" + (" (auto)" if worth == 2 else "")
                rows.append(
                    f"| {name} | {iterations} | {label} | {d.max() / exact.max():.1e} | "
                    f"{d.mean() / exact.mean():.1e} |"
                )
    return rows


def wiener_rows(size: int, chunk: int) -> list[str]:
    rows = [
        "| image | PSF | mode | halo | max difference / max | mean difference / mean | "
        "max difference / max, farther than the halo from the image's edges |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    rng = np.random.default_rng(2)
    smooth = ndimage.gaussian_filter(rng.random((size, size)), 3)
    for name, psf in list(psfs().items())[:2]:
        images = {
            "smooth": ndimage.convolve(smooth, psf, mode="wrap").astype(np.float32),
            "beads": beads(size, psf, seed=3),
        }
        for label, image in images.items():
            x = da.from_array(image, chunks=chunk)
            whole = dc.wiener(x, psf, 0.05, clip=False, halo="exact").compute()
            for mode in ("wrap", "reflect"):
                halo = 4 * psf.shape[0]  # what halo="auto" uses when it tiles
                tiled = dc.wiener(x, psf, 0.05, clip=False, mode=mode, halo=halo).compute()
                d = np.abs(tiled.astype(np.float64) - whole)
                scale = np.abs(whole).max()
                inner = d[halo:-halo, halo:-halo].max() / scale
                rows.append(
                    f"| {label} | {name} | {mode} | {halo} | {d.max() / scale:.1e} "
                    f"| {d.mean() / np.abs(whole).mean():.1e} | {inner:.1e} |"
                )
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--chunk", type=int, default=128)
    args = parser.parse_args(argv)
    print(f"Richardson–Lucy, {args.size}² beads, {args.chunk}² tiles:\n")
    print("\n".join(richardson_lucy_rows(args.size, args.chunk)))
    print(f"\nWiener (balance 0.05), {args.size}², {args.chunk}² tiles, vs the whole image:\n")
    print("\n".join(wiener_rows(args.size, args.chunk)))


if __name__ == "__main__":
    main()
