"""Zarr → Zarr convolution: distconv per engine vs the copy floor and the reference tools.

Per kernel size, on the same seeded input: the Zarr → Zarr copy (``dask.array.from_zarr`` →
``to_zarr``, the floor no Zarr → Zarr filter can beat), ``distconv.convolve`` with each engine (the
plan picks the method per chunk), dask-image's ``ndfilters.convolve`` when installed, and in-memory
``scipy.ndimage.convolve`` and ``scipy.signal.oaconvolve`` on one core. Cells the cost model
expects to take longer than ``max_seconds`` are listed as skipped, with the estimate, instead of
run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from distconv.bench.common import Contender, Session, fresh, make_input, run_alternating
from distconv.bench.report import Result


def kernel_for(size: int, ndim: int = 2) -> np.ndarray:
    """A dense random (not separable) kernel, seeded by its size: the general case."""
    return np.random.default_rng(size).standard_normal((size,) * ndim)


def _distconv_estimate(
    shape, chunk: int, kernel: np.ndarray, engine: str, workers: int
) -> tuple[str, float]:
    """The method the plan picks for a full chunk and the cost model's wall-seconds."""
    from distconv.plan import method_costs, plan_correlation

    plan = plan_correlation(shape, np.float32, kernel, engine=engine, convolution=True)
    block = [min(chunk, s) for s in shape]
    method = plan.method_for(block)
    per_chunk = method_costs(plan.weights, block, {method: plan.engines[method]})[method]
    chunks = math.prod(math.ceil(s / chunk) for s in shape)
    return f"{method}/{plan.engines[method]}", per_chunk * chunks / max(workers, 1)


def _scipy_direct_estimate(pixels: float, kernel: np.ndarray) -> float:
    """Seconds scipy.ndimage.convolve takes on one core (the scipy engine's direct COST)."""
    from distconv import kernels

    per_pixel, per_unit = kernels.ENGINES["scipy"].cost["direct"]
    return pixels * (per_pixel + per_unit * np.count_nonzero(kernel))


def check_window(source: str, output: str, kernel: np.ndarray, chunk: int) -> float:
    """Max relative error of an output window across a chunk corner vs float64 SciPy."""
    import zarr
    from scipy import ndimage

    x, y = zarr.open_array(source), zarr.open_array(output)
    half = kernel.shape[0] // 2
    starts = []
    for size in x.shape:
        start = min(max(chunk - 64, half), max(size - half - 128, half))
        stop = min(start + 128, size - half)
        starts.append((start, stop))
    region = tuple(slice(a, b) for a, b in starts)
    padded = tuple(slice(a - half, b + half) for a, b in starts)
    expected = ndimage.convolve(x[padded].astype(np.float64), kernel, mode="constant")
    expected = expected[tuple(slice(half, half + b - a) for a, b in starts)]
    got = y[region].astype(np.float64)
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-30))


