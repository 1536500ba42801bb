"""Where a Zarr → Zarr convolve spends its core-seconds, next to the Zarr → Zarr copy.

Everything runs in this process on Dask's synchronous scheduler (no scheduling, no transfers,
no waiting: only the work), timed in core-seconds (``time.process_time``, all threads, so
Zarr's own decode thread counts), which other jobs on a shared machine disturb far less than
wall time. The parts:

* read + decode: every chunk of ``dask.array.from_zarr(...)`` computed (none concatenated);
* encode + write: the copy (``from_zarr → to_zarr``) minus the read;
* halo (cutting the strips each chunk's neighbours need, and assembling every haloed block with
  its true edges padded: :mod:`distconv.ops.halo`) and the engine: cProfile of
  ``distconv.convolve(...)`` computed chunk by chunk, whose remainder is graph building and
  Python overhead.

A Zarr → Zarr convolve costs read + halo + engine + other + write; its ratio to the copy
is the best the distributed run can reach on fully busy cores. Section "profile" of
benchmarks/RESULTS.md.

    python benchmarks/profile_convolve.py [--size 8192] [--chunk 2048] [--kernel-sizes 3,9,31,127]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import time
from pathlib import Path

import dask
import dask.array as da
from results import add_options, machine, publish

import distconv as dc
from distconv.bench.common import fresh, make_input
from distconv.bench.convolve import kernel_for
from distconv.provenance import step_of

# part → does a profiled frame (file, function) belong to it (outermost frame counted).
PARTS = {
    "halo": lambda f, n: n in ("_cut_strips", "_assemble") and f.endswith("halo.py"),
    "engine": lambda f, n: n.startswith("correlate_") and "kernels" in f,
}


def compute_chunks(x: da.Array) -> None:
    """Compute every chunk of ``x`` and drop it: no concatenation into one array (the copy and
    the Zarr → Zarr convolve never build one either)."""
    dask.compute(*x.to_delayed().ravel(), scheduler="synchronous")


def core_seconds(function, repeats: int) -> float:
    """Smallest process time of ``repeats`` runs (after the caller's warm-up)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        function()
        best = min(best, time.process_time() - start)
    return best


def profiled_parts(function) -> dict[str, float]:
    """cProfile cumulative seconds per part (nested frames of the same part counted once)."""
    profile = cProfile.Profile(time.process_time)  # core-seconds, like the totals
    profile.runcall(function)
    stats = pstats.Stats(profile).stats
    parts = dict.fromkeys(PARTS, 0.0)
    for (file, _, name), (_, _, _, cumtime, callers) in stats.items():
        for part, match in PARTS.items():
            if match(file, name) and not any(match(cf, cn) for cf, _, cn in callers):
                parts[part] += cumtime
    return parts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(parser, size=8192, chunk=2048, kernels="3,9,31,127", engine="auto", repeats=3)
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="distconv-profile-") as tmp:
        tmp = Path(tmp)
        source = tmp / "input.zarr"
        make_input(source, args.size, args.chunk, seed=0)

        def read():
            compute_chunks(da.from_zarr(str(source)))

        def copy():
            da.from_zarr(str(source)).to_zarr(fresh(tmp / "copy.zarr"), compute=False).compute(
                scheduler="synchronous"
            )

        read(), copy()  # warm-up: page cache, imports
        read_s = core_seconds(read, args.repeats)
        copy_s = core_seconds(copy, args.repeats)
        write_s = max(copy_s - read_s, 0.0)
        for k in (int(v) for v in args.kernels.split(",")):
            kernel = kernel_for(k)
            y = dc.convolve(dc.open(source), kernel, engine=args.engine)

            def convolve(kernel=kernel):
                compute_chunks(dc.convolve(dc.open(source), kernel, engine=args.engine))

            convolve()  # warm-up: compilation, the weights' spectrum
            total = core_seconds(convolve, args.repeats)
            parts = profiled_parts(convolve)
            other = max(total - read_s - sum(parts.values()), 0.0)
            zarr_to_zarr = total + write_s
            record = step_of(y) or {}  # what the plan chose for full chunks
            rows.append(
                (
                    k,
                    f"{record.get('method', '?')}/{record.get('engine', '?')}",
                    total,
                    parts,
                    other,
                    zarr_to_zarr,
                    zarr_to_zarr / copy_s,
                )
            )

    lines = [
        "## Where convolve time goes (benchmarks/profile_convolve.py)",
        "",
        f"{args.size}² float32, Zarr chunks {args.chunk}², engine {args.engine}; Dask's "
        "synchronous scheduler in one process, core-seconds (process time, all threads, best of "
        f"{args.repeats}); the split inside the convolve is cProfile's. 1-minute load {load:.1f}. "
        f"Machine: {machine()}.",
        f"Command: `python benchmarks/profile_convolve.py --size {args.size} --chunk "
        f"{args.chunk} --kernel-sizes {args.kernels}`.",
        "",
        f"Zarr → Zarr copy: {copy_s:.2f} core-s = read + decode {read_s:.2f} + encode + write "
        f"{write_s:.2f}.",
        "",
        "| kernel | method/engine | read + decode | halo strips + blocks (with edge padding) "
        "| engine | other (graph, Python) | encode + write | Zarr → Zarr total | × copy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k, how, _total, parts, other, z2z, ratio in rows:
        lines.append(
            f"| {k}×{k} | {how} | {read_s:.2f} | {parts['halo']:.2f} | "
            f"{parts['engine']:.2f} | {other:.2f} | {write_s:.2f} "
            f"| {z2z:.2f} | {ratio:.2f} |"
        )
    lines += [
        "",
        "Read with the tables above: × copy here is the core-second ratio, the bound "
        "a distributed run on fully busy cores approaches; wall-time ratios above it are "
        "scheduling, halo transfers between workers and idle cores.",
    ]
    publish("profile", "\n".join(lines), write=not args.no_write)


if __name__ == "__main__":
    main()
