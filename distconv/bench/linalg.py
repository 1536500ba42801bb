"""Zarr → Zarr matmul and multiply vs in-memory NumPy and dask.array, side by side in one run.

* matmul: ``numpy.matmul`` on the operands already in memory (BLAS on every core, no I/O: the
  floor), ``distconv.matmul`` per engine, ``dask.array.matmul`` (the reference), all Zarr → Zarr
  except the floor;
* multiply: the Zarr → Zarr copy of one operand (floor), ``distconv.multiply`` per engine,
  ``dask.array`` ``a * b`` (the reference), and ``numpy.multiply`` in memory.

The helpers below (task-stream profile, Zarr codec floor, per-task GEMM rate, verdict) are what
benchmarks/linalg.py reports in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import collections
import operator
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from distconv.bench.common import Contender, Session, fresh, make_input, run_alternating, timed
from distconv.bench.report import Result


def make_operands(workdir: Path, size: int, chunk: int) -> tuple[Path, Path]:
    """Two seeded random size² float32 operands in [0.5, 1.5) on disk."""
    a_path, b_path = workdir / "a.zarr", workdir / "b.zarr"
    make_input(a_path, size, chunk, seed=1)
    make_input(b_path, size, chunk, seed=2)
    return a_path, b_path


def linalg_contenders(
    operation: str,
    a_path: Path,
    b_path: Path,
    workdir: Path,
    engines: Sequence[str],
    memory: dict,
    references: bool = True,
) -> list[Contender]:
    """The floor, ``distconv.<operation>`` per engine and, with ``references``, the others.

    matmul: numpy.matmul in memory (the floor), then dask.array.matmul; multiply: the
    Zarr → Zarr copy of A (the floor), then dask.array ``a * b`` and numpy.multiply in memory.
    ``memory`` keeps the operands read for the in-memory runs (:func:`_in_memory`).
    """
    import dask.array as da

    def in_memory(function: Callable) -> Callable[[], object]:
        return lambda: function(*_in_memory(memory, a_path, b_path))

    def dask_to_zarr(function: Callable, output: str) -> Callable[[], object]:
        a, b = str(a_path), str(b_path)
        return lambda: function(da.from_zarr(a), da.from_zarr(b)).to_zarr(fresh(workdir / output))

    if operation == "matmul":
        floor = Contender(
            "numpy.matmul, in memory", in_memory(np.matmul), kind="floor", engine="BLAS"
        )
        others = [
            Contender("dask.array.matmul", dask_to_zarr(da.matmul, "c-dask.zarr"), kind="reference")
        ]
    else:

        def copy():
            da.from_zarr(str(a_path)).to_zarr(fresh(workdir / "copy.zarr"))

        floor = Contender("Zarr→Zarr copy of A (floor)", copy, kind="floor")
        others = [
            Contender(
                "dask.array a * b", dask_to_zarr(operator.mul, "m-dask.zarr"), kind="reference"
            ),
            Contender("numpy.multiply, in memory", in_memory(np.multiply), kind="baseline"),
        ]
    prefix = workdir / ("c" if operation == "matmul" else "m")
    found = [floor, *_distconv_contenders(operation, a_path, b_path, prefix, engines)]
    return found + others if references else found


def _in_memory(memory: dict, a_path: Path, b_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The operands as NumPy arrays, read once (by the warm-up, outside the timed runs)."""
    import zarr

    if "a" not in memory:
        memory["a"] = zarr.open_array(str(a_path))[:]
        memory["b"] = zarr.open_array(str(b_path))[:]
    return memory["a"], memory["b"]


def _distconv_contenders(
    operation: str, a_path: Path, b_path: Path, output_stem: Path, engines: Sequence[str]
) -> list[Contender]:
    """``distconv.<operation>`` Zarr → Zarr, one contender per engine."""
    import distconv as dc

    function = getattr(dc, operation)

    def contender(engine: str) -> Contender:
        def run():
            dc.save(
                function(dc.open(a_path), dc.open(b_path), engine=engine),
                fresh(Path(f"{output_stem}-{engine}.zarr")),
                progress=False,
            )

        return Contender(f"distconv.{operation} {engine}", run, engine=engine)

    return [contender(engine) for engine in engines]


def bench_linalg(operation: str, size: int, engines: Sequence[str], session: Session) -> Result:
    """Time ``matmul`` or ``multiply`` of two size² float32 Zarr arrays per engine.

    Parameters are those of :func:`distconv.bench.run` (``operation`` its ``benchmark``); the
    result's rate is GFLOP/s for matmul (2 n³) and million elements per second for multiply,
    and its floor is in-memory BLAS (matmul) or the Zarr → Zarr copy of one operand (multiply).
    The distconv outputs are checked against float64 NumPy.
    """
    import zarr

    workdir = session.workdir
    a_path, b_path = make_operands(workdir, size, session.chunk)
    memory: dict = {}
    contenders = linalg_contenders(
        operation, a_path, b_path, workdir, engines, memory, session.references
    )
    # matmul: GFLOP (2 n³); multiply: million elements (n²), its cost is memory, not FLOPs.
    work = 2.0 * size**3 / 1e9 if operation == "matmul" else size * size / 1e6
    result = Result(
        operation,
        unit="GFLOP/s" if operation == "matmul" else "Melem/s",
        work=work,
        floor_name="BLAS" if operation == "matmul" else "Zarr→Zarr copy",
        setup=session.setup(size, engines),
    )
    run_alternating(contenders, session.repeats, log=session.log)
    a = zarr.open_array(str(a_path))[:].astype(np.float64)
    b = zarr.open_array(str(b_path))[:].astype(np.float64)
    expected = a @ b if operation == "matmul" else a * b
    del a, b
    memory.clear()
    errors = {}
    prefix = "c" if operation == "matmul" else "m"
    for engine in engines:
        got = zarr.open_array(str(workdir / f"{prefix}-{engine}.zarr"))[:]
        errors[f"distconv.{operation} {engine}"] = float(
            np.abs(got - expected).max() / np.abs(expected).max()
        )
    del expected
    chosen = next((c for c in contenders if c.kind == "reference" and c.seconds), None)
    result.add_group(operation, contenders, chosen, errors)
    return result