def bench_convolve(
    size: int,
    kernel_sizes: Sequence[int],
    engines: Sequence[str],
    session: Session,
    max_seconds: float = 30.0,
) -> Result:
    """Time a Zarr → Zarr convolve of ``size``² float32 per engine and kernel size.

    Parameters are those of :func:`distconv.bench.run` (``kernel_sizes`` its ``kernels``); the
    rest is in ``session``.
    """
    import dask.array as da

    import distconv as dc

    workdir, chunk = session.workdir, session.chunk
    source = workdir / "input.zarr"
    shape = (size, size)
    make_input(source, shape, chunk, seed=0)
    workers = session.workers
    pixels = float(size * size)
    in_memory = {}
    warmed: set[str] = set()  # contenders warm up once, at the first kernel they run
    result = Result(
        "convolve",
        unit="Mpx/s",
        work=pixels / 1e6,
        setup=session.setup(size, engines, kernels=list(kernel_sizes)),
    )
    log = session.log
    for k in kernel_sizes:
        kernel = kernel_for(k)
        group = f"{k}×{k}"

        def copy():
            da.from_zarr(str(source)).to_zarr(fresh(workdir / "copy.zarr"))

        contenders = [Contender("Zarr→Zarr copy", copy, kind="floor")]
        # What engine="auto" would run for a full chunk, whether or not "auto" is timed.
        result.setup.setdefault("auto_choice", {})[group] = _distconv_estimate(
            shape, chunk, kernel, "auto", workers
        )[0]
        for engine in engines:
            how, estimate = _distconv_estimate(shape, chunk, kernel, engine, workers)

            def run(engine=engine, kernel=kernel):
                dc.save(
                    dc.convolve(dc.open(source), kernel, engine=engine),
                    fresh(workdir / f"dc-{engine}.zarr"),
                    progress=False,
                )

            method, resolved = how.split("/")
            contenders.append(
                Contender(
                    f"distconv {engine}",
                    run,
                    engine=resolved,
                    method=method,
                    skip=f"skipped (≈{estimate:.0f} s)" if estimate > max_seconds else None,
                )
            )
        if session.references:
            contenders += _references(
                source, workdir, kernel, pixels, workers, max_seconds, in_memory
            )
        run_alternating(
            contenders,
            session.repeats,
            log=(lambda text, k=k: log(f"k={k} {text}")) if log else None,
            warmed=warmed,
        )
        errors = {}
        for engine in engines:
            output = workdir / f"dc-{engine}.zarr"
            if output.exists():
                errors[f"distconv {engine}"] = check_window(str(source), str(output), kernel, chunk)
        # dask-image when it ran for this kernel, else SciPy in memory.
        ran = [c for c in contenders if c.seconds is not None]
        chosen = next((c for c in ran if c.kind == "reference"), None) or next(
            (c for c in ran if c.kind == "baseline"), None
        )
        result.add_group(group, contenders, chosen, errors)
        for engine in engines:
            fresh(workdir / f"dc-{engine}.zarr")
    in_memory.clear()
    return result


def _references(
    source: Path,
    workdir: Path,
    kernel: np.ndarray,
    pixels: float,
    workers: int,
    max_seconds: float,
    in_memory: dict,
) -> list[Contender]:
    """dask-image (Zarr → Zarr, same cluster) and SciPy on the whole array in memory."""
    import dask.array as da
    import zarr
    from scipy import ndimage

    found = []
    direct = _scipy_direct_estimate(pixels, kernel)
    try:
        from dask_image.ndfilters import convolve as dask_image_convolve

        def dask_image():
            x = da.from_zarr(str(source))
            dask_image_convolve(x, kernel).to_zarr(fresh(workdir / "dask-image.zarr"))

        estimate = direct / workers
        found.append(
            Contender(
                "dask-image",
                dask_image,
                kind="reference",
                method="direct",
                engine="scipy.ndimage",
                skip=f"skipped (≈{estimate:.0f} s)" if estimate > max_seconds else None,
            )
        )
    except ImportError:
        pass
    memory_needed = 3 * pixels * 4  # input, output and scipy's float32 work copy
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 4
    skip = None
    if direct > max_seconds:
        skip = f"skipped (≈{direct:.0f} s)"
    elif memory_needed > available:
        skip = "skipped (does not fit in a quarter of memory)"

    def scipy_in_memory():
        if "x" not in in_memory:  # read once, outside the timing of later repeats
            in_memory["x"] = zarr.open_array(str(source))[:]
        ndimage.convolve(in_memory["x"], kernel)

    found.append(
        Contender(
            "scipy.ndimage in memory (1 core)",
            scipy_in_memory,
            kind="baseline",
            method="direct",
            engine="scipy.ndimage",
            skip=skip,
        )
    )

    # SciPy's own FFT route on the whole array (zero-padded edges, so only a speed reference):
    # the in-memory yardstick where scipy.ndimage is too slow to run (large kernels).
    kernel32 = kernel.astype(np.float32)  # keeps the transform in single precision

    def oaconvolve_in_memory():
        from scipy.signal import oaconvolve

        if "x" not in in_memory:
            in_memory["x"] = zarr.open_array(str(source))[:]
        oaconvolve(in_memory["x"], kernel32, mode="same")

    found.append(
        Contender(
            "scipy.signal.oaconvolve in memory (1 core)",
            oaconvolve_in_memory,
            kind="baseline",
            method="fft",
            engine="scipy.signal",
            skip="skipped (does not fit in a quarter of memory)"
            if memory_needed > available
            else None,
        )
    )
    return found
