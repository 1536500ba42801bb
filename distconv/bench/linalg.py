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
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from distconv.bench.common import Contender, fresh, make_input, run_alternating, timed
from distconv.bench.report import Result, Row
from distconv.clusters.resources import worker_infos


def make_operands(workdir: Path, size: int, chunk: int) -> tuple[Path, Path]:
    """Two seeded random size² float32 operands in [0.5, 1.5) on disk."""
    a_path, b_path = workdir / "a.zarr", workdir / "b.zarr"
    make_input(a_path, size, chunk, seed=1)
    make_input(b_path, size, chunk, seed=2)
    return a_path, b_path


def matmul_contenders(
    a_path: Path,
    b_path: Path,
    workdir: Path,
    engines: Sequence[str],
    memory: dict,
    references: bool = True,
) -> list[Contender]:
    """numpy.matmul in memory (floor), distconv.matmul per engine, dask.array.matmul."""
    import dask.array as da

    def numpy_matmul():
        np.matmul(*_in_memory(memory, a_path, b_path))

    found = [Contender("numpy.matmul, in memory", numpy_matmul, kind="floor", engine="BLAS")]
    found += _distconv_contenders("matmul", a_path, b_path, workdir / "c", engines)
    if references:

        def dask_matmul():
            da.matmul(da.from_zarr(str(a_path)), da.from_zarr(str(b_path))).to_zarr(
                fresh(workdir / "c-dask.zarr")
            )

        found.append(Contender("dask.array.matmul", dask_matmul, kind="reference"))
    return found


def multiply_contenders(
    a_path: Path,
    b_path: Path,
    workdir: Path,
    engines: Sequence[str],
    memory: dict,
    references: bool = True,
) -> list[Contender]:
    """Zarr → Zarr copy (floor), distconv.multiply per engine, dask.array a * b, NumPy."""
    import dask.array as da

    def copy():
        da.from_zarr(str(a_path)).to_zarr(fresh(workdir / "copy.zarr"))

    found = [Contender("Zarr→Zarr copy of A (floor)", copy, kind="floor")]
    found += _distconv_contenders("multiply", a_path, b_path, workdir / "m", engines)
    if references:

        def dask_multiply():
            (da.from_zarr(str(a_path)) * da.from_zarr(str(b_path))).to_zarr(
                fresh(workdir / "m-dask.zarr")
            )

        def numpy_multiply():
            np.multiply(*_in_memory(memory, a_path, b_path))

        found.append(Contender("dask.array a * b", dask_multiply, kind="reference"))
        found.append(Contender("numpy.multiply, in memory", numpy_multiply, kind="baseline"))
    return found


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


def bench_linalg(
    operation: str,
    size: int = 8192,
    engines: Sequence[str] = ("scipy",),
    *,
    chunk: int = 1024,
    repeats: int = 3,
    workdir: str | os.PathLike,
    client=None,
    references: bool = True,
    log: Callable[[str], None] | None = None,
) -> Result:
    """Time ``matmul`` or ``multiply`` of two size² float32 Zarr arrays per engine.

    Parameters are those of :func:`distconv.bench.convolve.bench_convolve`; the result's rate is
    GFLOP/s for matmul (2 n³) and million elements per second for multiply, and its floor is
    in-memory BLAS (matmul) or the Zarr → Zarr copy of one operand (multiply). The distconv
    outputs are checked against float64 NumPy.
    """
    import zarr

    workdir = Path(workdir)
    a_path, b_path = make_operands(workdir, size, chunk)
    workers = len(worker_infos(client)) if client is not None else (os.cpu_count() or 1)
    memory: dict = {}
    build = matmul_contenders if operation == "matmul" else multiply_contenders
    contenders = build(a_path, b_path, workdir, engines, memory, references)
    # matmul: GFLOP (2 n³); multiply: million elements (n²), its cost is memory, not FLOPs.
    work = 2.0 * size**3 / 1e9 if operation == "matmul" else size * size / 1e6
    result = Result(
        operation,
        unit="GFLOP/s" if operation == "matmul" else "Melem/s",
        work=work,
        floor_name="BLAS" if operation == "matmul" else "Zarr→Zarr copy",
        setup={
            "size": size,
            "chunk": chunk,
            "dtype": "float32",
            "engines": list(engines),
            "repeats": repeats,
            "workers": workers,
        },
    )
    run_alternating(contenders, repeats, log=log)
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
    floor = contenders[0].seconds
    chosen = next((c for c in contenders if c.kind == "reference" and c.seconds), None)
    result.references[operation] = chosen.name if chosen else None
    for contender in contenders:
        result.rows.append(
            Row.from_contender(
                operation,
                contender,
                floor=floor,
                reference=chosen.seconds if chosen else None,
                work=work,
                error=errors.get(contender.name),
            )
        )
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
