"""Every example runs, at its smallest size, as a user would run it, and its output is checked.

The scripts are started as subprocesses three at a time (most of their time is importing
TensorFlow or starting a cluster, not computing), once per test session; each test below checks
one script's exit code, its printed comparison with NumPy/SciPy and the Zarr it wrote.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import zarr

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# Smallest useful arguments per example (examples/demo.py is `make demo`, tested elsewhere).
ARGS = {
    "tf_matmul": ["--n", "128", "--chunk", "64"],
    "rgb_to_gray": ["--size", "128", "--chunk", "64"],
    "multiply_engines": ["--size", "32", "--chunk", "16"],
    "convolve_engines": ["--size", "128", "--chunk", "64", "--kernels", "5"],
    "pipeline": ["--size", "256", "--chunk", "128", "--workers", "1", "--check"],
    "multi_gpu": ["--size", "256", "--chunk", "128"],
    "deconvolve": ["--size", "192", "--chunk", "64", "--iterations", "15", "--check"],
    "xarray_pipeline": ["--size", "64", "--chunk", "32", "--iterations", "5", "--check"],
    "segment": ["--size", "256", "--chunk", "64"],
}
NEEDS = {
    "tf_matmul": "tensorflow",
    "rgb_to_gray": "tensorflow",
    "multiply_engines": "tensorflow",
    "convolve_engines": None,
    "pipeline": None,
    "multi_gpu": None,
    "deconvolve": None,
    "xarray_pipeline": "xarray",
    "segment": "tensorflow",
}


def test_every_example_is_covered():
    scripts = {p.stem for p in EXAMPLES.glob("*.py")} - {"demo"}
    assert scripts == set(ARGS), "add the new example to ARGS in tests/test_examples.py"


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """Run all examples (3 at once) into their own folders; {name: (completed, folder)}."""
    import importlib.util

    root = tmp_path_factory.mktemp("examples")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "DASK_DISTCONV__PROGRESS": "False"}
    env.pop("NUMBA_ENABLE_CUDASIM", None)  # multiply_engines decides for itself

    def run(name):
        needed = NEEDS[name]
        if needed and importlib.util.find_spec(needed) is None:
            return name, None, None
        folder = root / name
        proc = subprocess.run(
            [sys.executable, str(EXAMPLES / f"{name}.py"), *ARGS[name], "--out", str(folder)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        return name, proc, folder

    # The slowest (a cluster start, TensorFlow imports) first, so the pool ends together.
    order = [
        "pipeline",
        "segment",
        "convolve_engines",
        "multiply_engines",
        "tf_matmul",
        "rgb_to_gray",
        "multi_gpu",
        "deconvolve",
        "xarray_pipeline",
    ]
    with ThreadPoolExecutor(max_workers=3) as pool:
        return {name: (proc, folder) for name, proc, folder in pool.map(run, order)}


def _result(runs, name):
    proc, folder = runs[name]
    if proc is None:
        pytest.skip(f"{NEEDS[name]} is not installed")
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout, folder


def _number(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in output:\n{text}"
    return float(found.group(1))


def test_tf_matmul(runs):
    out, folder = _result(runs, "tf_matmul")
    assert _number(r"max \|error\| vs numpy float64: (\S+)", out) < 1e-3
    assert zarr.open_array(folder / "ab.zarr").shape == (128, 64)


def test_rgb_to_gray(runs):
    out, folder = _result(runs, "rgb_to_gray")
    assert "(128, 96, 3) uint8 -> (128, 96, 1) uint8" in out
    assert _number(r"max \|error\| on the first chunk: (\S+)", out) <= 1.0
    gray = zarr.open_array(folder / "gray.zarr")
    rgb = zarr.open_array(folder / "rgb.zarr")[:].astype(np.float64)
    np.testing.assert_allclose(gray[:, :, 0], rgb @ [0.2989, 0.5870, 0.1140], atol=1.0)


def test_multiply_engines(runs):
    out, folder = _result(runs, "multiply_engines")
    rows = {
        m.group(1): float(m.group(2))
        for m in re.finditer(
            r"^(numpy|tensorflow|numba-cuda)\s+\S+\s+\S+\s+(\S+)$", out, re.MULTILINE
        )
    }
    assert set(rows) == {"numpy", "tensorflow", "numba-cuda"}, out
    assert all(error < 1e-6 for error in rows.values()), out
    a, b = (zarr.open_array(folder / f"{n}.zarr")[:] for n in "ab")
    np.testing.assert_array_equal(zarr.open_array(folder / "numba-cuda.zarr")[:], a * b)


def test_convolve_engines(runs):
    out, _ = _result(runs, "convolve_engines")
    rows = re.findall(r"^\s+(\d+) (direct|fft)\s+(\S+)\s+\S+\s+\S+\s+(\S+)$", out, re.MULTILINE)
    engines = {engine for _, _, engine, _ in rows}
    assert {"scipy"} <= engines and len(rows) >= 4, out
    assert all(float(diff) < 1e-3 for *_, diff in rows), out


def test_pipeline(runs):
    out, folder = _result(runs, "pipeline")
    assert _number(r"check: (\S+) of pixels differ", out) < 1e-3
    mask = zarr.open_array(folder / "mask.zarr")
    assert mask.dtype == np.uint8 and mask.shape == (256, 256) and 0 < mask[:].sum() < 256**2
    steps = [s.get("function", s["operation"]) for s in mask.attrs["distconv"]["steps"]]
    assert steps[0] == "convolve" and steps[1].endswith("edge_magnitude")


def test_multi_gpu(runs):
    out, folder = _result(runs, "multi_gpu")
    # Either it ran on GPUs, or it said there are none and ran the CPU fallback.
    assert "GPU worker(s)" in out or ("No GPU cluster here" in out and "CPU engines" in out)
    result = zarr.open_array(folder / "gamma.zarr")
    assert result.shape == (256, 256) and result.attrs["distconv"]["complete"] is True
    assert np.all(result[:] >= 0)


def test_deconvolve(runs):
    out, folder = _result(runs, "deconvolve")
    blurred = _number(r"bead width: blurred (\S+) px", out)
    restored = _number(r"restored (\S+) px", out)
    assert restored < 0.9 * blurred, out  # the beads are sharper
    assert _number(r"max difference vs in-memory float64: (\S+)", out) < 1e-4
    result = zarr.open_array(folder / "restored.zarr")
    assert result.shape == (192, 192) and result.attrs["distconv"]["complete"] is True
    assert (folder / "deconvolve.png").stat().st_size > 10_000


def test_xarray_pipeline(runs):
    out, folder = _result(runs, "xarray_pipeline")
    assert _number(r"check: max relative difference vs in memory (\S+)", out) < 1e-5
    import xarray as xr

    back = xr.open_zarr(folder / "restored.zarr")["stack"]
    assert back.dims == ("z", "y", "x") and back.attrs["units"] == "photons"
    np.testing.assert_allclose(back.z.values, 0.5 * np.arange(8))


def test_segment(runs):
    out, folder = _result(runs, "segment")
    # Seeded training (4 epochs) reaches a Dice of about 0.92-0.94; 0.5 means it learned blobs.
    assert _number(r"dice vs the true mask: (\S+)", out) > 0.5, out
    import distconv as dc

    assert dc.info(folder / "blobs.prediction.zarr")["complete"] is True
    assert zarr.open_array(folder / "blobs.prediction.zarr").shape == (256, 256, 1)
    assert (folder / "blobs.keras").is_file()
    assert (folder / "segment.png").stat().st_size > 10_000
