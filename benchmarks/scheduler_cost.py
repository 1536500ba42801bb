"""The distributed scheduler's cost per task on loopback, and planning at any size.

1. Scheduler: a ``distributed.LocalCluster`` of 2 single-threaded worker processes on
   127.0.0.1 runs graphs of N no-op tasks (two stages, like a tile's read and compute); the
   wall time from submission to the last task done, over the tasks, is what one task costs
   the scheduler when the work costs nothing. That sets ``distconv.max_tasks``.
2. Planning: metadata-only Zarr arrays (no chunk written) of 65,536 to 16.7 million stored
   chunks; each in a fresh process, the dry run's plan (``dc.plan_convolve(...).describe()``)
   and the graph of ``dc.convolve(dc.open(x), w)`` (built, not computed), with the peak RSS.

Section "scheduler-cost" of benchmarks/RESULTS.md.

    python benchmarks/scheduler_cost.py [--tasks 2000,10000,50000] [--repeats 1] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import machine, publish

# (side, stored chunk side): 65,536, 1,048,576 and 16,777,216 stored chunks of float32.
SIZES = ((32768, 128), (262144, 256), (1048576, 256))

# Run in a fresh interpreter per array: its peak RSS is the plan's or the graph's alone.
_PLAN_PROBE = """
import json, sys, time
import numpy as np
import distconv as dc
path, what = sys.argv[1], sys.argv[2]
w = np.ones((5, 5), np.float32) / 25
start = time.perf_counter()
if what == "plan":
    plan = dc.plan_convolve(dc.open(path), w)
    plan.describe()
    tasks = plan.tasks
else:
    y = dc.convolve(dc.open(path), w)
    tasks = y.npartitions
seconds = time.perf_counter() - start
# VmHWM, not ru_maxrss: Linux keeps the parent's peak in ru_maxrss across fork and exec.
status = open("/proc/self/status").read().split("VmHWM:")[1]
peak = int(status.split()[0]) * 1024
print(json.dumps({"seconds": seconds, "peak": peak, "tiles": tasks}))
"""


def noop(*_):
    """A task that does nothing: what is left is the scheduler's and the workers' overhead."""
    return None


def scheduler_seconds(client, tasks: int) -> float:
    """Seconds from submitting ``tasks`` no-op tasks (half reading, half depending on one read
    each) to the last one finished."""
    from distributed import wait

    half = tasks // 2
    graph: dict = {("read", i): (noop, i) for i in range(half)}
    graph.update({("compute", i): (noop, ("read", i)) for i in range(half)})
    keys = [("compute", i) for i in range(half)]
    start = time.perf_counter()
    futures = client.get(graph, keys, sync=False)
    wait(futures)
    seconds = time.perf_counter() - start
    del futures
    return seconds


def measure_scheduler(counts: list[int], repeats: int) -> dict[int, float]:
    """Median seconds per task for each task count, on 2 single-threaded worker processes."""
    from distributed import Client, LocalCluster

    per_task = {}
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        scheduler_seconds(client, 200)  # warm-up: imports and connections
        for n in counts:
            runs = [scheduler_seconds(client, n) / (2 * (n // 2)) for _ in range(repeats)]
            per_task[n] = statistics.median(runs)
    return per_task


def measure_plans(folder: Path) -> list[dict]:
    """Dry-run plan and graph build, each in its own process, per metadata-only array."""
    import zarr

    rows = []
    for side, chunk in SIZES:
        path = folder / f"x{side}.zarr"
        zarr.create_array(str(path), shape=(side, side), chunks=(chunk, chunk), dtype="float32")
        row = {"side": side, "chunk": chunk, "chunks": (side // chunk) ** 2}
        for what in ("plan", "graph"):
            done = subprocess.run(
                [sys.executable, "-c", _PLAN_PROBE, str(path), what],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "DASK_DISTCONV__PROGRESS": "False"},
            )
            row[what] = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
    return rows


def report(per_task: dict[int, float], plans: list[dict], command: str, load: float) -> str:
    from distconv.config import DEFAULTS

    cap = DEFAULTS["max_tasks"]
    steady = per_task[max(per_task)]  # the most tasks: least start-up in the figure
    lines = [
        "## Scheduler cost per task, and plans for any size (benchmarks/scheduler_cost.py)",
        "",
        f"Machine: {machine()}; 1-minute load {load:.1f} before the run.",
        f"Command: `{command}`.",
        "",
        "No-op tasks (half of them depending on one other, as a tile's compute on its read) on a "
        "`distributed.LocalCluster` of 2 single-threaded worker processes on 127.0.0.1, from "
        "submission to the last one done:",
        "",
        "| tasks | seconds | ms per task | tasks/s |",
        "|---|---|---|---|",
    ]
    for n, seconds in per_task.items():
        total = 2 * (n // 2)
        lines.append(
            f"| {total:,} | {seconds * total:.1f} | {seconds * 1e3:.2f} | {1 / seconds:,.0f} |"
        )
    lines += [
        "",
        f"The rule the planner follows (`distconv.max_tasks`, default {cap:,}): tiles grow past "
        f"the 16 MiB target until a job has at most {cap:,} tiles per stage, as long as a task "
        f"fits its memory budget. At {steady * 1e3:.2f} ms per task ({max(per_task):,} tasks "
        f"here), {cap:,} tiles of a convolve's ~4 tasks each (read, strips, haloed block and "
        f"compute, write) cost {4 * cap * steady / 60:.0f} minutes of scheduling whatever the "
        "tiles hold; a million tiles would cost ten times that, the workers waiting on the "
        "scheduler rather than the scheduler on them. Past the cap, a larger tile costs "
        "memory only, which the planner still checks (and keeps, saying so, when the two "
        "conflict).",
        "",
        "Planning (each in a fresh process; metadata-only arrays, no chunk written): the dry "
        "run's `dc.plan_convolve(...).describe()` and the graph of `dc.convolve(dc.open(x), w)`, "
        "built, not computed; 5×5 weights, this machine's resources (no cluster).",
        "",
        "| array | stored chunks | tiles | dry-run plan, s | peak RSS, MiB | graph, s "
        "| peak RSS, MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in plans:
        plan, graph = row["plan"], row["graph"]
        lines.append(
            f"| {row['side']}² in {row['chunk']}² | {row['chunks']:,} | {graph['tiles']:,} | "
            f"{plan['seconds']:.2f} | {plan['peak'] / 2**20:.0f} | {graph['seconds']:.2f} | "
            f"{graph['peak'] / 2**20:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="2000,10000,50000", help="task counts to time")
    parser.add_argument("--repeats", type=int, default=1, help="runs per task count (median)")
    parser.add_argument("--no-plans", action="store_true", help="skip the planning figures")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    counts = [int(n) for n in args.tasks.split(",")]
    per_task = measure_scheduler(counts, args.repeats)
    with tempfile.TemporaryDirectory(prefix="distconv-plans-") as folder:
        plans = [] if args.no_plans else measure_plans(Path(folder))
    command = "python benchmarks/scheduler_cost.py " + " ".join(argv or sys.argv[1:])
    publish("scheduler-cost", report(per_task, plans, command.strip(), load), not args.no_write)


if __name__ == "__main__":
    main()
