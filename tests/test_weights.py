"""Weights files and named kernels: safe loading, strict parsing, scipy-equal results."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from scipy import ndimage

import distconv as dc
from distconv.weights import weights_digest


def test_files_of_every_format(tmp_path):
    w = np.random.default_rng(0).standard_normal((3, 4))
    np.save(tmp_path / "w.npy", w)
    np.savez(tmp_path / "w.npz", kernel=w)
    np.savetxt(tmp_path / "w.txt", w)
    np.savetxt(tmp_path / "w.csv", w, delimiter=",")
    for name in ("w.npy", "w.npz", "w.txt", "w.csv"):
        np.testing.assert_allclose(dc.load_weights(tmp_path / name), w, rtol=1e-15, atol=0)


def test_unsafe_or_invalid_files_are_refused(tmp_path):
    with open(tmp_path / "evil.npy", "wb") as handle:
        pickle.dump(object(), handle)
    np.save(tmp_path / "obj.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "two.npz", a=np.ones(2), b=np.ones(2))
    np.save(tmp_path / "inf.npy", np.array([1.0, np.inf]))
    for name, words in (
        ("evil.npy", "pickled"),
        ("obj.npy", "object"),
        ("two.npz", "exactly one"),
        ("inf.npy", "NaN or infinity"),
        ("missing.npy", "no such"),
    ):
        with pytest.raises(dc.DistconvError, match=words):
            dc.load_weights(tmp_path / name)


def test_named_kernels_match_scipy():
    rng = np.random.default_rng(1)
    image = rng.random((40, 30))
    cases = [
        ("gaussian:sigma=1.5", ndimage.gaussian_filter(image, 1.5)),
        ("gaussian:sigma=2,truncate=2.5", ndimage.gaussian_filter(image, 2, truncate=2.5)),
        ("box:size=5", ndimage.uniform_filter(image, 5)),
        ("sobel:axis=0", ndimage.sobel(image, axis=0)),
        ("sobel:axis=-1", ndimage.sobel(image, axis=-1)),
        ("laplace", ndimage.laplace(image)),
    ]
    for spec, expected in cases:
        got = dc.correlate(image, dc.load_weights(spec, ndim=2)).compute(scheduler="sync")
        np.testing.assert_allclose(got, expected, atol=1e-12, err_msg=spec)


@pytest.mark.parametrize(
    "spec,words",
    [
        ("gaussian", "needs sigma"),
        ("gaussian:sigma=0", "positive"),
        ("gaussian:sigma=nan", "finite"),
        ("gaussian:sigma=2,sigma=3", "repeats"),
        ("gaussian:size=3", "takes: sigma, truncate"),
        ("box:size=2.5", "integer"),
        ("box:size=0", "at least 1"),
        ("sobel:axis=5", "out of range"),
        ("laplace:size=3", "takes: none"),
        ("os.system('true')", "named kernel"),
        ("gaussian:sigma=__import__('os')", "not a valid number"),
    ],
)
def test_named_kernel_specs_are_parsed_strictly(spec, words):
    with pytest.raises(dc.DistconvError, match=words):
        dc.load_weights(spec, ndim=2)


def test_digest_depends_on_values_and_shape():
    w = np.arange(6.0)
    assert weights_digest(w) == weights_digest(w.copy())
    assert weights_digest(w) != weights_digest(w.reshape(2, 3))
    assert weights_digest(w) != weights_digest(w + 1e-12)
