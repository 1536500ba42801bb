"""Where work runs: the spec parser and a real multi-process LocalCluster on 127.0.0.1."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from scipy import ndimage

import distconv as dc
from distconv.clusters import parse_spec


def test_spec_parser():
    assert parse_spec("local").kind == "local"
    assert parse_spec("threads").kind == "threads"
    assert parse_spec("tcp://127.0.0.1:8786").address == "tcp://127.0.0.1:8786"
    for bad in ("moon", "tcp://", "", "http://x"):
        with pytest.raises(dc.DistconvError, match="local, threads"):
            parse_spec(bad)


def test_local_cluster_job_equals_scipy(tmp_path):
    rng = np.random.default_rng(5)
    data = rng.random((300, 200), dtype=np.float32)
    source = zarr.create_array(str(tmp_path / "in.zarr"), shape=data.shape, chunks=(64, 64),
                               dtype=data.dtype)
    source[:] = data
    w = rng.standard_normal((9, 9))
    with dc.cluster("local", workers=2, quiet=True) as client:
        info = client.scheduler_info()
        assert len(info["workers"]) == 2
        assert all(addr.startswith("tcp://127.0.0.1:") for addr in info["workers"])
        assert info["address"].startswith("tcp://127.0.0.1:")
        dc.save(dc.convolve(dc.open(tmp_path / "in.zarr"), w, mode="wrap"), tmp_path / "o.zarr",
                progress=False)
    out = zarr.open_array(str(tmp_path / "o.zarr"), mode="r")
    expected = ndimage.convolve(data.astype(np.float64), w, mode="wrap")
    np.testing.assert_allclose(out[:], expected, atol=1e-4)
    assert out.attrs["distconv"]["complete"] is True


def test_threads_spec_needs_no_cluster():
    with dc.cluster("threads") as client:
        assert client is None
