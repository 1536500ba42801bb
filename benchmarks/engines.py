"""Per-engine throughput on the same chunk: which library is fastest for each method and kernel.

Every engine installed here (GPU engines when a CUDA device is present) runs each method it
implements on the same padded float32 block, for kernels 3×3, 9×9, 31×31 and 127×127. Medians
of repeats after a warm-up (compilation, tracing). This table is the measured answer to
"NumPy/SciPy vs TensorFlow vs Numba for convolution" and sets ``CPU_PREFERENCE`` in
kernels/registry.py. Results go to benchmarks/RESULTS.md (section "engines").

``--fit`` instead fits each engine's ``COST`` (the cost model behind method="auto", see
:func:`distconv.plan.method_costs`) on the same kind of blocks and prints the constants to paste
into kernels/registry.py, on the scipy engine's scale (it replaces the per-engine
``_benchmark()`` fitters the engines used to carry).

    python benchmarks/engines.py [--size 1024] [--kernel-sizes 3,9,31,127] [--repeats 3]
    python benchmarks/engines.py --fit [--size 1024] [--engines numba,tensorflow]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
from results import add_options, machine, publish

from distconv import kernels
from distconv.backend import is_gpu_array
from distconv.plan import METHOD_OPS, method_costs


def gpu_present() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no cupy, no driver, no device
        return False


def engine_inputs(engine: str, block: np.ndarray, weights: np.ndarray, factors):
    """Move the inputs to the device for GPU engines (once, outside the timing)."""
    if not kernels.is_gpu_engine(engine):
        return block, weights, factors
    import cupy

    return cupy.asarray(block), cupy.asarray(weights), [cupy.asarray(f) for f in factors]


def run_once(function, method, block, weights, factors) -> float:
    start = time.perf_counter()
    out = function(block, factors) if method == "separable" else function(block, weights)
    if is_gpu_array(out):  # CuPy: wait for the kernel, not just the launch
        import cupy

        cupy.cuda.get_current_stream().synchronize()
    return time.perf_counter() - start


# Kernel sizes the fit samples per method: direct spans the crossover with FFT (≈ 9-15), fft and
# separable the range where they are chosen.
FIT_CASES = {
    "direct": (3, 5, 7, 9, 11, 15, 21, 31),
    "fft": (3, 9, 31, 63),
    "separable": (3, 5, 9, 15, 31),
}


def work_units(method: str, k: int, size: int) -> float:
    """The unit of work :func:`distconv.plan.method_costs` charges, for a size² output."""
    pixels = float(size * size)
    if method == "direct":
        return k * k * pixels
    if method == "separable":
        return 2 * k * pixels
    padded = float((size + k - 1) ** 2)
    return 2 * padded * max(math.log2(padded), 1.0)


def fit_cost(samples: list[tuple[float, float, float]], pixel_term: bool) -> tuple[float, float]:
    """Least squares on relative errors of ``seconds = per_pixel * pixels + per_unit * work``
    (kernels span two orders of magnitude); fft's work barely varies, so it gets per_unit only."""
    pixels, work, seconds = (np.array(column) for column in zip(*samples))
    if not pixel_term:
        return 0.0, float(np.median(seconds / work))
    design = np.stack([pixels, work], axis=1) / seconds[:, None]
    (per_pixel, per_unit), *_ = np.linalg.lstsq(design, np.ones_like(seconds), rcond=None)
    return max(float(per_pixel), 0.0), float(per_unit)


def modelled(cost, pixels: float, work: float) -> float:
    per_pixel, per_unit = cost if isinstance(cost, tuple) else (0.0, cost)
    return per_pixel * pixels + per_unit * work