# --- What benchmarks/linalg.py adds for RESULTS.md: where the time goes. ---------------------


def profile(client, function) -> tuple[float, dict[str, float]]:
    """Wall seconds and the seconds workers spent per task kind (compute and transfer)."""
    from distributed import get_task_stream

    with get_task_stream(client) as stream:
        seconds = timed(function)
    spent: dict[str, float] = collections.Counter()
    for task in stream.data:
        kind = task["key"][0] if isinstance(task["key"], tuple) else task["key"]
        kind = str(kind).rsplit("-", 1)[0]
        for part in task["startstops"]:
            action = part["action"]
            label = kind if action == "compute" else f"({action})"
            spent[label] += part["stop"] - part["start"]
    return seconds, dict(spent)


def profile_text(name: str, seconds: float, spent: dict[str, float], workers: int) -> str:
    total = workers * seconds
    busy = sorted(spent.items(), key=lambda item: -item[1])
    parts = ", ".join(f"{label} {value:.1f} s" for label, value in busy[:6])
    idle = max(0.0, total - sum(spent.values()))
    return (
        f"- {name}: {seconds:.1f} s wall × {workers} workers = {total:.1f} worker-s: "
        f"{parts}; idle/overhead {idle:.1f} s"
    )


def io_floor(
    a_path: Path, b_path: Path, product: np.ndarray, chunks, bytes_read: int, scratch: Path
) -> tuple[float, float]:
    """Core-seconds (all threads of this process) to decode what the plan reads, and to encode
    and write the product once, with the stores' codecs and the output's chunks."""
    import time

    import zarr

    start = time.process_time()
    inputs = zarr.open_array(str(a_path))[:].nbytes + zarr.open_array(str(b_path))[:].nbytes
    decode = (time.process_time() - start) * bytes_read / inputs
    target = zarr.create_array(
        fresh(scratch), shape=product.shape, chunks=chunks, dtype=product.dtype
    )
    start = time.process_time()
    target[:] = product
    return decode, time.process_time() - start


def task_gemm_rate(a: np.ndarray, b: np.ndarray, plan) -> float:
    """GFLOP/s of one matmul task's GEMM alone (its panels in memory, its BLAS threads)."""
    from threadpoolctl import threadpool_limits

    a_panel = np.ascontiguousarray(a[: plan.block_n, : plan.block_k])
    b_panel = np.ascontiguousarray(b[: plan.block_k, : plan.block_m])
    with threadpool_limits(limits=plan.blas_threads, user_api="blas"):
        seconds = timed(lambda: np.matmul(a_panel, b_panel))
    return 2.0 * a_panel.shape[0] * a_panel.shape[1] * b_panel.shape[1] / seconds / 1e9


def io_floor_percent(decode: float, encode: float, numpy_seconds: float) -> float:
    """The best Zarr → Zarr rate, in % of in-memory BLAS, when every core-second that is not
    GEMM goes to Zarr decode and encode (nothing else, no idle core)."""
    gemm = numpy_seconds * (os.cpu_count() or 1)
    return 100 * gemm / (gemm + decode + encode)


def floor_text(decode: float, encode: float, numpy_seconds: float) -> str:
    gemm = numpy_seconds * (os.cpu_count() or 1)
    return (
        f"- Zarr I/O alone (measured in this process): decoding the panels distconv's plan "
        f"reads costs {decode:.1f} core-s and encoding + writing the product "
        f"{encode:.1f} core-s, next to {gemm:.1f} core-s of GEMM (in-memory numpy.matmul "
        f"× {os.cpu_count()} cores). With every core busy, Zarr → Zarr can reach at most "
        f"{io_floor_percent(decode, encode, numpy_seconds):.0f} % of the in-memory rate "
        "here."
    )


def verdict_text(
    matmul_percent: float,
    floor_percent: float,
    dask_percent: float,
    multiply_ratio: float,
    gemm_percent: float,
) -> str:
    """What the numbers say about the targets (≥ 90 % of in-memory BLAS; multiply ≤ 1.05×)."""
    matmul = (
        f"Target ≥ 90 % of in-memory BLAS: {'met' if matmul_percent >= 90 else 'not met'}"
        f" ({matmul_percent:.0f} %; dask.array {dask_percent:.0f} %)."
    )
    if matmul_percent < 90:
        matmul += (
            f" The profile says why: one distconv task's GEMM alone (its panels, its BLAS "
            f"threads) runs at {gemm_percent:.0f} % of the in-memory per-core rate, but the "
            f"stores are zstd-compressed and the in-memory run decodes and encodes nothing. On "
            f"{os.cpu_count()} cores those codec core-seconds cannot hide behind the GEMM, so "
            f"the Zarr I/O floor above ({floor_percent:.0f} %) bounds any Zarr → Zarr matmul "
            + (
                f"here; distconv is {floor_percent - matmul_percent:.0f} points below it (task "
                "hand-over and the write tail in the task stream, and the other jobs on the "
                "machine)."
                if matmul_percent < floor_percent
                else "here, and distconv reaches it."
            )
        )
    multiply = (
        f"Target multiply ≤ 1.05× dask.array: "
        f"{'met' if multiply_ratio <= 1.05 else 'not met'} "
        f"({multiply_ratio:.2f}×, medians)."
    )
    return f"{matmul} {multiply}"
