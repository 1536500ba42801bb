"""``distconv bench``: the command runs end to end with tiny sizes (table rows, JSON, PNG)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from distconv.bench.common import Contender, PeakMemory, run_alternating

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _distconv(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "DASK_DISTCONV__PROGRESS": "False"}
    return subprocess.run(
        [sys.executable, "-m", "distconv.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_bench_convolve_smoke(tmp_path):
    out = tmp_path / "results"
    done = _distconv(
        "bench",
        "convolve",
        "--size",
        "192",
        "--chunk",
        "64",
        "--kernels",
        "3,9",
        "--engines",
        "scipy",
        "--repeats",
        "1",
        "--workers",
        "1",
        "--output-dir",
        str(out),
        "--workdir",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads((out / "bench-convolve.json").read_text())
    assert data["benchmark"] == "convolve" and data["setup"]["size"] == 192
    rows = {(r["group"], r["contender"]): r for r in data["rows"]}
    copies = [r for r in data["rows"] if r["group"] == "copy"]
    floor = next(r for r in copies if r["kind"] == "floor")
    assert floor["contender"].startswith("best copy") and floor["vs_floor"] == 1.0
    assert len(floor["runs"]) == 1
    dask_copy = rows[("copy", "dask from_zarr → to_zarr")]
    identity = rows[("copy", "distconv identity (open → save)")]
    assert identity["vs_reference"] == pytest.approx(identity["seconds"] / dask_copy["seconds"])
    for k in ("3×3", "9×9"):
        ours = rows[(k, "distconv scipy")]
        assert ours["seconds"] > 0 and ours["rate"] == pytest.approx(
            192 * 192 / 1e6 / ours["seconds"]
        )
        assert ours["vs_floor"] == pytest.approx(ours["seconds"] / floor["seconds"])
        assert ours["error"] < 1e-5  # the output really is scipy.ndimage.convolve's
        assert ours["method"] in ("direct", "fft", "separable") and ours["engine"] == "scipy"
        assert f"{k}" in done.stdout
    # The table printed every row of the JSON, with the ratio columns.
    assert done.stdout.count("distconv scipy") == 2 and "× best copy" in done.stdout
    png = (out / "bench-convolve.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5000
    assert not any(p.name.endswith(".zarr") for p in tmp_path.iterdir())  # scratch removed


def test_bench_convolve_chunkings_and_volumes_in_process(tmp_path):
    """Several stored chunkings of one image, and a uint16 volume in 8³ and 16³ chunks: every
    group has the copies and distconv, ratios against the best copy of its chunking."""
    from distconv import bench

    for options in (
        {"size": 128, "chunks": [16, 32], "kernels": [3]},
        {"size": 32, "chunks": [8, 16], "kernels": [3], "ndim": 3, "dtype": "uint16"},
    ):
        result = bench.run(
            "convolve",
            engines=["scipy"],
            repeats=1,
            cluster="threads",
            workdir=tmp_path,
            max_seconds=60,
            **options,
        )
        power = "³" if options.get("ndim") == 3 else "²"
        kernel = "×".join(["3"] * options.get("ndim", 2))
        for side in options["chunks"]:
            rows = {r.contender: r for r in result.rows if r.group.endswith(f"@{side}{power}")}
            floor = next(r for r in rows.values() if r.kind == "floor")
            ours = rows["distconv scipy"]
            assert ours.group == f"{kernel} @{side}{power}"
            assert ours.vs_floor == pytest.approx(ours.seconds / floor.seconds)
            assert ours.error < 1e-5 and rows["distconv identity (open → save)"].seconds > 0
            assert "dask-image" in rows and "dask from_zarr → to_zarr" in rows
        assert f"Zarr chunks {options['chunks'][0]}{power}" in bench.markdown(result)


def test_bench_matmul_in_process_threads(tmp_path):
    from distconv import bench

    result = bench.run(
        "matmul",
        size=96,
        engines=["scipy"],
        chunk=32,
        repeats=1,
        cluster="threads",
        workdir=tmp_path,
    )
    names = [row.contender for row in result.rows]
    assert names == ["numpy.matmul, in memory", "distconv.matmul scipy", "dask.array.matmul"]
    ours = result.rows[1]
    assert ours.error < 1e-5 and ours.vs_floor > 0 and ours.vs_reference > 0
    json_path, png_path = bench.write_outputs(result, tmp_path / "out")
    assert json.loads(json_path.read_text())["rows"][1]["error"] == ours.error
    assert png_path.read_bytes().startswith(PNG_MAGIC)
    assert "| matmul | distconv.matmul scipy |" in bench.markdown(result)


@pytest.mark.parametrize(
    "args, message",
    [
        (["convolve", "--engines", "numba-foo"], "unknown engine"),
        (["convolve", "--kernels", "3,x"], "--kernels must be integers"),
        (["convolve", "--size", "16", "--kernels", "31"], "larger than the image"),
        (["matmul", "--engines", "numba"], "cannot matmul"),
    ],
)
def test_bench_bad_arguments_one_line_exit_2_nothing_written(tmp_path, capsys, args, message):
    from distconv.cli import main

    out = tmp_path / "results"
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *args, "--output-dir", str(out)])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert message in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_contenders_alternate_after_one_warm_up():
    calls: list[str] = []
    contenders = [Contender(name, (lambda name=name: calls.append(name))) for name in "abc"]
    contenders.append(Contender("skipped", lambda: calls.append("skipped"), skip="too slow"))
    run_alternating(contenders, repeats=3)
    assert calls == list("abc") + list("abc") + list("cba") + list("abc")
    assert all(len(c.runs) == 3 for c in contenders[:3]) and contenders[3].runs == []
    assert contenders[0].seconds == float(np.median(contenders[0].runs))


def test_contenders_warm_up_once_per_run():
    calls: list[str] = []
    warmed: set[str] = set()
    for _ in range(2):  # two kernel sizes: the second one needs no warm-up
        contenders = [Contender(name, (lambda name=name: calls.append(name))) for name in "ab"]
        run_alternating(contenders, repeats=1, warmed=warmed)
    assert calls == list("ab") + list("ab") + list("ab") and warmed == {"a", "b"}


def test_halo_source_benchmark_times_both_sources(tmp_path):
    """benchmarks/halo_source.py at a tiny size: both halo sources run and are timed."""
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "halo_source.py")
    done = subprocess.run(
        [
            sys.executable,
            script,
            "--size",
            "256",
            "--chunk",
            "64",
            "--kernel",
            "3",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "exchange" in done.stdout and "store / exchange" in done.stdout


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux /proc only")
def test_peak_memory_reads_the_kernels_peak_that_sampling_misses():
    """A 256 MiB array held for a moment between two samples: the sampler sees nothing, the
    kernel's high-water mark (reset on entry, so earlier allocations do not count) sees it."""
    before = np.ones(2**29 // 8)  # a larger peak before the measurement starts
    del before
    with PeakMemory(interval=30) as memory:
        time.sleep(0.2)  # after the sampler's first (and only) sample
        held = np.ones(2**28 // 8)
        del held
    baseline = memory.timeline[0][1]
    assert memory.peak_process < baseline + 2**26
    assert memory.exact_process >= baseline + 2**28 - 2**24
    assert memory.exact_process < baseline + 2**28 + 2**26  # the earlier peak was reset
    assert memory.exact_total_bound >= memory.exact_process
