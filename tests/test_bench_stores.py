"""benchmarks/stores.py runs end to end at a small size (the full size is the integrator's)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_the_stores_benchmark_runs_and_reports_every_route(tmp_path):
    env = {**os.environ, "DISTCONV_BENCH_RESULTS": str(tmp_path / "RESULTS.md")}
    done = subprocess.run(
        [sys.executable, "stores.py", "--size", "512", "--chunk", "64", "--levels", "3",
         "--repeats", "1", "--workdir", str(tmp_path)],
        cwd=BENCHMARKS, capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    written = (tmp_path / "RESULTS.md").read_text()
    for route in ("disk → disk", "S3 → S3", "one-pass pyramid (3 levels)", "ome-zarr-py"):
        assert route in written
    assert "One-pass pyramid:" in written and "<!-- stores:start -->" in written
