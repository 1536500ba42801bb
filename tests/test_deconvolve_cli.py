"""``distconv deconvolve``: results, dry run, bad input, Ctrl-C and --resume of the passes.

Most cases run the command's entry point in this process (``--cluster threads``); Ctrl-C and
its resume run the real script in a subprocess.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr
from conftest import tree_digest
from scipy import ndimage

import distconv as dc
from distconv.cli import main

restoration = pytest.importorskip("skimage.restoration")
DISTCONV = os.path.join(os.path.dirname(sys.executable), "distconv")


def run(capsys, *args) -> tuple[int, str, str]:
    """``distconv ARGS`` in this process: (exit code, stdout, stderr)."""
    try:
        main([*map(str, args)])
        code = 0
    except SystemExit as exited:
        code = exited.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def relative(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deconvolve")
    rng = np.random.default_rng(0)
    truth = np.zeros((96, 80))
    truth[tuple(rng.integers(0, s, 60) for s in truth.shape)] = 100.0
    blurred = rng.poisson(ndimage.gaussian_filter(truth, 1.5) + 1.0).astype(np.float32)
    zarr.create_array(str(folder / "img.zarr"), shape=blurred.shape, chunks=(32, 40), dtype="f4")[
        :
    ] = blurred
    stack = rng.random((12, 20, 18), dtype=np.float32)
    zarr.create_array(str(folder / "stack.zarr"), shape=stack.shape, chunks=(6, 10, 9), dtype="f4")[
        :
    ] = stack
    negative = blurred.copy()
    negative[50, 60] = -3.0
    zarr.create_array(str(folder / "neg.zarr"), shape=negative.shape, chunks=(32, 32), dtype="f4")[
        :
    ] = negative
    psf = rng.random((5, 4)) + 0.1
    np.save(folder / "psf.npy", psf / psf.sum())
    np.save(folder / "nan.npy", np.array([[1.0, np.nan], [0.5, 0.5]]))
    np.save(folder / "inf.npy", np.array([[1.0, np.inf], [0.5, 0.5]]))
    np.save(folder / "zeros.npy", np.zeros((3, 3)))
    np.save(folder / "negative.npy", np.array([[0.5, -0.1], [0.3, 0.3]]))
    np.save(folder / "psf3d.npy", np.ones((3, 3, 3)) / 27)
    np.save(folder / "huge.npy", np.ones((97, 3)))
    os.makedirs(folder / "taken.zarr.scratch")
    (folder / "taken.zarr.scratch" / "notes.txt").write_text("mine")
    return folder


def test_richardson_lucy_tiles_passes_and_wiener_match_skimage(folder, tmp_path, capsys):
    image = zarr.open_array(str(folder / "img.zarr"))[:].astype(np.float64)
    psf = np.load(folder / "psf.npy")
    expected = restoration.richardson_lucy(image, psf, 15, clip=False)
    common = ["--iterations", 15, "--no-clip", "--mode", "constant", "--cluster", "threads"]
    code, out, err = run(capsys, "deconvolve", folder / "img.zarr", folder / "psf.npy",
                         "-o", tmp_path / "tiles.zarr", "--halo", "exact", *common)  # fmt: skip
    assert code == 0, err
    assert "strategy tiles (exact)" in out
    # A small memory budget leaves no room for the whole dependence halo: passes.
    code, out, err = run(capsys, "deconvolve", folder / "img.zarr", folder / "psf.npy",
                         "-o", tmp_path / "passes.zarr", "--halo", "exact",
                         "--memory-budget", "200KiB", *common)  # fmt: skip
    assert code == 0, err
    assert "strategy passes (exact)" in out
    assert not os.path.exists(tmp_path / "passes.zarr.scratch")  # removed once complete
    for name in ("tiles", "passes"):
        result = zarr.open_array(str(tmp_path / f"{name}.zarr"))
        assert result.chunks == (32, 40) and result.attrs["distconv"]["complete"]
        assert relative(result[:], expected) < 1e-4
        step = result.attrs["distconv"]["steps"][-1]
        assert step["strategy"] == name and step["parameters"]["iterations"] == 15
    code, out, err = run(capsys, "deconvolve", folder / "img.zarr", folder / "psf.npy",
                         "--method", "wiener", "--balance", 0.05, "--no-clip",
                         "-o", tmp_path / "w.zarr", "--cluster", "threads")  # fmt: skip
    assert code == 0, err
    expected = restoration.wiener(image, psf, 0.05, clip=False)
    assert relative(zarr.open_array(str(tmp_path / "w.zarr"))[:], expected) < 1e-4


def test_anisotropic_named_psf_in_3d(folder, tmp_path, capsys):
    code, _, err = run(capsys, "deconvolve", folder / "stack.zarr", "gaussian:sigma=0.7,1.5,1",
                       "--iterations", 4, "--no-clip", "-o", tmp_path / "s.zarr",
                       "--cluster", "threads", "-q")  # fmt: skip
    assert code == 0, err
    stack = zarr.open_array(str(folder / "stack.zarr"))[:].astype(np.float64)
    psf = dc.load_weights("gaussian:sigma=0.7,1.5,1", ndim=3)
    assert psf.shape == (7, 13, 9)
    u = np.full(stack.shape, 0.5)
    for _ in range(4):
        blur = ndimage.correlate(u, np.flip(psf), mode="reflect") + 1e-12
        u *= ndimage.correlate(stack / blur, psf, mode="reflect")
    assert relative(zarr.open_array(str(tmp_path / "s.zarr"))[:], u) < 1e-4


def test_dry_run_shows_the_plan_and_the_measured_difference(folder, capsys):
    before = tree_digest(folder)
    code, out, err = run(capsys, "deconvolve", folder / "img.zarr", "gaussian:sigma=1.5",
                         "--iterations", 30, "--halo", 8, "--dry-run",
                         "--cluster", "threads")  # fmt: skip
    assert code == 0, err
    assert "strategy:          tiles (approximate)" in out
    assert "halo per axis:     [8, 8] (exact needs [360, 360])" in out
    assert "difference:        measured on" in out and "of the largest value" in out
    code, out, _ = run(capsys, "deconvolve", folder / "img.zarr", "gaussian:sigma=1.5",
                       "--iterations", 3, "--dry-run", "--cluster", "threads")  # fmt: skip
    assert code == 0 and "exact:             yes" in out
    assert tree_digest(folder) == before


BAD = [
    ("nan psf", ["img.zarr", "nan.npy", "--iterations", "3"], "nan or infinity"),
    ("inf psf", ["img.zarr", "inf.npy", "--iterations", "3"], "nan or infinity"),
    ("all-zero psf", ["img.zarr", "zeros.npy", "--iterations", "3"], "all zeros"),
    ("negative psf", ["img.zarr", "negative.npy", "--iterations", "3"], "negative values"),
    ("psf with more dims", ["img.zarr", "psf3d.npy", "--iterations", "3"], "more than the 2-d"),
    ("psf larger than image", ["img.zarr", "huge.npy", "--iterations", "3"], "larger than the"),
    ("psf sigmas per axis", ["img.zarr", "gaussian:sigma=1,2,3", "--iterations", "3"], "3 values"),
    ("zero iterations", ["img.zarr", "psf.npy", "--iterations", "0"], "at least 1"),
    ("negative iterations", ["img.zarr", "psf.npy", "--iterations", "-4"], "at least 1"),
    ("absurd iterations", ["img.zarr", "psf.npy", "--iterations", "99999999"], "more than the"),
    ("no iterations", ["img.zarr", "psf.npy"], "needs --iterations"),
    ("negative image", ["neg.zarr", "psf.npy", "--iterations", "3"], "negative values in ["),
    ("wiener without balance", ["img.zarr", "psf.npy", "--method", "wiener"], "needs --balance"),
    (
        "iterations for wiener",
        ["img.zarr", "psf.npy", "--method", "wiener", "--balance", "1", "--iterations", "3"],
        "does not apply",
    ),
    ("negative balance", ["img.zarr", "psf.npy", "--method", "wiener", "--balance", "-1"], "least"),
    ("bad halo", ["img.zarr", "psf.npy", "--iterations", "3", "--halo", "wide"], "halo must"),
    (
        "bad filter epsilon",
        ["img.zarr", "psf.npy", "--iterations", "3", "--filter-epsilon", "-1"],
        "filter_epsilon",
    ),
    (
        "scratch taken",
        ["img.zarr", "psf.npy", "--iterations", "3", "-o", "taken.zarr"],
        "not a distconv scratch",
    ),
    ("output is the input", ["img.zarr", "psf.npy", "--iterations", "3", "-o", "img.zarr"], "is"),
]


@pytest.mark.parametrize("name, args, words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_one_line_exit_2_nothing_written(folder, monkeypatch, capsys, name, args, words):
    monkeypatch.chdir(folder)
    before = tree_digest(folder)
    extra = [] if "-o" in args else ["-o", "out.zarr"]
    code, out, err = run(capsys, "deconvolve", *args, *extra, "--cluster", "threads")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distconv: error: "), err
    assert words.lower() in lines[0].lower(), lines[0]
    assert out == ""
    assert tree_digest(folder) == before  # no output, no scratch, inputs unchanged


def test_ctrl_c_during_the_passes_then_resume(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.poisson(20.0, (384, 384)).astype(np.float32)
    zarr.create_array(str(tmp_path / "big.zarr"), shape=data.shape, chunks=(96, 96), dtype="f4")[
        :
    ] = data
    args = ["deconvolve", "big.zarr", "gaussian:sigma=2", "-o", "out.zarr", "--iterations",
            "60", "--halo", "exact", "--memory-budget", "2MiB", "--no-clip",
            "--cluster", "threads"]  # fmt: skip
    process = subprocess.Popen(
        [DISTCONV, *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    third = tmp_path / "out.zarr.scratch" / "estimate-3.zarr"
    deadline = time.monotonic() + 120
    while not third.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the job ended before it could be interrupted"
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    line = stderr.strip().splitlines()[-1]
    command = line.split("finish it with: ", 1)[1]
    assert shlex.split(command) == ["distconv", *args, "--resume"]
    assert not (tmp_path / "out.zarr").exists() and third.exists()
    finished = subprocess.run(
        [DISTCONV, *shlex.split(command)[1:]], cwd=tmp_path, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr
    assert "strategy passes (exact)" in finished.stdout
    assert not (tmp_path / "out.zarr.scratch").exists()
    psf = dc.load_weights("gaussian:sigma=2", ndim=2)
    reference = dc.richardson_lucy(data, psf, 60, clip=False, halo="exact").compute()
    assert relative(zarr.open_array(str(tmp_path / "out.zarr"))[:], reference) < 1e-5
