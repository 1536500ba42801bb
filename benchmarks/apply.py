"""distconv apply (a Keras U-Net, Zarr → Zarr) vs whole-image predict and dask map_overlap.

The same contenders as ``distconv bench apply`` (distconv.bench.apply): a seeded random
float32 size² image in chunk² Zarr chunks and a small U-Net saved as .keras; the model's own
``predict`` on the whole image in memory (the floor, the Zarr read not timed), distconv apply
Zarr → Zarr, and dask.array overlap + ``predict`` per chunk → to_zarr, alternating (warm-up,
median of repeats); each output's max relative difference to whole-image predict; each one's
peak memory in a fresh child process, distconv apply also at twice the side. Targets (issue):
≤ 1.5× whole-image predict, ≥ 2× faster than map_overlap, memory flat in the image size.
Results go to benchmarks/RESULTS.md (section "apply").

    python benchmarks/apply.py [--size 2048] [--chunk 256] [--repeats 3] [--no-write]
"""

from __future__ import annotations

import argparse

from results import add_options, publish

from distconv.bench import markdown
from distconv.bench.apply import DISTCONV, MAP_OVERLAP, PREDICT, run


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(parser, size=2048, chunk=256, repeats=3)
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    result = run(
        args.size, args.chunk, repeats=args.repeats, log=lambda line: print(line, flush=True)
    )
    rows = {(r.group, r.contender): r for r in result.rows}
    group = f"{args.size}²"
    predict, ours, dask_row = (rows[(group, n)] for n in (PREDICT, DISTCONV, MAP_OVERLAP))
    peaks = result.setup.get("peak_memory", {})
    base = peaks.get(f"{group} {DISTCONV}", {}).get("added")
    big = peaks.get(f"{2 * args.size}² {DISTCONV}", {}).get("added")
    ratio = ours.seconds / predict.seconds
    speedup = dask_row.seconds / ours.seconds
    verdicts = [
        f"* ≤ 1.5× whole-image predict: {ratio:.2f}× — "
        + ("met." if ratio <= 1.5 else "MISSED (the halo's extra work and the Zarr I/O)."),
        f"* ≥ 2× faster than map_overlap + predict per chunk: {speedup:.1f}× — "
        + ("met." if speedup >= 2 else "MISSED."),
        f"* equal to whole-image predict: max rel. difference {ours.error:.1e} (distconv), "
        f"{dask_row.error:.1e} (map_overlap).",
    ]
    if base and big:
        growth = big / base
        verdicts.append(
            f"* memory flat in the image size: distconv apply adds {big / 2**20:.0f} MiB at "
            f"{2 * args.size}² vs {base / 2**20:.0f} MiB at {args.size}² (4× the pixels: "
            f"{growth:.2f}×) — " + ("met." if growth < 1.5 else "MISSED.")
        )
    runs = "; ".join(
        f"{r.contender}: {', '.join(f'{t:.2f}' for t in r.runs)}" for r in (predict, ours, dask_row)
    )
    load = result.machine["load_average"][0]
    aligned = all(h % result.setup["stride"] == 0 for h in result.setup["halo"]) and (
        args.chunk % result.setup["stride"] == 0
    )
    caveats = [
        f"Runs (s): {runs}. The VM is shared (load average {load:.1f} on 2 cores when the run "
        "started): single runs vary by up to ±40 %; the medians and ratios are what to compare.",
        (
            "map_overlap equals whole-image predict here only because distconv's halo and the "
            "stored chunks are multiples of the U-Net's stride (4), so each overlapped block "
            "starts on the pooling grid."
            if aligned
            else "map_overlap's blocks here do not start on the U-Net's pooling grid (the halo "
            "or the chunks are off its stride), hence its difference above."
        )
        + " With a halo or chunks off the stride its pooling grid shifts and the result differs; "
        "distconv puts tiles on the stride whatever the stored chunks.",
    ]
    text = "\n".join(
        [
            "## apply: a Keras U-Net over a Zarr image (distconv apply)",
            "",
            f"`python benchmarks/apply.py --size {args.size} --chunk {args.chunk} "
            f"--repeats {args.repeats}` (the same as `distconv bench apply --size {args.size} "
            f"--chunk {args.chunk} --repeats {args.repeats}`); 2026-12-06, this 2-core VM.",
            "",
            markdown(result),
            "",
            *caveats,
            "",
            "Targets:",
            "",
            *verdicts,
        ]
    )
    publish("apply", text, not args.no_write)


if __name__ == "__main__":
    main()
