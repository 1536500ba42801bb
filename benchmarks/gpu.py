"""GPU rows: convolve and matmul with the GPU engines, when a CUDA device is visible.

Runs ``distconv bench convolve`` and ``distconv bench matmul`` (distconv.bench) with the GPU
engines installed here (cupy, numba-cuda) next to the CPU's scipy engine, one worker process per
GPU. Without a device the section says so and nothing runs. Section "gpu" of
benchmarks/RESULTS.md.

    python benchmarks/gpu.py [--size 8192] [--kernel-sizes 3,9,31,127] [--repeats 3]
                             [--output-dir distconv-bench/gpu] [--no-references] [--no-write]

``make gpu-check`` (benchmarks/gpu_check.py) runs it at a smaller size next to the GPU tests.
"""

from __future__ import annotations

import argparse
import sys

from results import add_options, machine, publish, read_section, write_section

from distconv import bench, kernels
from distconv.clusters.resources import gpu_count


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(parser, size=8192, kernels="3,9,31,127", repeats=3, max_seconds=600.0)
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    parser.add_argument(
        "--output-dir", default="distconv-bench/gpu", help="JSON and PNG charts go here"
    )
    parser.add_argument(
        "--no-references",
        action="store_true",
        help="time distconv's engines only (no dask-image or in-memory SciPy rows)",
    )
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
        # A GPU-less `make bench` keeps the tables a lent GPU machine recorded.
        publish("gpu", text, write=not args.no_write and not _recorded_on_a_gpu())
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
        f"--repeats {args.repeats}{' --no-references' if args.no_references else ''}`; "
        f"{devices} GPU(s), one worker process per GPU.",
        "",
    ]
    convolve = bench.run(
        "convolve",
        size=args.size,
        engines=["scipy", *engines],
        kernels=[int(k) for k in args.kernels.split(",")],
        repeats=args.repeats,
        max_seconds=args.max_seconds,
        references=not args.no_references,
        log=log,
        **where,
    )
    matmul_engines = [e for e in engines if "matmul" in kernels.ENGINES[e].ops]
    matmul = bench.run(
        "matmul",
        size=args.size,
        engines=["scipy", *matmul_engines],
        repeats=args.repeats,
        references=not args.no_references,
        log=log,
        **where,
    )
    for result in (convolve, matmul):
        bench.print_table(result)
        try:
            bench.write_outputs(result, args.output_dir)  # the JSON first, then the chart
        except ImportError as error:  # no matplotlib on this machine: the JSON alone
            log(f"no chart for {result.benchmark}: {error}")
        sections += [f"### {result.benchmark}", "", bench.markdown(result), ""]
    text = "\n".join(sections)
    if not args.no_write:
        write_section("gpu", text)


def _recorded_on_a_gpu() -> bool:
    """Whether RESULTS.md's GPU section holds a device's measurements (not a skip line)."""
    section = read_section("gpu")
    return section is not None and "Skipped on this machine" not in section


if __name__ == "__main__":
    main()
