"""``make gpu-check``: every GPU test and the GPU benchmark in one run, results in one folder.

    python benchmarks/gpu_check.py [--out gpu-check] [--budget 450] [--size 4096]
                                   [--kernel-sizes 3,9,31] [--repeats 2]

Uses only what is installed in this Python (it never runs pip, and needs no network): on a GPU
machine, CuPy (``cupy-cuda12x`` or ``cupy-cuda13x``, whichever provides the ``cupy`` module),
numba-cuda, and distconv's own dependencies. TensorFlow is optional: without it its tests skip,
each with its reason. When distconv is not installed in this Python, the source tree is put on
``PYTHONPATH`` through a folder of links that lays it out as installed (``kernels/`` as
``distconv.kernels``, ``clusters/`` as ``distconv.clusters``).

Steps, each in its own process and each cut at its share of ``--budget`` seconds (the whole
run stays under 8 minutes):

1. the environment: Python, packages and which wheel gives CuPy, ``nvidia-smi``, the devices
   CuPy and Numba see, ``distconv engines``;
2. ``pytest -m gpu`` over tests/ (CuPy and numba-cuda engines on the device, the ``cuda``
   cluster, GPU matmul and map_chunks), JUnit XML and log;
3. tests/test_numba_cuda_sim.py: the numba-cuda kernels and the public API under the CUDA
   simulator without CuPy, and the kernels compiled to PTX with this machine's NVVM;
4. benchmarks/gpu.py at ``--size`` (cupy and numba-cuda next to the scipy engine).

Written to ``--out``: ``results.md`` (the summary: what ran, passed, failed, skipped and why,
the benchmark tables), ``env.txt``, ``junit-gpu.xml``, ``pytest-gpu.log``, ``junit-sim.xml``,
``pytest-sim.log``, ``bench.log``, ``bench-results.md`` and the benchmark's JSON. The exit status
is 0 when nothing failed or ran out of time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOTAL_LIMIT = 480.0  # what the whole run must stay under (8 minutes)
SHARES = {"env": 0.06, "gpu": 0.42, "sim": 0.2, "bench": 0.32}  # of --budget

ENV_PROBE = r"""
import importlib.metadata as md, importlib.util, platform, sys
print("python", sys.version.split()[0], platform.platform())
dists = md.packages_distributions()
for module in ("distconv", "numpy", "scipy", "dask", "distributed", "zarr", "numba",
               "numba_cuda", "cupy", "dask_cuda", "rmm", "pynvml", "tensorflow", "pytest",
               "matplotlib"):
    if importlib.util.find_spec(module) is None:
        print(f"{module}: not installed")
        continue
    wheels = ", ".join(f"{d} {md.version(d)}" for d in sorted(set(dists.get(module, []))))
    print(f"{module}: {wheels or 'installed (source tree)'}")
try:
    import cupy
    count = cupy.cuda.runtime.getDeviceCount()
    version = cupy.cuda.runtime.runtimeGetVersion()
    print(f"cupy sees {count} device(s), CUDA runtime {version // 1000}.{version % 1000 // 10}")
    for index in range(count):
        props = cupy.cuda.runtime.getDeviceProperties(index)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        print(f"  {index}: {name}, sm {props['major']}.{props['minor']}, "
              f"{props['totalGlobalMem'] / 2**30:.0f} GiB")
    print("CUPY_DEVICES", count)
except Exception as error:
    print(f"cupy: no device ({type(error).__name__}: {error})")
    print("CUPY_DEVICES", 0)
