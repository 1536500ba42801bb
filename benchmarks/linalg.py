"""Zarr → Zarr matmul and multiply vs in-memory NumPy and dask.array, side by side in one run.

Defaults: 8192² float32 inputs in 1024² Zarr chunks (Zarr v3, default codecs), the embedded
LocalCluster (one single-threaded worker per core). Each repeat runs every contender once, in
turn, on the same data:

* matmul: ``numpy.matmul`` on the arrays already in memory (BLAS on every core; no I/O), then
  ``distconv.matmul`` Zarr → Zarr, then ``dask.array.matmul`` Zarr → Zarr (``to_zarr``);
* multiply: ``distconv.multiply`` and ``dask.array`` ``a * b``, both Zarr → Zarr.

Then one ``distconv.matmul`` of ``--peak-size``² (16384² by default) reports the peak memory of
the whole process tree (client + workers, sampled with psutil) next to the plan's estimate. The
task stream of one distconv and one dask.array matmul shows where the time goes. Results go to
benchmarks/RESULTS.md (section "linalg").

    python benchmarks/linalg.py [--size 8192] [--chunk 1024] [--repeats 2] [--peak-size 16384]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np
import zarr
from dask.utils import format_bytes
from results import add_options, machine, publish

import distconv as dc
from distconv.bench import cluster_text as describe_cluster
from distconv.bench.common import PeakMemory, flush_writes, fresh, make_input, timed
from distconv.bench.linalg import (
    floor_text,
    io_floor,
    io_floor_percent,
    linalg_contenders,
    profile,
    profile_text,
    task_gemm_rate,
    verdict_text,
)
from distconv.clusters.resources import worker_infos
from distconv.ops.matmul import plan_for


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(parser, size=8192, chunk=1024, repeats=2)
    parser.add_argument(
        "--peak-size",
        type=int,
        default=16384,
        help="size of the matmul whose peak memory is reported (0: skip)",
    )
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    n = args.size
    flops = 2.0 * n**3
    load_before = os.getloadavg()

    with (
        tempfile.TemporaryDirectory(prefix="distconv-linalg-") as tmp,
        dc.cluster("local", quiet=True) as client,
    ):
        tmp = Path(tmp)
        a_path, b_path = tmp / "a.zarr", tmp / "b.zarr"
        make_input(a_path, n, args.chunk, seed=1)
        make_input(b_path, n, args.chunk, seed=2)
        n_workers = len(worker_infos(client))
        cluster_text = "LocalCluster " + describe_cluster(client)
        # The in-memory operands, dropped once the error check is done (the 16384² run needs room).
        memory = {"a": zarr.open_array(str(a_path))[:], "b": zarr.open_array(str(b_path))[:]}
        plan = plan_for(dc.open(a_path), dc.open(b_path))
        gemm_rate = task_gemm_rate(memory["a"], memory["b"], plan)
        print(plan.describe(), flush=True)

        # The same contenders as `distconv bench matmul|multiply` (distconv.bench.linalg), with
        # distconv's own engine choice; their names here are those RESULTS.md has always used.
        names = {
            "numpy.matmul, in memory": "numpy.matmul, in memory",
            "distconv.matmul auto": "distconv.matmul, Zarr → Zarr",
            "dask.array.matmul": "dask.array.matmul, Zarr → Zarr",
            "distconv.multiply auto": "distconv.multiply, Zarr → Zarr",
            "dask.array a * b": "dask.array a * b, Zarr → Zarr",
        }
        contenders = [
            c
            for c in (
                *linalg_contenders("matmul", a_path, b_path, tmp, ["auto"], memory),
                *linalg_contenders("multiply", a_path, b_path, tmp, ["auto"], memory),
            )
            if c.name in names
        ]
        functions = {names[c.name]: c.function for c in contenders}
        matmuls = [names[c.name] for c in contenders if "matmul" in c.name]
        multiplies = [names[c.name] for c in contenders if "matmul" not in c.name]
        times: dict[str, list[float]] = {name: [] for name in functions}
        for repeat in range(args.repeats):
            # Alternate the order: a run right after a heavy one pays for its clean-up.
            order = (
                [*matmuls, *multiplies]
                if repeat % 2 == 0
                else [*reversed(matmuls), *reversed(multiplies)]
            )
            for name in order:
                flush_writes()
                times[name].append(timed(functions[name]))
                print(f"repeat {repeat}: {name}: {times[name][-1]:.2f} s", flush=True)

        expected = np.matmul(memory["a"].astype(np.float64), memory["b"].astype(np.float64))
        got = zarr.open_array(str(tmp / "c-auto.zarr"))[:]
        error = float(np.abs(got - expected).max() / np.abs(expected).max())
        del expected, got
        memory.clear()
        distconv_matmul = functions["distconv.matmul, Zarr → Zarr"]
        dask_matmul = functions["dask.array.matmul, Zarr → Zarr"]

        profiles = [
            profile_text(name, *profile(client, function), n_workers)
            for name, function in (
                ("distconv.matmul", distconv_matmul),
                ("dask.array.matmul", dask_matmul),
            )
        ]
        decode, encode = io_floor(
            a_path,
            b_path,
            zarr.open_array(str(tmp / "c-auto.zarr"))[:],
            plan.output_chunks,
            plan.bytes_read,
            tmp / "floor.zarr",
        )
        floor = io_floor_percent(decode, encode, min(times["numpy.matmul, in memory"]))
        profiles.append(floor_text(decode, encode, min(times["numpy.matmul, in memory"])))
        print("\n".join(profiles), flush=True)

        peak_lines = []
        if args.peak_size:
            size = args.peak_size
            a_big, b_big = tmp / "a_big.zarr", tmp / "b_big.zarr"
            for path in (
                a_path,
                b_path,
                tmp / "c-auto.zarr",
                tmp / "c-dask.zarr",
                tmp / "m-auto.zarr",
                tmp / "m-dask.zarr",
                tmp / "floor.zarr",
            ):
                shutil.rmtree(path, ignore_errors=True)
            make_input(a_big, size, args.chunk, seed=3)
            make_input(b_big, size, args.chunk, seed=4)
            big_plan = plan_for(dc.open(a_big), dc.open(b_big))
            with PeakMemory() as peak:
                seconds = timed(
                    lambda: dc.save(
                        dc.matmul(dc.open(a_big), dc.open(b_big)),
                        fresh(tmp / "c_big.zarr"),
                        progress=False,
                    )
                )
            peak_lines = [
                f"Peak memory of one {size}² float32 matmul (inputs {format_bytes(size * size * 4)}"
                f" each): process tree {format_bytes(peak.peak_total)}, largest single process "
                f"{format_bytes(peak.peak_process)}; the plan estimated "
                f"{format_bytes(big_plan.peak_task_bytes)} per task "
                f"(blocks n {big_plan.block_n}, k {big_plan.block_k}, m {big_plan.block_m}, "
                f"{big_plan.matmul_tasks} tasks); {seconds:.1f} s, "
                f"{2.0 * size**3 / seconds / 1e9:.1f} GFLOP/s.",
            ]

    load_after = os.getloadavg()
    # The machine is shared: other jobs only ever slow a run down, so the fastest of the repeats
    # is the best estimate of each contender's own speed (as timeit reports); medians are shown.
    best = {name: min(values) for name, values in times.items()}
    median = {name: statistics.median(values) for name, values in times.items()}
    blas = best["numpy.matmul, in memory"]
    lines = [
        "## Matmul and multiply, Zarr → Zarr (benchmarks/linalg.py)",
        "",
        f"{n}² float32, Zarr v3 chunks {args.chunk}² (default codecs), {cluster_text}. "
        f"Machine: {machine()}. The machine is shared (2 cores, other jobs were running): "
        "only ratios measured in the same run mean anything "
        f"(1-minute load average {load_before[0]:.1f} before, {load_after[0]:.1f} after).",
        f"Command: `python benchmarks/linalg.py --size {n} --chunk {args.chunk} "
        f"--repeats {args.repeats} --peak-size {args.peak_size}`. {args.repeats} run(s) of "
        "each, contenders in turn, each after the earlier runs' writes are flushed; matmul "
        "ratios use the fastest run of each, multiply ratios the medians.",
        "",
        f"distconv's plan: blocks n {plan.block_n}, k {plan.block_k}, m {plan.block_m} "
        f"({plan.k_panels} k panel(s)), {plan.matmul_tasks} matmul tasks, "
        f"{plan.blas_threads} BLAS thread(s) per task, peak {format_bytes(plan.peak_task_bytes)} "
        f"per task. Max relative error vs float64 NumPy: {error:.1e}.",
        "",
        "| matmul | best s | median s | GFLOP/s (best) | % of in-memory BLAS (best) | runs (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name in matmuls:
        lines.append(
            f"| {name} | {best[name]:.2f} | {median[name]:.2f} | "
            f"{flops / best[name] / 1e9:.1f} | {100 * blas / best[name]:.0f} % | "
            f"{', '.join(f'{t:.2f}' for t in times[name])} |"
        )
    # A multiply takes about a second, so one lucky or unlucky run moves its best a lot: its
    # verdict uses the medians (the best ratio is shown beside).
    reference = median["dask.array a * b, Zarr → Zarr"]
    best_reference = best["dask.array a * b, Zarr → Zarr"]
    lines += [
        "",
        "| multiply | best s | median s | × dask.array (median) | × dask.array (best) | runs (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name in multiplies:
        lines.append(
            f"| {name} | {best[name]:.2f} | {median[name]:.2f} | "
            f"{median[name] / reference:.2f} | {best[name] / best_reference:.2f} | "
            f"{', '.join(f'{t:.2f}' for t in times[name])} |"
        )
    lines += [
        "",
        "Where the time goes (task stream of one more run each; worker-seconds):",
        "",
        *profiles,
    ]
    if peak_lines:
        lines += ["", *peak_lines]
    lines += [
        "",
        verdict_text(
            100 * blas / best["distconv.matmul, Zarr → Zarr"],
            floor,
            100 * blas / best["dask.array.matmul, Zarr → Zarr"],
            median["distconv.multiply, Zarr → Zarr"] / reference,
            100 * gemm_rate * (os.cpu_count() or 1) / (flops / blas / 1e9),
        ),
    ]
    publish("linalg", "\n".join(lines), write=not args.no_write)


if __name__ == "__main__":
    main()
