"""The real `distconv` command in a subprocess, on real Zarr stores (v2 and v3) in a temp dir.

Bad inputs are in test_bad_inputs.py; resume, Ctrl-C and failures in test_reliability.py.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr
from conftest import distconv, write_zarr
from scipy import ndimage


@pytest.fixture
def image(tmp_path):
    rng = np.random.default_rng(7)
    data = rng.random((120, 90), dtype=np.float32)
    write_zarr(tmp_path / "big.zarr", data, (32, 40))
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
    options = "--mode mirror --origin 1 --method fft --workers 2".split()
    result = distconv("convolve", "big.zarr", "kernel.npy", "-o", "out.zarr", *options, cwd=folder)
    assert result.returncode == 0, result.stderr
    assert "dashboard: http://127.0.0.1:" in result.stdout  # a local cluster started
    expected = ndimage.convolve(
        data.astype(np.float64), np.load(folder / "kernel.npy"), mode="mirror", origin=1
    )
    out = zarr.open_array(str(folder / "out.zarr"), mode="r")
    np.testing.assert_allclose(out[:], expected, atol=1e-4)
    step = out.attrs["distconv"]["steps"][0]
    assert step["method"] == "fft" and step["parameters"]["mode"] == "mirror"


def test_correlate_named_kernel_in_a_v2_group_with_axes(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.integers(0, 255, (3, 50, 60)).astype(np.uint8)
    group = zarr.open_group(str(tmp_path / "big.zarr"), mode="w", zarr_format=2)
    raw = group.create_group("raw").create_array(
        "0", shape=data.shape, chunks=(1, 16, 16), dtype=data.dtype
    )
    raw[:] = data
    command = "correlate big.zarr/raw/0 gaussian:sigma=2 -o smooth.zarr --axes 1,2"
    result = distconv(*command.split(), "--cluster", "threads", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""  # --quiet
    out = zarr.open_array(str(tmp_path / "smooth.zarr"), mode="r")
    assert out.metadata.zarr_format == 2  # the input's format
    assert out.dtype == np.uint8  # the input's dtype, as scipy.ndimage; truncated toward zero
    expected = np.trunc(ndimage.gaussian_filter(data.astype(float), (0, 2, 2)))
    assert np.abs(out[:] - expected).max() <= 1  # float32 may land across an integer


def test_info_reports_provenance_and_completeness(image):
    folder, _ = image
    distconv(
        "convolve", "big.zarr", "kernel.npy", "-o", "out.zarr", "--cluster", "threads", cwd=folder
    )
    result = distconv("info", "out.zarr", cwd=folder)
    assert result.returncode == 0, result.stderr
    for expected in (
        "shape:        120×90",
        "dtype:        float32",
        "chunks:       32×40",
        "status:       complete",
        "operation:    convolve",
        "sha256",
        "codecs:",
    ):
        assert expected in result.stdout


def test_overwrite_replaces_an_existing_output(image):
    folder, _ = image
    assert (
        distconv(
            "convolve", "big.zarr", "box:size=3", "-o", "o.zarr", "--cluster", "threads", cwd=folder
        ).returncode
        == 0
    )
    refused = distconv(
        "convolve", "big.zarr", "box:size=3", "-o", "o.zarr", "--cluster", "threads", cwd=folder
    )
    assert refused.returncode == 2 and "already exists" in refused.stderr
    command = "convolve big.zarr box:size=5 -o o.zarr --overwrite --cluster threads"
    replaced = distconv(*command.split(), cwd=folder)
    assert replaced.returncode == 0, replaced.stderr


def test_info_counts_the_chunks_of_a_partial_output(image):
    """An interrupted job's output: ``info`` says how far it got, ``--resume`` finishes it."""
    folder, data = image
    job = "correlate big.zarr kernel.npy -o p.zarr --cluster threads".split()
    assert distconv(*job, "-q", cwd=folder).returncode == 0
    array = zarr.open_array(str(folder / "p.zarr"), mode="r+")
    array.attrs.update({"distconv": {**array.attrs["distconv"], "complete": False}})
    for key in ("c/0/0", "c/3/1"):
        os.remove(folder / "p.zarr" / key)
    described = distconv("info", "p.zarr", cwd=folder)
    assert "status:       partial: 10 of 12 chunks written" in described.stdout
    resumed = distconv(*job, "--resume", cwd=folder)
    assert resumed.returncode == 0, resumed.stderr
    assert "2 of 12 chunks computed now, 10 were already written" in resumed.stdout
    assert "status:       complete" in distconv("info", "p.zarr", cwd=folder).stdout
    expected = ndimage.correlate(data.astype(np.float64), np.load(folder / "kernel.npy"))
    np.testing.assert_allclose(zarr.open_array(str(folder / "p.zarr"))[:], expected, atol=1e-4)


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


def test_cluster_help_is_one_text_listing_every_form():
    """Every command's --cluster help is the same text, and it names every spec form."""
    import click

    from distconv.cli import cli
    from distconv.clusters import SPEC_FORMS

    helps = {}

    def walk(command, path):
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, (*path, name))
        for param in command.params:
            if "--cluster" in getattr(param, "opts", ()):
                helps[" ".join(path)] = param.help

    walk(cli, ())
    assert {"convolve", "correlate", "matmul", "multiply", "cluster info", "bench convolve"} <= set(
        helps
    )
    assert len(set(helps.values())) == 1, helps
    for form in SPEC_FORMS.split(", "):
        assert form in next(iter(helps.values()))
    assert "PATH.yaml" in distconv("convolve", "--help").stdout
