"""The real `distconv` command in a subprocess, on real Zarr stores (v2 and v3) in a temp dir."""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import zarr
from scipy import ndimage

DISTCONV = os.path.join(os.path.dirname(sys.executable), "distconv")


def distconv(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([DISTCONV, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def tree_digest(path) -> str:
    """Hash of every file's name and bytes under path: proves an input was not touched."""
    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(os.path.relpath(full, path).encode())
            with open(full, "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()


@pytest.fixture
def image(tmp_path):
    rng = np.random.default_rng(7)
    data = rng.random((120, 90), dtype=np.float32)
    array = zarr.create_array(str(tmp_path / "big.zarr"), shape=data.shape, chunks=(32, 40),
                              dtype=data.dtype)
    array[:] = data
    np.save(tmp_path / "kernel.npy", rng.standard_normal((5, 4)))
    return tmp_path, data


def test_convolve_default_output_beside_input(image):
    folder, data = image
    result = distconv("convolve", "big.zarr", "kernel.npy", "--cluster", "threads", cwd=folder)
    assert result.returncode == 0, result.stderr
    out = zarr.open_array(str(folder / "big.convolved.zarr"), mode="r")
    expected = ndimage.convolve(data.astype(np.float64), np.load(folder / "kernel.npy"))
    np.testing.assert_allclose(out[:], expected, atol=1e-4)
    assert out.chunks == (32, 40)
    assert out.attrs["distconv"]["complete"] is True
    assert "wrote big.convolved.zarr" in result.stdout


def test_convolve_options_on_the_local_cluster(image):
    """The default embedded LocalCluster, with mode, origin and method from the command line."""
    folder, data = image
    result = distconv("convolve", "big.zarr", "kernel.npy", "-o", "out.zarr", "--mode",
                      "mirror", "--origin", "1", "--method", "fft", "--workers", "2", cwd=folder)
    assert result.returncode == 0, result.stderr
    assert "dashboard: http://127.0.0.1:" in result.stderr
    expected = ndimage.convolve(data.astype(np.float64), np.load(folder / "kernel.npy"),
                                mode="mirror", origin=1)
    out = zarr.open_array(str(folder / "out.zarr"), mode="r")
    np.testing.assert_allclose(out[:], expected, atol=1e-4)
    step = out.attrs["distconv"]["steps"][0]
    assert step["method"] == "fft" and step["parameters"]["mode"] == "mirror"


def test_correlate_named_kernel_in_a_v2_group_with_axes(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.integers(0, 255, (3, 50, 60)).astype(np.uint8)
    group = zarr.open_group(str(tmp_path / "big.zarr"), mode="w", zarr_format=2)
    raw = group.create_group("raw").create_array("0", shape=data.shape, chunks=(1, 16, 16),
                                                 dtype=data.dtype)
    raw[:] = data
    result = distconv("correlate", "big.zarr/raw/0", "gaussian:sigma=2", "-o", "smooth.zarr",
                      "--axes", "1,2", "--cluster", "threads", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""  # --quiet
    out = zarr.open_array(str(tmp_path / "smooth.zarr"), mode="r")
    assert out.metadata.zarr_format == 2  # the input's format
    np.testing.assert_allclose(out[:], ndimage.gaussian_filter(data.astype(float), (0, 2, 2)),
                               atol=1e-3)


def test_info_reports_provenance_and_completeness(image):
    folder, _ = image
    distconv("convolve", "big.zarr", "kernel.npy", "-o", "out.zarr", "--cluster", "threads",
             cwd=folder)
    result = distconv("info", "out.zarr", cwd=folder)
    assert result.returncode == 0, result.stderr
    for expected in ("shape:        120×90", "dtype:        float32", "chunks:       32×40",
                     "status:       complete", "operation:    convolve", "sha256", "codecs:"):
        assert expected in result.stdout


def test_overwrite_replaces_an_existing_output(image):
    folder, _ = image
    assert distconv("convolve", "big.zarr", "box:size=3", "-o", "o.zarr", "--cluster",
                    "threads", cwd=folder).returncode == 0
    refused = distconv("convolve", "big.zarr", "box:size=3", "-o", "o.zarr", "--cluster",
                       "threads", cwd=folder)
    assert refused.returncode == 2 and "already exists" in refused.stderr
    replaced = distconv("convolve", "big.zarr", "box:size=5", "-o", "o.zarr", "--overwrite",
                        "--cluster", "threads", cwd=folder)
    assert replaced.returncode == 0, replaced.stderr


def _bad_inputs(folder):
    """(name, arguments, expected words in the message) for every user error the issue names."""
    rng = np.random.default_rng(0)
    np.save(folder / "nan.npy", np.array([[1.0, np.nan], [0.0, 1.0]]))
    np.save(folder / "object.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with open(folder / "pickled.npy", "wb") as handle:
        pickle.dump({"weights": [1, 2, 3]}, handle)
    np.save(folder / "k3d.npy", rng.random((3, 3, 3)))
    np.save(folder / "empty.npy", np.zeros((0, 3)))
    np.save(folder / "strings.npy", np.array([["a", "b"]]))
    zarr.create_array(str(folder / "empty.zarr"), shape=(0, 5), chunks=(1, 5), dtype="f4")
    zarr.create_array(str(folder / "complex.zarr"), shape=(4, 4), chunks=(4, 4), dtype="c8")
    os.makedirs(folder / "plain_dir", exist_ok=True)
    return [
        ("missing input", ["nope.zarr", "kernel.npy"], "no such file"),
        ("missing kernel", ["big.zarr", "nope.npy"], "no such weights file"),
        ("not zarr", ["plain_dir", "kernel.npy"], "not a readable zarr"),
        ("kernel ndim", ["big.zarr", "k3d.npy"], "pass axes"),
        ("axes mismatch", ["big.zarr", "kernel.npy", "--axes", "0"], "name 1 axis"),
        ("nan weights", ["big.zarr", "nan.npy"], "nan or infinity"),
        ("empty weights", ["big.zarr", "empty.npy"], "empty"),
        ("string weights", ["big.zarr", "strings.npy"], "real numbers"),
        ("pickled npy", ["big.zarr", "pickled.npy"], "pickled"),
        ("object npy", ["big.zarr", "object.npy"], "pickled or object"),
        ("empty input", ["empty.zarr", "kernel.npy"], "empty"),
        ("complex input", ["complex.zarr", "kernel.npy"], "complex"),
        ("unknown mode", ["big.zarr", "kernel.npy", "--mode", "bogus"], "reflect"),
        ("unknown method", ["big.zarr", "kernel.npy", "--method", "bogus"], "fft"),
        ("unknown engine", ["big.zarr", "kernel.npy", "--engine", "bogus"], "scipy"),
        ("bad origin", ["big.zarr", "kernel.npy", "--origin", "3"], "invalid origin"),
        ("bad named kernel", ["big.zarr", "gaussian:sigma=-1"], "positive"),
        ("unknown named kernel", ["big.zarr", "blur:size=3"], "named kernel"),
        ("eval attempt", ["big.zarr", "gaussian:sigma=__import__('os')"], "not a valid"),
        ("output is input", ["big.zarr", "kernel.npy", "-o", "big.zarr"], "is the input"),
        ("output inside input", ["big.zarr", "kernel.npy", "-o", "big.zarr/sub"], "inside"),
        ("unknown cluster", ["big.zarr", "kernel.npy", "--cluster", "moon"], "local, threads"),
        ("separable not rank 1", ["big.zarr", "kernel.npy", "--method", "separable"], "rank-1"),
    ]


def test_bad_inputs_one_line_exit_2_nothing_written(image):
    folder, _ = image
    cases = _bad_inputs(folder)
    before = tree_digest(folder / "big.zarr")
    for name, args, words in cases:
        output = folder / f"out-{name.replace(' ', '-')}.zarr"
        extra = [] if "-o" in args else ["-o", str(output)]
        if "--cluster" not in args:
            extra += ["--cluster", "threads"]
        result = distconv("convolve", *args, *extra, cwd=folder)
        assert result.returncode == 2, (name, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (name, result.stderr)
        assert lines[0].startswith("distconv: error:"), (name, lines)
        assert words.lower() in lines[0].lower(), (name, lines[0])
        assert not output.exists(), name
    assert tree_digest(folder / "big.zarr") == before
    assert not (folder / "big.convolved.zarr").exists()


def test_debug_shows_the_traceback(image):
    folder, _ = image
    result = distconv("--debug", "convolve", "big.zarr", "nan.npy", cwd=folder)
    np.save(folder / "nan.npy", np.array([np.nan]))
    result = distconv("--debug", "convolve", "big.zarr", "nan.npy", "--axes", "0", cwd=folder)
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_help_has_examples():
    result = distconv("convolve", "--help")
    assert result.returncode == 0
    assert "Examples:" in result.stdout and "gaussian:sigma" in result.stdout
    assert distconv("--help").returncode == 0


def test_engines_table_lists_every_engine():
    result = distconv("engines")
    assert result.returncode == 0, result.stderr
    for name in ("scipy", "numba", "tensorflow", "cupy", "numba-cuda"):
        assert name in result.stdout
