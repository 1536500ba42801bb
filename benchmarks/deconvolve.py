"""Richardson–Lucy Zarr → Zarr against scikit-image in memory, 2-D and 3-D (issue #16).

Seeded synthetic beads, blurred by a Gaussian PSF plus Poisson noise, are written to Zarr once
per case; then ``distconv.richardson_lucy`` → ``distconv.save`` runs on a local cluster (with
``halo="auto"`` and, when that is not already exact, ``halo="exact"``) and
``skimage.restoration.richardson_lucy`` runs on the same data loaded in memory. Both use zero
padding (``mode="constant"``) and ``clip=False``, so their results agree to float32 rounding:
the table shows the largest difference. With a CUDA device and CuPy, the ``cupy`` engine runs
too, and cuCIM's ``richardson_lucy`` in memory when cuCIM is installed. Section "deconvolve"
of benchmarks/RESULTS.md.

Full size (the issue's): 8192² float32 in 1024² chunks, PSF 31², 30 iterations; 512³ in 64³
chunks, PSF 15³, 20 iterations. Target: Zarr → Zarr at least 3× faster than scikit-image.

    python benchmarks/deconvolve.py [--size 8192] [--chunk 1024] [--psf 31] [--iterations 30]
        [--size3d 512] [--chunk3d 64] [--psf3d 15] [--iterations3d 20] [--cases 2d,3d]
        [--no-skimage] [--no-write]
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from results import add_options, machine, write_section
from scipy import ndimage

import distconv as dc
from distconv.bench import cluster_text
from distconv.bench.common import fresh
from distconv.clusters.resources import gpu_count
from distconv.ops.deconvolve import plan_for

TARGET = 3.0  # distconv at least this many times faster than scikit-image


def gaussian_psf(size: int, ndim: int) -> np.ndarray:
    """A normalised Gaussian PSF of ``size`` samples per axis (scipy's 4-sigma truncation)."""
    sigma = (size // 2) / 4.0
    return dc.load_weights(f"gaussian:sigma={sigma}", ndim=ndim)


def make_beads(path: Path, shape, chunks, psf: np.ndarray, seed: int) -> None:
    """Beads (a few per 64² or 16³), blurred by ``psf`` and Poisson-noised, written to Zarr."""
    rng = np.random.default_rng(seed)
    count = int(np.prod(shape) / (64**2 if len(shape) == 2 else 16**3))
    truth = np.zeros(shape, dtype=np.float32)
    truth[tuple(rng.integers(0, s, count) for s in shape)] = rng.uniform(100, 1000, count)
    sigma = (psf.shape[0] // 2) / 4.0
    blurred = ndimage.gaussian_filter(truth, sigma, mode="constant") + 10.0
    noisy = rng.poisson(blurred).astype(np.float32)
    array = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="f4")
    array[:] = noisy


def run_case(name: str, shape, chunk: int, psf_size: int, iterations: int, args, workdir: Path):
    """Every contender on one case; returns (rows, notes)."""
    ndim = len(shape)
    psf = gaussian_psf(psf_size, ndim)
    source = workdir / f"{name}.zarr"
    start = time.perf_counter()
    make_beads(source, shape, (chunk,) * ndim, psf, seed=ndim)
    print(f"{name}: input written in {time.perf_counter() - start:.1f} s", flush=True)
    rows, notes, outputs = [], [], {}
    with dc.cluster("local", quiet=True) as client:
        notes.append(f"{name}: cluster {cluster_text(client)}")
        seen = set()
        for halo in ("auto", "exact"):
            x = dc.open(source)
            plan = plan_for(x, psf, "richardson-lucy", iterations=iterations, clip=False,
                            mode="constant", halo=halo)  # fmt: skip
            key = (plan.strategy, plan.halo)
            if key in seen:
                continue
            seen.add(key)
            output = fresh(workdir / f"{name}-{halo}.zarr")
            start = time.perf_counter()
            y = dc.richardson_lucy(x, psf, iterations, clip=False, mode="constant", halo=halo)
            dc.save(y, output, progress=False)
            seconds = time.perf_counter() - start
            outputs[halo] = output
            label = f"{plan.strategy}, {'exact' if plan.exact else f'halo {max(plan.halo)}'}"
            rows.append(_row(name, f"distconv halo={halo}", label, seconds, shape, iterations))
            print(f"  distconv halo={halo} ({label}): {seconds:.1f} s", flush=True)
        if args.gpu and gpu_count() and importlib.util.find_spec("cupy"):
            output = fresh(workdir / f"{name}-cupy.zarr")
            start = time.perf_counter()
            y = dc.richardson_lucy(dc.open(source), psf, iterations, clip=False,
                                   mode="constant", halo="exact", engine="cupy")  # fmt: skip
            dc.save(y, output, progress=False)
            outputs["cupy"] = output
            seconds = time.perf_counter() - start
            rows.append(_row(name, "distconv engine=cupy", "exact", seconds, shape, iterations))
    reference = None
    if not args.no_skimage:
        from skimage.restoration import richardson_lucy

        data = zarr.open_array(str(source))[:]
        start = time.perf_counter()
        reference = richardson_lucy(data, psf.astype(np.float32), iterations, clip=False)
        seconds = time.perf_counter() - start
        rows.append(_row(name, "scikit-image, in memory", "exact", seconds, shape, iterations))
        print(f"  scikit-image: {seconds:.1f} s", flush=True)
        rows += _cucim(name, data, psf, iterations, shape) if args.gpu else []
    for row in rows:
        row["error"] = None
        found = {"distconv halo=auto": "auto", "distconv halo=exact": "exact"}.get(row["contender"])
        found = found or ("cupy" if "cupy" in row["contender"] else None)
        if reference is not None and found in outputs:
            result = zarr.open_array(str(outputs[found]))[:]
            scale = float(np.abs(reference).max())
            row["error"] = float(np.abs(result - reference).max()) / scale
    fresh(source)
    for output in outputs.values():
        fresh(output)
    return rows, notes


def _cucim(name, data, psf, iterations, shape) -> list[dict]:
    """cuCIM's richardson_lucy on the GPU, in memory, when cuCIM and a device are present."""
    if not (gpu_count() and importlib.util.find_spec("cucim")):
        return []
    import cupy
    from cucim.skimage.restoration import richardson_lucy

    on_device = cupy.asarray(data)
    psf_device = cupy.asarray(psf, dtype=cupy.float32)
    richardson_lucy(on_device, psf_device, 1, clip=False)  # warm-up (plans, kernels)
    cupy.cuda.Device().synchronize()
    start = time.perf_counter()
    richardson_lucy(on_device, psf_device, iterations, clip=False)
    cupy.cuda.Device().synchronize()
    seconds = time.perf_counter() - start
    return [_row(name, "cuCIM, in GPU memory", "exact", seconds, shape, iterations)]


def _row(case, contender, how, seconds, shape, iterations) -> dict:
    return {
        "case": case,
        "contender": contender,
        "how": how,
        "seconds": seconds,
        "mvox_iter_per_s": float(np.prod(shape)) * iterations / seconds / 1e6,
    }


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| case | contender | strategy | seconds | Mvoxel·iterations/s | × scikit-image | "
        "max rel. difference vs scikit-image |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        reference = next(
            (r for r in rows if r["case"] == row["case"] and r["contender"].startswith("scikit")),
            None,
        )
        speedup = f"{reference['seconds'] / row['seconds']:.2f}×" if reference else "-"
        error = "-" if row.get("error") is None else f"{row['error']:.1e}"
        lines.append(
            f"| {row['case']} | {row['contender']} | {row['how']} | {row['seconds']:.1f} | "
            f"{row['mvox_iter_per_s']:.1f} | {speedup} | {error} |"
        )
    return lines


def verdict(rows: list[dict]) -> list[str]:
    lines = []
    for case in dict.fromkeys(r["case"] for r in rows):
        ours = [r for r in rows if r["case"] == case and r["contender"].startswith("distconv")]
        theirs = [r for r in rows if r["case"] == case and r["contender"].startswith("scikit")]
        if not ours or not theirs:
            continue
        exact = [r for r in ours if "exact" in r["how"]] or ours
        best = min(exact, key=lambda r: r["seconds"])
        ratio = theirs[0]["seconds"] / best["seconds"]
        state = "met" if ratio >= TARGET else "not met"
        lines.append(
            f"- {case}: target ≥ {TARGET:.0f}× scikit-image {state}: {ratio:.2f}× "
            f"({best['contender']}, {best['how']})."
        )
    return lines


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(parser, size=8192, chunk=1024)
    parser.add_argument("--psf", type=int, default=31)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--size3d", type=int, default=512)
    parser.add_argument("--chunk3d", type=int, default=64)
    parser.add_argument("--psf3d", type=int, default=15)
    parser.add_argument("--iterations3d", type=int, default=20)
    parser.add_argument("--cases", default="2d,3d", help="comma list of 2d, 3d")
    parser.add_argument("--no-skimage", action="store_true", help="skip the in-memory reference")
    parser.add_argument("--gpu", action="store_true", help="also the cupy engine and cuCIM")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    cases = {
        "2d": ((args.size,) * 2, args.chunk, args.psf, args.iterations),
        "3d": ((args.size3d,) * 3, args.chunk3d, args.psf3d, args.iterations3d),
    }
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="distconv-bench-deconvolve-") as folder:
        for name in args.cases.split(","):
            shape, chunk, psf, iterations = cases[name]
            label = f"{'×'.join(map(str, shape))}, {chunk} chunks, PSF {psf}, {iterations} it."
            found, said = run_case(label, shape, chunk, psf, iterations, args, Path(folder))
            rows += found
            notes += said
    command = (
        f"python benchmarks/deconvolve.py --size {args.size} --chunk {args.chunk} "
        f"--psf {args.psf} --iterations {args.iterations} --size3d {args.size3d} "
        f"--chunk3d {args.chunk3d} --psf3d {args.psf3d} --iterations3d {args.iterations3d} "
        f"--cases {args.cases}" + (" --no-skimage" if args.no_skimage else "")
    )
    text = "\n".join(
        [
            "## Richardson–Lucy deconvolution, Zarr → Zarr (benchmarks/deconvolve.py)",
            "",
            f"Command: `{command}`. Machine: {machine()}. Seconds include reading and writing "
            "Zarr for distconv; scikit-image's exclude loading the array. Both zero-pad "
            '(`mode="constant"`), `clip=False`.',
            "",
            *table(rows),
            "",
            *verdict(rows),
            "",
            *[f"- {note}" for note in notes],
        ]
    )
    print(text)
    if not args.no_write:
        write_section("deconvolve", text)
    return rows


if __name__ == "__main__":
    main()
