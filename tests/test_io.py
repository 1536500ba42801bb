"""Zarr I/O: opening v2/v3 and nested arrays, chunk-aligned saving, provenance, completeness."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr
from scipy import ndimage

import distconv as dc
from distconv import kernels
from distconv.io import regular_chunks


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_open_and_save_keep_the_format_and_chunks(tmp_path, zarr_format):
    rng = np.random.default_rng(1)
    data = rng.random((70, 45))
    source = zarr.create_array(
        str(tmp_path / "in.zarr"),
        shape=data.shape,
        chunks=(20, 16),
        dtype=data.dtype,
        zarr_format=zarr_format,
    )
    source[:] = data
    x = dc.open(tmp_path / "in.zarr")
    assert x.chunks == ((20, 20, 20, 10), (16, 16, 13))
    written = dc.save(
        dc.correlate(x, dc.load_weights("laplace", ndim=2)), tmp_path / "out.zarr", progress=False
    )
    assert written.metadata.zarr_format == zarr_format
    assert written.chunks == (20, 16)
    np.testing.assert_allclose(written[:], ndimage.laplace(data), atol=1e-12)
    attrs = written.attrs["distconv"]
    assert attrs["complete"] is True
    assert attrs["inputs"] == [str((tmp_path / "in.zarr").resolve())]
    step = attrs["steps"][0]
    assert step["operation"] == "correlate"
    assert step["engine"] == kernels.resolve_engine(
        "auto", "correlate_" + step["method"], 2, np.float64
    )
    assert len(step["weights_sha256"]) == 64


def test_irregular_dask_chunks_are_written_on_a_regular_grid(tmp_path):
    """Merged halo chunks and uneven inputs must not make two tasks share a Zarr chunk."""
    assert regular_chunks(((5, 5, 3),)) == ((5, 5, 3),)
    assert regular_chunks(((4, 8, 2, 6),)) == ((8, 8, 4),)
    rng = np.random.default_rng(2)
    data = rng.random((23, 19))
    y = dc.convolve(da.from_array(data, chunks=((3, 9, 2, 9), (19,))), rng.random((7, 3)))
    written = dc.save(y, tmp_path / "o.zarr", progress=False)
    assert written.chunks[0] >= max(y.chunks[0])
    np.testing.assert_allclose(written[:], y.compute(), atol=1e-12)


def test_open_refuses_groups_and_lists_arrays(tmp_path):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_group("raw").create_array("0", shape=(4,), dtype="f4")
    with pytest.raises(dc.DistconvError, match="group"):
        dc.open(tmp_path / "g.zarr")
    assert dc.open(tmp_path / "g.zarr" / "raw" / "0").shape == (4,)


def test_partial_output_is_refused_unless_asked(tmp_path):
    array = zarr.create_array(
        str(tmp_path / "p.zarr"),
        shape=(4, 4),
        chunks=(2, 2),
        dtype="f4",
        attributes={"distconv": {"complete": False}},
    )
    array[:2, :2] = 1.0
    with pytest.raises(dc.DistconvError, match="partial"):
        dc.open(tmp_path / "p.zarr")
    assert dc.open(tmp_path / "p.zarr", allow_partial=True).shape == (4, 4)
    described = dc.info(tmp_path / "p.zarr")
    assert described["complete"] is False
    assert (described["chunks_initialized"], described["chunks_total"]) == (1, 4)


def test_failed_job_is_never_marked_complete(tmp_path):
    def explode(block):
        if block.size and block.min() < 0.01:
            raise RuntimeError("boom in one chunk")
        return block

    rng = np.random.default_rng(3)
    x = da.from_array(rng.random((64, 64)), chunks=(8, 8)).map_blocks(explode, dtype=float)
    with pytest.raises(RuntimeError, match="boom"):
        dc.save(x, tmp_path / "f.zarr", progress=False)
    assert dc.info(tmp_path / "f.zarr")["complete"] is False
    with pytest.raises(dc.DistconvError, match="partial"):
        dc.open(tmp_path / "f.zarr")


def test_save_refuses_to_clobber(tmp_path):
    data = np.arange(12.0).reshape(3, 4) + 1
    dc.save(da.from_array(data, chunks=2), tmp_path / "a.zarr", progress=False)
    with pytest.raises(dc.OutputError, match="already exists"):
        dc.save(da.from_array(data, chunks=2), tmp_path / "a.zarr", progress=False)
    (tmp_path / "notzarr").mkdir()
    (tmp_path / "notzarr" / "precious.txt").write_text("keep me")
    with pytest.raises(dc.OutputError, match="not a Zarr store"):
        dc.save(da.from_array(data, chunks=2), tmp_path / "notzarr", overwrite=True, progress=False)
    assert (tmp_path / "notzarr" / "precious.txt").read_text() == "keep me"
    source = dc.open(tmp_path / "a.zarr")
    with pytest.raises(dc.OutputError, match="is the input"):
        dc.save(source * 2, tmp_path / "a.zarr", overwrite=True, progress=False)


def test_npy_input_is_memory_mapped(tmp_path):
    data = np.random.default_rng(4).random((30, 20)).astype(np.float32)
    np.save(tmp_path / "img.npy", data)
    y = dc.correlate(str(tmp_path / "img.npy"), np.ones((3, 3)) / 9)
    np.testing.assert_allclose(
        y.compute(), ndimage.uniform_filter(data.astype(float), 3), atol=1e-5
    )


def test_all_zero_chunks_are_written_so_partial_counts_are_true(tmp_path):
    """Zarr skips chunks equal to the fill value by default; an output must not, or an
    all-zero chunk would count as missing (info) and be recomputed on every resume."""
    data = np.zeros((8, 8))
    data[:4, :4] = 1.0
    written = dc.save(da.from_array(data, chunks=4), tmp_path / "z.zarr", progress=False)
    described = dc.info(tmp_path / "z.zarr")
    assert described["chunks_initialized"] == described["chunks_total"] == 4
    assert written.attrs["distconv"]["complete"] is True


def test_source_of_and_remember_source(tmp_path):
    zarr.create_array(str(tmp_path / "s.zarr"), shape=(6, 6), chunks=(3, 3), dtype="f4")[:] = 2
    x = dc.open(tmp_path / "s.zarr")
    from distconv.provenance import remember_source, source_of, source_paths

    assert source_of(x)["path"] == str((tmp_path / "s.zarr").resolve())
    assert source_of(x + 1) is None
    rechunked = remember_source(x.rechunk(6), source_of(x))
    assert set(source_paths(rechunked * 2)) == {source_of(x)["path"]}
    with pytest.raises(dc.OutputError, match="is the input"):
        dc.save(rechunked * 2, tmp_path / "s.zarr", overwrite=True, progress=False)
