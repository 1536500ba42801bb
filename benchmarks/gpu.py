"""GPU rows: convolve and matmul with the GPU engines, when a CUDA device is visible.

Runs ``distconv bench convolve`` and ``distconv bench matmul`` (distconv.bench) with the GPU
engines installed here (cupy, numba-cuda) next to the CPU's scipy engine, one worker process per
GPU. Without a device the section says so and nothing runs. Section "gpu" of
benchmarks/RESULTS.md.

    python benchmarks/gpu.py [--size 8192] [--kernel-sizes 3,9,31,127] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys

from results import add_options, machine, publish, write_section

from distconv import bench, kernels
from distconv.clusters.resources import gpu_count


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(parser, size=8192, kernels="3,9,31,127", repeats=3)
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    devices = gpu_count()
    engines = [e for e in kernels.GPU_ENGINES if kernels.is_installed(e)]
    if not devices or not engines:
        text = (
            "## GPU engines (benchmarks/gpu.py)\n\nSkipped on this machine: "
            + (
                "no CUDA device is visible"
                if not devices
                else "no GPU engine is installed (pip install 'distconv[gpu]')"
            )
            + f". Machine: {machine()}."
        )
        publish("gpu", text, write=not args.no_write)
        return
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    # One worker per GPU: the "cuda" cluster (dask-cuda) when installed, else local workers.
    import importlib.util

    where = (
        {"cluster": "cuda"}
        if importlib.util.find_spec("dask_cuda")
        else {"cluster": "local", "workers": devices}
    )
    sections = [
        "## GPU engines (benchmarks/gpu.py)",
        "",
        f"Command: `python benchmarks/gpu.py --size {args.size} --kernel-sizes {args.kernels} "
        f"--repeats {args.repeats}`; {devices} GPU(s), one worker process per GPU.",
        "",
    ]
    convolve = bench.run(
        "convolve",
        size=args.size,
        engines=["scipy", *engines],
        kernels=[int(k) for k in args.kernels.split(",")],
        repeats=args.repeats,
        max_seconds=600.0,
        log=log,
        **where,
    )
    matmul_engines = [e for e in engines if "matmul" in kernels.ENGINES[e].ops]
    matmul = bench.run(
        "matmul",
        size=args.size,
        engines=["scipy", *matmul_engines],
        repeats=args.repeats,
        log=log,
        **where,
    )
    for result in (convolve, matmul):
        bench.print_table(result)
        bench.write_outputs(result, "distconv-bench/gpu")
        sections += [f"### {result.benchmark}", "", bench.markdown(result), ""]
    text = "\n".join(sections)
    if not args.no_write:
        write_section("gpu", text)


if __name__ == "__main__":
    main()
