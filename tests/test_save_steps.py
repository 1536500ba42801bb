"""save as its steps: verify refuses to seal an output whose units the client cannot find, and
the scan of written units reads keys back into grid indices for every standard key encoding."""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr

import distconv as dc
from distconv.errors import JobFailed
from distconv.save.layout import array_layout, units_written
from distconv.save.sight import Sight
from distconv.save.steps import create_or_reopen, plan_save, seal, verify, write


def _plan(tmp_path, resume: bool = False):
    """save's first step for 3 × the input (12 chunks of 16²), a new output or resumed."""
    options = {"pyramid": None, "method": "mean", "axes_to_halve": None, "ome": None}
    return plan_save(
        dc.multiply(dc.open(tmp_path / "in.zarr"), 3.0),
        tmp_path / "out.zarr",
        overwrite=False,
        resume=resume,
        zarr_format=None,
        chunks=None,
        shards=None,
        attributes=None,
        storage_options=None,
        image_options=options,
    )


def test_a_unit_missing_where_the_client_reads_is_not_sealed(tmp_path):
    data = np.random.default_rng(5).random((64, 48)).astype(np.float32)
    zarr.create_array(str(tmp_path / "in.zarr"), data=data, chunks=(16, 16))
    job = _plan(tmp_path)
    output = create_or_reopen(job)
    write(job, output, Sight(), description="writing", progress=False)
    os.remove(tmp_path / "out.zarr" / "c" / "2" / "1")  # as if written on another disk
    with pytest.raises(JobFailed, match=r"1 of 12 chunks of .*out.zarr are not where this client"):
        verify(job, output)
    assert dc.info(tmp_path / "out.zarr")["complete"] is False
    # Written again (what --resume does), it verifies and seals.
    job = _plan(tmp_path, resume=True)
    output = create_or_reopen(job)
    assert len(output.done) == 11
    write(job, output, Sight(), description="writing", progress=False)
    verify(job, output)
    sealed = seal(job, output, [], Sight())
    assert sealed.attrs["distconv"]["complete"] is True
    np.testing.assert_array_equal(dc.open(tmp_path / "out.zarr").compute(), data * 3.0)


@pytest.mark.parametrize(
    "format_, encoding",
    [
        (3, None),
        (3, {"name": "default", "separator": "."}),
        (3, {"name": "v2", "separator": "."}),
        (3, {"name": "v2", "separator": "/"}),
        (2, None),
    ],
)
def test_units_written_reads_every_key_encoding(tmp_path, format_, encoding):
    extra = {"chunk_key_encoding": encoding} if encoding else {}
    array = zarr.create_array(
        str(tmp_path / "a.zarr"),
        shape=(50, 70, 3),
        chunks=(16, 16, 3),
        dtype="u2",
        zarr_format=format_,
        config={"write_empty_chunks": True},
        **extra,
    )
    rng = np.random.default_rng(9)
    layout = array_layout(array)
    grid = layout.grid(array.shape)
    chosen = {tuple(int(i) for i in rng.integers(0, grid)) for _ in range(9)}
    for index in chosen:
        array[tuple(slice(i * 16, i * 16 + 1) for i in index[:2]) + (0,)] = 7
    stored = {
        os.path.relpath(os.path.join(root, name), tmp_path / "a.zarr").replace(os.sep, "/")
        for root, _, names in os.walk(tmp_path / "a.zarr")
        for name in names
    }
    expected = {i for i in np.ndindex(*grid) if array.metadata.encode_chunk_key(i) in stored}
    assert expected == chosen
    assert units_written(stored, array, layout) == chosen
