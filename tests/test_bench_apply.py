"""``distconv bench apply``: end to end at a tiny size, the three contenders in the report and
distconv's output equal to the model's whole-image predict."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("tensorflow", reason="distconv bench apply runs a Keras model")

from distconv.bench.apply import DISTCONV, MAP_OVERLAP, PREDICT


def test_bench_apply_smoke(tmp_path):
    out = tmp_path / "results"
    env = {**os.environ, "DASK_DISTCONV__PROGRESS": "False", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, "-m", "distconv.cli", "bench", "apply", "--size", "128", "--chunk",
         "64", "--repeats", "1", "--no-memory", "--output-dir", str(out), "--workdir",
         str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((out / "bench-apply.json").read_text())
    assert data["benchmark"] == "apply" and data["setup"]["size"] == 128
    assert data["setup"]["chunk"] == 64 and data["setup"]["halo"]
    rows = {r["contender"]: r for r in data["rows"]}
    assert set(rows) == {PREDICT, DISTCONV, MAP_OVERLAP}
    assert rows[PREDICT]["vs_floor"] == 1.0
    assert all(r["seconds"] > 0 and len(r["runs"]) == 1 for r in rows.values())
    assert rows[DISTCONV]["error"] < 1e-5  # the same as the model's own whole-image predict
    assert rows[MAP_OVERLAP]["error"] is not None
    assert rows[DISTCONV]["vs_reference"] == pytest.approx(
        rows[DISTCONV]["seconds"] / rows[MAP_OVERLAP]["seconds"], rel=1e-3
    )
    for name in (PREDICT, DISTCONV, MAP_OVERLAP):
        assert name in done.stdout
    assert "× whole-image predict" in done.stdout
    assert (out / "bench-apply.png").read_bytes().startswith(b"\x89PNG")
    assert not any(p.name.endswith(".zarr") for p in tmp_path.iterdir())


def test_bench_apply_refuses_bad_sizes(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "distconv.cli", "bench", "apply", "--size", "64", "--chunk", "128"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "larger than the image" in done.stderr