from distconv.clusters.resources import gpu_count
print("NVML_DEVICES", gpu_count())
from distconv.cli import cli
cli.main(["engines"], standalone_mode=False)  # print the table without click's sys.exit
"""


def _layout_source_tree(out: Path, with_distconv: bool) -> Path:
    """A folder for ``PYTHONPATH``: ``tests`` (the tests import ``tests._images``) and, when
    ``with_distconv``, ``distconv`` as the source tree laid out as installed."""
    top = out / "_src"
    top.mkdir(parents=True, exist_ok=True)
    tests = top / "tests"
    if not tests.is_symlink():
        tests.symlink_to(ROOT / "tests")
    if not with_distconv:
        return top
    package = top / "distconv"
    package.mkdir(parents=True, exist_ok=True)
    links = {entry.name: entry for entry in (ROOT / "distconv").iterdir()}
    links.update({"kernels": ROOT / "kernels", "clusters": ROOT / "clusters"})
    for name, target in links.items():
        if name == "__pycache__":
            continue
        link = package / name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(target)
    return top


def _environment(out: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NUMBA_ENABLE_CUDASIM", None)  # the device tests need the real numba.cuda
    probe = subprocess.run(
        [sys.executable, "-c", "import distconv.kernels, distconv.clusters"],
        cwd=out,
        capture_output=True,
        text=True,
        env=env,
    )
    # Not installed here: use the source tree as it is.
    top = _layout_source_tree(out, with_distconv=probe.returncode != 0)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(top), env.get("PYTHONPATH")]))
    return env


class Step:
    """One command, its log, its time limit and how it ended."""

    def __init__(
        self, name: str, title: str, command: list[str], log: Path, shown: str | None = None
    ):
        self.name, self.title, self.command, self.log = name, title, command, log
        self.shown = shown or " ".join(command)  # the command line as the log's header shows it
        self.limit = 0.0
        self.seconds = 0.0
        self.status = "not run"
        self.returncode: int | None = None

    def run(self, env: dict[str, str]) -> None:
        start = time.monotonic()
        with open(self.log, "w") as handle:
            handle.write(f"$ {self.shown}\n\n")
            handle.flush()
            process = subprocess.Popen(
                self.command,
                # Not the source tree: `python -m` puts the working directory first on sys.path,
                # where its distconv/ (without kernels/ and clusters/) would hide the real one.
                cwd=self.log.parent,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                self.returncode = process.wait(timeout=max(1.0, self.limit))
                self.status = "ok" if self.returncode == 0 else f"failed (exit {self.returncode})"
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)  # the step's own process group: pytest and workers
                process.wait()
                self.status = f"timed out after {self.limit:.0f} s"
        self.seconds = time.monotonic() - start
        print(f"{self.title}: {self.status} ({self.seconds:.0f} s)", flush=True)


def _junit_summary(path: Path) -> list[str]:
    """Counts and the failed tests and skip reasons of a JUnit XML file, as Markdown lines."""
    if not path.exists():
        return ["no JUnit report was written (see the log)"]
    root = ElementTree.parse(path).getroot()
    counts, failed, skipped = Counter(), [], Counter()
    for case in root.iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
                message = (child.get("message") or "").splitlines()
                failed.append(f"- FAILED `{name}`: {message[0][:300] if message else ''}")
            elif child.tag == "skipped":
                outcome = "skipped"
                skipped[(child.get("message") or "").strip()[:300]] += 1
        counts[outcome] += 1
    lines = [
        f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped",
        "",
        *failed,
    ]
    if skipped:
        lines += ["", "Skipped, by reason:", ""]
        lines += [f"- {n} × {reason}" for reason, n in skipped.most_common()]
    return lines


def _tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(text[-lines:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-check", help="folder for results and logs")
    parser.add_argument(
        "--budget", type=float, default=450.0, help="seconds for all steps (at most 480)"
    )
    parser.add_argument("--size", type=int, default=4096, help="benchmark image side")
    parser.add_argument("--kernel-sizes", default="3,9,31", help="benchmark kernel sides")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per benchmark cell")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    budget = min(args.budget, TOTAL_LIMIT)
    started = time.monotonic()
    env = _environment(out)
    python = sys.executable
    steps = [
        Step(
            "env",
            "environment",
            [python, "-c", ENV_PROBE],
            out / "env.txt",
            "python -c <versions, devices, distconv engines>",
        ),
        Step(
            "gpu",
            "pytest -m gpu",
            [
                python,
                "-m",
                "pytest",
                "-m",
                "gpu",
                str(ROOT / "tests"),
                "-c",
                str(ROOT / "pyproject.toml"),
                "-rA",
                "-p",
                "no:cacheprovider",
                f"--junitxml={out / 'junit-gpu.xml'}",
            ],
            out / "pytest-gpu.log",
        ),
        Step(
            "sim",
            "numba-cuda under the CUDA simulator, and PTX",
            [
                python,
                "-m",
                "pytest",
                str(ROOT / "tests" / "test_numba_cuda_sim.py"),
                "-c",
                str(ROOT / "pyproject.toml"),
                "-rA",
                "-p",
                "no:cacheprovider",
                f"--junitxml={out / 'junit-sim.xml'}",
            ],
            out / "pytest-sim.log",
        ),
        Step(
            "bench",
            "benchmarks/gpu.py",
            [
                python,
                str(ROOT / "benchmarks" / "gpu.py"),
                "--size",
                str(args.size),
                "--kernel-sizes",
                args.kernel_sizes,
                "--repeats",
                str(args.repeats),
                "--no-references",
                "--max-seconds",
                "60",
                "--output-dir",
                str(out / "bench"),
            ],
            out / "bench.log",
        ),
    ]
    env["DISTCONV_BENCH_RESULTS"] = str(out / "bench-results.md")  # not benchmarks/RESULTS.md
    (out / "bench-results.md").unlink(missing_ok=True)
    for step in steps:
        left = budget - (time.monotonic() - started)
        step.limit = min(SHARES[step.name] * budget * 1.5, left)
        if step.limit < 5:
            step.status = "not run: out of time"
            continue
        step.run(env)
        if step.name == "env":
            _adopt_devices(step.log, env)
    text = _report(steps, out, time.monotonic() - started)
    (out / "results.md").write_text(text)
    print(f"results: {out / 'results.md'}")
    return 0 if all(s.status == "ok" for s in steps) else 1


def _adopt_devices(log: Path, env: dict[str, str]) -> None:
    """Without NVML (no pynvml) distconv counts no GPU; name CuPy's devices to the steps."""
    found = {}
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("CUPY_DEVICES", "NVML_DEVICES") and parts[1].isdigit():
            found[parts[0]] = int(parts[1])
    cupy_devices, nvml_devices = found.get("CUPY_DEVICES", 0), found.get("NVML_DEVICES", 0)
    if cupy_devices and not nvml_devices and "CUDA_VISIBLE_DEVICES" not in env:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(cupy_devices))
        with open(log, "a") as handle:
            handle.write(
                f"\nNVML sees no device but CuPy sees {cupy_devices}: "
                f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']} for the next steps\n"
            )