def fit(engines: list[str], size: int, repeats: int) -> None:
    """Time every engine's per-chunk functions and print fitted COST constants.

    The scipy engine is always timed too: the other engines' constants are rescaled by how far
    scipy's COST is from scipy's times in this run, so all engines share one scale however busy
    the machine is (only the ratios between methods and engines matter to the planner).
    """
    rng = np.random.default_rng(0)
    pixels = float(size * size)
    engines = ["scipy", *[e for e in engines if e != "scipy"]]
    samples: dict[str, dict[str, list]] = {e: {} for e in engines}
    print(f"{'case':>14} " + " ".join(f"{e + ' s':>14}" for e in engines), flush=True)
    for method, sizes in FIT_CASES.items():
        op = METHOD_OPS[method]
        for k in sizes:
            block = rng.standard_normal((size + k - 1,) * 2).astype(np.float32)
            lines = [rng.standard_normal(k).astype(np.float32) for _ in range(2)]
            weights = rng.standard_normal((k, k)).astype(np.float32)
            cells = []
            for engine in engines:
                if op not in kernels.ENGINES[engine].ops or not kernels.supports(
                    engine, op, 2, np.float32
                ):
                    cells.append(f"{'-':>14}")
                    continue
                function = kernels.get_op(engine, op)
                b, w, f = engine_inputs(engine, block, weights, lines)
                run_once(function, method, b, w, f)  # compile, trace, cache the spectrum
                seconds = min(run_once(function, method, b, w, f) for _ in range(repeats))
                samples[engine].setdefault(method, []).append(
                    (pixels, work_units(method, k, size), seconds)
                )
                cells.append(f"{seconds:14.4f}")
            print(f"{method + f' {k}x{k}':>14} " + " ".join(cells), flush=True)
    scipy_cost = kernels.ENGINES["scipy"].cost
    scale = float(
        np.median(
            [
                modelled(scipy_cost[m], p, w) / t
                for m, s in samples["scipy"].items()
                for p, w, t in s
            ]
        )
    )
    print(f"\nscipy's COST / scipy's times in this run: x{scale:.2f} (the machine's load)")
    for engine, by_method in samples.items():
        fitted = {
            m: tuple(float(f"{c * scale:.2g}") for c in fit_cost(s, m != "fft"))
            for m, s in by_method.items()
        }
        current = kernels.ENGINES[engine].cost
        print(f"{engine}: fitted COST = {fitted}\n{'':>{len(engine)}}  current     {current}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="output block side")
    add_options(parser, kernels="3,9,31,127", repeats=3, max_seconds=8.0)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--fit", action="store_true", help="fit and print each engine's COST instead of the table"
    )
    parser.add_argument("--engines", default=None, help="comma list [default: all usable]")
    args = parser.parse_args()

    engines = [
        e for e in kernels.installed_engines() if not kernels.is_gpu_engine(e) or gpu_present()
    ]
    if args.engines:
        engines = [e for e in args.engines.split(",") if e in engines]
    if args.fit:
        fit(engines, args.size, args.repeats)
        return
    rng = np.random.default_rng(0)
    rows, best = [], {}
    for k in (int(v) for v in args.kernels.split(",")):
        block = rng.random((args.size + k - 1,) * 2, dtype=np.float32)
        lines = [rng.standard_normal(k).astype(np.float32) for _ in range(2)]
        weights = np.multiply.outer(*lines)  # rank 1, so every method applies to it
        for method, op in METHOD_OPS.items():
            for engine in engines:
                if op not in kernels.ENGINES[engine].ops or not kernels.supports(
                    engine, op, 2, np.float32
                ):
                    continue
                estimate = method_costs(weights, (args.size,) * 2, {method: engine})[method]
                if estimate > args.max_seconds:
                    rows.append((k, method, engine, None, f"skipped (≈{estimate:.0f} s)"))
                    continue
                function = kernels.get_op(engine, op)
                b, w, f = engine_inputs(engine, block, weights, lines)
                run_once(function, method, b, w, f)  # warm-up: compile, trace, plan FFTs
                seconds = statistics.median(
                    run_once(function, method, b, w, f) for _ in range(args.repeats)
                )
                mpx = args.size**2 / seconds / 1e6
                rows.append((k, method, engine, mpx, f"{seconds * 1e3:.1f} ms"))
                print(f"k={k} {method} {engine}: {mpx:.1f} Mpx/s", flush=True)
                if mpx > best.get((k, method), ("", 0))[1]:
                    best[(k, method)] = (engine, mpx)

    text = [
        "## Engines, one chunk (benchmarks/engines.py)",
        "",
        f"{args.size}² float32 output block (input padded by the kernel), rank-1 random "
        f"kernels, median of {args.repeats} after a warm-up. Machine: {machine()}. GPU: "
        f"{'yes' if gpu_present() else 'none here'}.",
        f"Command: `python benchmarks/engines.py --size {args.size} "
        f"--kernel-sizes {args.kernels}`.",
        "",
        "| kernel | method | engine | Mpx/s | time | fastest for this cell |",
        "|---|---|---|---|---|---|",
    ]
    for k, method, engine, mpx, note in rows:
        fastest = "**yes**" if best.get((k, method), ("",))[0] == engine else ""
        text.append(
            f"| {k}×{k} | {method} | {engine} | "
            f"{'' if mpx is None else f'{mpx:.1f}'} | {note} | {fastest} |"
        )
    publish("engines", "\n".join(text), write=not args.no_write)


if __name__ == "__main__":
    main()
