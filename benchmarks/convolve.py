"""Zarr → Zarr convolution vs the copy floor and the reference tools, side by side in one run.

The same benchmark as ``distconv bench convolve`` (distconv.bench.convolve), plus the verdict on
the targets (k = 3 ≤ 1.3× the copy floor; every k from 5 to 127 ≤ 2×) and the section
"convolve" of benchmarks/RESULTS.md. JSON and the PNG chart go to --output-dir.

    python benchmarks/convolve.py [--size 8192] [--chunk 2048] [--kernel-sizes 3,9,31,127]
        [--engines scipy,numba,tensorflow] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys

from results import add_options, write_section

from distconv import bench
from distconv.bench.report import Result


def verdict(result: Result) -> list[str]:
    """Per kernel: the fastest distconv row against its target multiple of the copy floor."""
    lines = []
    for group in result.groups():
        k = int(group.split("×")[0])
        target = 1.3 if k <= 3 else 2.0
        rows = [
            r
            for r in result.rows
            if r.group == group and r.kind == "distconv" and r.vs_floor is not None
        ]
        if not rows:
            continue
        best = min(rows, key=lambda r: r.vs_floor)
        state = "met" if best.vs_floor <= target else "not met"
        auto = result.setup.get("auto_choice", {}).get(group, "?")
        lines.append(
            f"- {group}: target ≤ {target}× copy floor {state}: best "
            f"{best.contender} ({best.method}/{best.engine}) {best.vs_floor:.2f}×; "
            f'engine="auto" runs {auto}.'
        )
    return lines


def main(argv=None) -> Result:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(parser, size=8192, chunk=2048, kernels="3,9,31,127")
    parser.add_argument("--engines", default="scipy,numba,tensorflow")
    add_options(parser, repeats=3, max_seconds=30.0)
    parser.add_argument("--output-dir", default="distconv-bench")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    from distconv.cli.bench import check_engines

    engines = check_engines("convolve", args.engines)
    result = bench.run(
        "convolve",
        size=args.size,
        engines=engines,
        kernels=[int(k) for k in args.kernels.split(",")],
        chunk=args.chunk,
        repeats=args.repeats,
        max_seconds=args.max_seconds,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    command = (
        f"python benchmarks/convolve.py --size {args.size} --chunk {args.chunk} "
        f"--kernel-sizes {args.kernels} --engines {args.engines} --repeats {args.repeats}"
    )
    result.setup["command"] = command
    result.notes += ["Targets (fastest distconv engine per kernel):", "", *verdict(result)]
    bench.write_outputs(result, args.output_dir)
    bench.print_table(result)
    text = "\n".join(
        [
            "## Convolution, Zarr → Zarr (benchmarks/convolve.py, `distconv bench convolve`)",
            "",
            f"Command: `{command}`. Ratios: time / the Zarr → Zarr copy measured in the same run "
            "(× floor) and / dask-image, or in-memory SciPy where dask-image was skipped "
            "(× reference); max rel. error: a window across a chunk corner vs float64 SciPy.",
            "",
            bench.markdown(result),
        ]
    )
    if not args.no_write:
        write_section("convolve", text)
    return result


if __name__ == "__main__":
    main()
