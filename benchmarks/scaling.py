"""Speed-up of a Zarr → Zarr convolve from 1 to 2 worker processes (target ≥ 1.8×).

Both LocalClusters (1 and 2 single-threaded workers) are started once and the runs alternate
between them on the same seeded input, each repeat reversing the order; medians of the repeats.
The Zarr → Zarr copy is timed the same way, as the I/O part's own scaling. Section "scaling" of
benchmarks/RESULTS.md.

    python benchmarks/scaling.py [--size 8192] [--kernel-sizes 3,31] [--chunk 2048] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from pathlib import Path

import dask
import dask.array as da
from results import add_options, machine, publish

import distconv as dc
from distconv.bench.common import Contender, fresh, make_input, run_alternating
from distconv.bench.convolve import kernel_for

TARGET = 1.8


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(parser, size=8192, chunk=2048, kernels="3,31", engine="auto", repeats=3)
    parser.add_argument("--workers", default="1,2", help="worker counts to compare")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    load_before = os.getloadavg()[0]
    times: dict[tuple[str, int], float] = {}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="distconv-scaling-")))
        source = tmp / "input.zarr"
        make_input(source, args.size, args.chunk, seed=0)
        clients = {
            n: stack.enter_context(dc.cluster("local", workers=n, threads_per_worker=1, quiet=True))
            for n in counts
        }

        def on(client, function):
            def run():
                # distconv.save finds the current client; dask's own compute the scheduler.
                with client.as_current(), dask.config.set(scheduler=client):
                    function()

            return run

        contenders = []
        for n, client in clients.items():
            contenders.append(
                Contender(
                    f"copy|{n}",
                    on(
                        client,
                        lambda n=n: da.from_zarr(str(source)).to_zarr(
                            fresh(tmp / f"copy-{n}.zarr"), compute=True
                        ),
                    ),
                    kind="floor",
                )
            )
            for k in (int(v) for v in args.kernels.split(",")):
                kernel = kernel_for(k)
                contenders.append(
                    Contender(
                        f"{k}|{n}",
                        on(
                            client,
                            lambda n=n, kernel=kernel: dc.save(
                                dc.convolve(dc.open(source), kernel, engine=args.engine),
                                fresh(tmp / f"out-{n}.zarr"),
                                progress=False,
                            ),
                        ),
                    )
                )
        run_alternating(contenders, args.repeats, log=lambda line: print(line, flush=True))
        for contender in contenders:
            what, n = contender.name.split("|")
            times[(what, int(n))] = contender.seconds

    base, top = counts[0], counts[-1]
    lines = [
        "## Scaling, 1 → 2 worker processes (benchmarks/scaling.py)",
        "",
        f"{args.size}² float32, Zarr chunks {args.chunk}², engine {args.engine}; LocalClusters of "
        f"{' and '.join(map(str, counts))} single-threaded worker(s) started side by side, runs "
        f"alternating, median of {args.repeats}. Machine: {machine()}; 1-minute load "
        f"{load_before:.1f} before the run.",
        f"Command: `python benchmarks/scaling.py --size {args.size} --chunk {args.chunk} "
        f"--kernel-sizes {args.kernels} --repeats {args.repeats}`.",
        "",
        "| run | "
        + " | ".join(f"{n} worker(s), s" for n in counts)
        + f" | speed-up {base} → {top} |",
        "|---|" + "---|" * len(counts) + "---|",
    ]
    verdicts = []
    for what in dict.fromkeys(w for w, _ in times):
        label = "Zarr→Zarr copy" if what == "copy" else f"convolve {what}×{what}"
        speedup = times[(what, base)] / times[(what, top)]
        lines.append(
            f"| {label} | "
            + " | ".join(f"{times[(what, n)]:.2f}" for n in counts)
            + f" | {speedup:.2f}× |"
        )
        if what != "copy":
            verdicts.append(f"{label} {speedup:.2f}×")
    worst = min(times[(w, base)] / times[(w, top)] for w, _ in times if w != "copy")
    lines += [
        "",
        f"Target ≥ {TARGET}× from {base} to {top} workers: "
        f"{'met' if worst >= TARGET else 'not met'} ({', '.join(verdicts)}). "
        f"{os.cpu_count()} cores here, shared with whatever else runs: the speed-up is "
        "bounded by the cores the two workers actually get.",
    ]
    publish("scaling", "\n".join(lines), write=not args.no_write)
    return times


if __name__ == "__main__":
    main()
