"""The engines' shared helpers: the keyed cache's eviction policies and the valid-crop slices."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from scipy import ndimage, signal

from distconv.kernels._cache import KeyedCache
from distconv.kernels._crop import circular_valid, valid_crop, valid_crop_axis


def _fill(cache: KeyedCache, keys) -> list:
    built = []
    for key in keys:
        cache.get(key, lambda key=key: built.append(key) or key.upper())
    return built


def test_lru_keeps_what_was_used_last():
    cache = KeyedCache(maxsize=2, policy="lru")
    assert _fill(cache, "aba") == ["a", "b"]  # the second "a" is a hit
    _fill(cache, "c")
    assert list(cache) == ["a", "c"]  # "b" was least recently used


def test_fifo_drops_the_first_inserted_whatever_was_used():
    cache = KeyedCache(maxsize=2, policy="fifo")
    assert _fill(cache, "aba") == ["a", "b"]
    _fill(cache, "c")
    assert list(cache) == ["b", "c"]


def test_unbounded_cache_builds_once_under_threads():
    cache = KeyedCache(compute_under_lock=True)
    calls = []
    barrier = threading.Barrier(4)

    def build():
        calls.append(1)
        return object()

    def worker(results):
        barrier.wait()
        results.append(cache.get("k", build))

    results: list = []
    threads = [threading.Thread(target=worker, args=(results,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len({id(r) for r in results}) == 1
    assert len(cache) == 1 and "k" in cache
    del cache["k"]
    assert "k" not in cache


def test_compute_outside_the_lock_may_use_the_cache():
    cache = KeyedCache(maxsize=4)  # a nested get would deadlock if compute held the lock
    assert cache.get("outer", lambda: cache.get("inner", lambda: 1) + 1) == 2
    assert list(cache) == ["inner", "outer"]


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="policy"):
        KeyedCache(policy="random")


@pytest.mark.parametrize("shape,wshape", [((9, 8), (3, 4)), ((7,), (7,)), ((6, 5, 4), (1, 2, 3))])
def test_crops_give_the_valid_correlation(shape, wshape):
    rng = np.random.default_rng(len(shape))
    x = rng.standard_normal(shape)
    w = rng.standard_normal(wshape)
    want = signal.correlate(x, w, mode="valid")
    full = ndimage.correlate(x, w, mode="constant")
    np.testing.assert_allclose(full[valid_crop(x.shape, w.shape)], want, atol=1e-12)
    axis = len(shape) - 1
    size = wshape[axis]
    factor = rng.standard_normal(size)
    one = ndimage.correlate1d(x, factor, axis=axis, mode="constant")
    want_1d = signal.correlate(x, factor.reshape((1,) * axis + (size,)), mode="valid")
    np.testing.assert_allclose(one[valid_crop_axis(x.shape, axis, size)], want_1d, atol=1e-12)
    axes = tuple(range(len(shape)))
    lengths = [n + 3 for n in shape]  # any circular length >= n is exact on the window
    flipped = w[(slice(None, None, -1),) * w.ndim]
    spectrum = np.fft.rfftn(x, lengths, axes) * np.fft.rfftn(flipped, lengths, axes)
    circular = np.fft.irfftn(spectrum, lengths, axes)
    np.testing.assert_allclose(circular[circular_valid(x.shape, w.shape, axes)], want, atol=1e-12)