def _report(steps: list[Step], out: Path, seconds: float) -> str:
    lines = [
        "# distconv GPU check",
        "",
        f"`make gpu-check` ({Path(__file__).name}), {seconds:.0f} s in all; logs in this folder.",
        "",
        "| step | status | seconds | log |",
        "|---|---|---|---|",
    ]
    lines += [f"| {s.title} | {s.status} | {s.seconds:.0f} | `{s.log.name}` |" for s in steps]
    lines += ["", "## Environment", "", "```", _tail(out / "env.txt", 80), "```", ""]
    for name, title in (("gpu", "pytest -m gpu"), ("sim", "numba-cuda simulator and PTX")):
        lines += [f"## {title}", "", *_junit_summary(out / f"junit-{name}.xml"), ""]
        step = next(s for s in steps if s.name == name)
        if step.status != "ok":
            lines += ["Last lines of the log:", "", "```", _tail(step.log), "```", ""]
    lines += ["## Benchmark (benchmarks/gpu.py)", ""]
    bench_md = out / "bench-results.md"
    if bench_md.exists():  # the section benchmarks/gpu.py wrote, without the file's framing
        lines += [
            line
            for line in bench_md.read_text().splitlines()
            if not line.startswith(("<!--", "# Benchmark results"))
        ]
    else:
        lines.append("no benchmark results")
    bench = next(s for s in steps if s.name == "bench")
    if bench.status != "ok":
        lines += ["", "Last lines of the log:", "", "```", _tail(bench.log), "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
