"""Per-engine throughput on the same chunk: which library is fastest for each method and kernel.

Every engine installed here (GPU engines when a CUDA device is present) runs each method it
implements on the same padded float32 block, for kernels 3×3, 9×9, 31×31 and 127×127. Medians
of repeats after a warm-up (compilation, tracing). This table is the measured answer to
"NumPy/SciPy vs TensorFlow vs Numba for convolution" and sets ``CPU_PREFERENCE`` in
kernels/__init__.py. Results go to benchmarks/RESULTS.md (section "engines").

    python benchmarks/engines.py [--size 1024] [--kernels 3,9,31,127] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from distconv import kernels
from distconv.backend import is_gpu_array
from distconv.plan import METHOD_OPS, method_costs
from results import machine, write_section


def gpu_present() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no cupy, no driver, no device
        return False


def engine_inputs(engine: str, block: np.ndarray, weights: np.ndarray, factors):
    """Move the inputs to the device for GPU engines (once, outside the timing)."""
    if kernels.ENGINES[engine].device != "gpu":
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="output block side")
    parser.add_argument("--kernels", default="3,9,31,127")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=8.0,
                        help="skip a cell whose cost-model estimate exceeds this")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    engines = [e for e in kernels.installed_engines()
               if kernels.ENGINES[e].device == "cpu" or gpu_present()]
    rng = np.random.default_rng(0)
    rows, best = [], {}
    for k in (int(v) for v in args.kernels.split(",")):
        block = rng.random((args.size + k - 1,) * 2, dtype=np.float32)
        lines = [rng.standard_normal(k).astype(np.float32) for _ in range(2)]
        weights = np.multiply.outer(*lines)  # rank 1, so every method applies to it
        for method, op in METHOD_OPS.items():
            for engine in engines:
                if op not in kernels.ENGINES[engine].ops or \
                        not kernels.supports(engine, op, 2, np.float32):
                    continue
                estimate = method_costs(weights, (args.size,) * 2, {method: engine})[method]
                if estimate > args.max_seconds:
                    rows.append((k, method, engine, None, f"skipped (≈{estimate:.0f} s)"))
                    continue
                function = kernels.get_op(engine, op)
                b, w, f = engine_inputs(engine, block, weights, lines)
                run_once(function, method, b, w, f)  # warm-up: compile, trace, plan FFTs
                seconds = statistics.median(
                    run_once(function, method, b, w, f) for _ in range(args.repeats))
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
        f"Command: `python benchmarks/engines.py --size {args.size} --kernels {args.kernels}`.",
        "",
        "| kernel | method | engine | Mpx/s | time | fastest for this cell |",
        "|---|---|---|---|---|---|",
    ]
    for k, method, engine, mpx, note in rows:
        fastest = "**yes**" if best.get((k, method), ("",))[0] == engine else ""
        text.append(f"| {k}×{k} | {method} | {engine} | "
                    f"{'' if mpx is None else f'{mpx:.1f}'} | {note} | {fastest} |")
    text = "\n".join(text)
    print(text)
    if not args.no_write:
        write_section("engines", text)


if __name__ == "__main__":
    main()
