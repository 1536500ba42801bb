"""What every benchmark shares: seeded Zarr inputs, alternating timed runs, peak memory, machine.

The rules the numbers follow (issue 7): data is generated once per run (random, seeded, never
zeros) and written to Zarr on disk; every contender runs on that same data in the same process,
the contenders alternating within each repeat (a run right after a heavy one pays for its
clean-up, so the order is reversed every other repeat); each contender is warmed up once
(imports, compilation, page cache) and the median of the repeats is reported.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distconv.clusters.resources import gpu_count, worker_infos


def make_input(
    path: str | os.PathLike, size: int | tuple[int, ...], chunk: int, seed: int, dtype="float32"
) -> None:
    """Write a random array in [0.5, 1.5) (seeded, never zeros) to a new Zarr v3 array;
    integer dtypes get [1, 4096) (a 12-bit camera's range).

    Written strip by strip along the first axis, so a 32768² input never sits in memory.
    """
    import zarr

    shape = (size, size) if isinstance(size, int) else tuple(size)
    rng = np.random.default_rng(seed)
    array = zarr.create_array(
        str(path), shape=shape, chunks=tuple(min(chunk, s) for s in shape), dtype=dtype
    )
    for start in range(0, shape[0], chunk):
        rows = min(chunk, shape[0] - start)
        values = rng.random((rows, *shape[1:]), dtype=np.float32)
        if np.dtype(dtype).kind in "iu":
            values = 1 + values * 4095
        else:
            values += 0.5
        array[start : start + rows] = values.astype(dtype, copy=False)


def fresh(path: str | os.PathLike) -> str:
    """``path`` as a string, with whatever a previous run left there removed."""
    shutil.rmtree(path, ignore_errors=True)
    return str(path)


def timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


@dataclass
class Contender:
    """One thing to time. ``skip`` (a reason) keeps it in the table without running it."""

    name: str
    function: Callable[[], object] | None
    kind: str = "distconv"  # "distconv" | "floor" | "reference" | "baseline"
    engine: str = ""
    method: str = ""
    skip: str | None = None
    runs: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float | None:
        return statistics.median(self.runs) if self.runs else None


@dataclass
class Session:
    """What every contender of one benchmark run shares (:func:`distconv.bench.run` makes it)."""

    workdir: Path  # scratch directory: the inputs and the outputs are written here
    chunk: int  # Zarr chunk side
    repeats: int = 3  # timed runs per contender after one warm-up; the median is reported
    client: Any = None  # the distributed.Client the runs use (None: Dask's default scheduler)
    references: bool = True  # also time the reference tools
    log: Callable[[str], None] | None = None  # where each timed run's line goes

    @property
    def workers(self) -> int:
        """The cluster's worker processes (the cores without a cluster)."""
        if self.client is None:
            return os.cpu_count() or 1
        return len(worker_infos(self.client))

    def setup(self, size: int, engines: Sequence[str], **more: object) -> dict[str, object]:
        """What :attr:`Result.setup` records of the run; ``more`` goes after the dtype."""
        return {
            "size": size,
            "chunk": self.chunk,
            "dtype": "float32",
            **more,
            "engines": list(engines),
            "repeats": self.repeats,
            "workers": self.workers,
        }


def run_alternating(
    contenders: list[Contender],
    repeats: int,
    warmup: bool = True,
    log: Callable[[str], None] | None = None,
    warmed: set[str] | None = None,
) -> None:
    """Time every contender ``repeats`` times, in turn, after one warm-up run each.

    The order is reversed every other repeat so no contender always follows the same one, and
    every timed run starts with the previous runs' writes flushed (``os.sync``, not timed): a
    run that follows a Zarr writer otherwise shares the cores with its write-back (about 10 %
    slower on the 2-core CI machine).
    ``warmed``: names already warmed up earlier in this process (imports, compilation and the
    page cache do not depend on the kernel size), skipped here and added to as they warm up.
    """
    active = [c for c in contenders if c.skip is None and c.function is not None]
    if warmup:
        for contender in list(active):
            if warmed is not None and contender.name in warmed:
                continue
            try:
                contender.function()
            except Exception as error:  # one broken engine must not cost the others' rows
                contender.skip = f"failed: {type(error).__name__}: {str(error).splitlines()[0]}"
                active.remove(contender)
                if log:
                    log(f"{contender.name}: {contender.skip}")
                continue
            if warmed is not None:
                warmed.add(contender.name)
    for repeat in range(repeats):
        for contender in active if repeat % 2 == 0 else active[::-1]:
            flush_writes()
            contender.runs.append(timed(contender.function))
            if log:
                log(f"repeat {repeat + 1}/{repeats}: {contender.name}: {contender.runs[-1]:.2f} s")


def flush_writes() -> None:
    """Write dirty pages out now, so the next timed run does not pay for earlier writes."""
    if hasattr(os, "sync"):
        os.sync()


class PeakMemory:
    """Peak resident memory of this process and all its descendants (scheduler, workers).

    A thread samples ``psutil`` every ``interval`` seconds; ``peak_total`` is the largest sum
    over the process tree, ``peak_process`` the largest single process. ``timeline`` holds
    every sample as (seconds since start, the root's RSS, the largest descendant's RSS).

    Sampling misses peaks shorter than the interval, and a longer run takes more samples, so
    its sampled peak is higher without anything growing. On Linux the kernel's own high-water
    mark of each process (``VmHWM``, reset on entry through ``/proc/PID/clear_refs``) is read
    on exit as well: ``exact_process`` is the largest process's true peak and
    ``exact_total_bound`` the sum of every process's peak (at least the true total, since the
    processes need not peak at once). Both are None where ``/proc`` cannot do this.
    """

    def __init__(self, interval: float = 0.05, root: int | None = None):
        self.interval = interval
        self.root = root
        self.peak_total = 0
        self.peak_process = 0
        self.timeline: list[tuple[float, int, int]] = []
        self.exact_process: int | None = None
        self.exact_total_bound: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._reset_high_water_marks()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        marks = [_high_water_mark(pid) for pid in self._tree()]
        if self._marks_reset and marks and None not in marks:
            self.exact_process, self.exact_total_bound = max(marks), sum(marks)

    def _tree(self) -> list[int]:
        import psutil

        root = psutil.Process(self.root)
        return [root.pid, *(child.pid for child in root.children(recursive=True))]

    def _reset_high_water_marks(self) -> None:
        self._marks_reset = True
        for pid in self._tree():
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as handle:
                    handle.write("5")  # 5: reset the peak RSS to the current RSS (proc(5))
            except OSError:  # not Linux, or not allowed: the marks would date from start-up
                self._marks_reset = False

    def _sample(self) -> None:
        import psutil

        root = psutil.Process(self.root)
        start = time.perf_counter()
        while not self._stop.is_set():
            sizes = []
            for process in [root, *root.children(recursive=True)]:
                try:
                    sizes.append(process.memory_info().rss)
                except psutil.Error:  # a process that just ended
                    continue
            self.peak_total = max(self.peak_total, sum(sizes))
            self.peak_process = max(self.peak_process, max(sizes, default=0))
            if sizes:
                self.timeline.append((time.perf_counter() - start, sizes[0], max(sizes[1:] or [0])))
            self._stop.wait(self.interval)


def _high_water_mark(pid: int) -> int | None:
    """The kernel's peak resident set of ``pid`` in bytes (``VmHWM``), None if unreadable."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine() -> dict[str, object]:
    """CPU count, memory, OS, Python and key library versions, GPU, load and date."""
    import dask
    import scipy
    import zarr

    import distconv

    versions = {
        "distconv": distconv.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "dask": dask.__version__,
        "zarr": zarr.__version__,
    }
    for name in ("numba", "tensorflow", "cupy", "dask_image"):
        version = _installed_version(name)
        if version:
            versions[name] = version
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(memory, 1),
        "cpu": _cpu_model(),
        "os": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "versions": versions,
        "gpus": gpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def machine_text(info: dict[str, object]) -> str:
    """One line of :func:`machine` for tables and RESULTS.md."""
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    gpus = info["gpus"]
    return (
        f"{info['cores']} cores ({info['cpu']}), {info['memory_gib']:.0f} GiB, {info['os']}, "
        f"Python {info['python']}, {versions}; GPU: {gpus or 'none'}; "
        f"load {info['load_average'][0]:.1f}; {info['date']}"
    )


def _installed_version(module: str) -> str | None:
    from importlib import metadata

    names = {"dask_image": "dask-image", "tensorflow": "tensorflow-cpu"}
    for name in (names.get(module, module), module):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    if module == "tensorflow":
        try:
            return metadata.version("tensorflow")
        except metadata.PackageNotFoundError:
            return None
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
