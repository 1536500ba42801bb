"""The scipy engine's FFT path on both FFT libraries: ducc0 (the ``fft`` extra) and scipy.fft."""

from __future__ import annotations

import importlib.util

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage, signal

import distconv as dc
from distconv.kernels import scipy as engine

LIBRARIES = [
    pytest.param(
        True,
        id="ducc0",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("ducc0") is None,
            reason="ducc0 not installed (a core dependency: pip install ducc0)",
        ),
    ),
    pytest.param(False, id="scipy.fft"),
]

CASES = [
    ((70, 66), (9, 8)),
    ((40, 33, 21), (5, 4, 3)),
    ((50, 60), (1, 7)),
    ((50, 60), (7, 1)),
    ((64,), (9,)),
    ((30, 20, 10), (1, 5, 1)),
    ((25, 24), (2, 2)),
]


@pytest.fixture
def library(request, monkeypatch):
    monkeypatch.setattr(engine, "_DUCC0_INSTALLED", request.param)
    return request.param


@pytest.mark.parametrize("library", LIBRARIES, indirect=True)
@pytest.mark.parametrize("shape,wshape", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_valid_correlation_matches_scipy_signal(library, shape, wshape, dtype):
    rng = np.random.default_rng(sum(shape) + sum(wshape))
    block = rng.standard_normal(shape).astype(dtype)
    weights = rng.standard_normal(wshape).astype(dtype)
    got = engine.correlate_fft(block, weights)
    want = signal.correlate(block.astype(np.float64), weights.astype(np.float64), mode="valid")
    assert got.dtype == dtype and got.shape == want.shape and got.flags.c_contiguous
    limit = 2e-6 if dtype == np.float32 else 1e-13
    assert np.abs(got - want).max() <= limit * np.abs(want).max()


@pytest.mark.parametrize("library", LIBRARIES, indirect=True)
def test_chunked_convolve_on_each_library_matches_ndimage(library):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((90, 77))
    w = rng.standard_normal((13, 11))
    lazy = dc.convolve(
        da.from_array(x, chunks=30), w, method="fft", engine="scipy", output=np.float64
    )
    assert lazy.numblocks == (3, 3)
    got = lazy.compute(scheduler="sync")
    want = ndimage.convolve(x, w, mode="reflect")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * np.abs(want).max())
