"""Numba CPU engine: compiled direct and separable correlation, element-wise multiply.

Every function follows the per-chunk contract in :mod:`distconv.kernels.registry` (which also
holds this engine's ranks, dtypes and cost model): the block arrives padded for its halo and the
*valid* part of the correlation is returned in ``block.dtype``.

One compiled loop does all the correlation work. A C-contiguous block is seen as a set of output
*rows* along its last axis; every nonzero tap is a fixed offset into the flattened input, so the
valid correlation of a row segment is ``acc[j] += w[t] * x[base + offset[t] + j]`` summed over the
taps. The inner loop over ``j`` is contiguous and vectorises (LLVM emits packed FMAs), the
accumulator segment stays in L1, and taps are applied four at a time so each pass over ``acc`` does
four multiply-adds per load/store. The same loop therefore serves any rank, and a separable pass
along axis ``k`` is the same loop on the ``(before, n, after)`` view with a 1-D kernel.

Threads: Dask runs several tasks in one worker process at once. The kernels are serial
``@njit(nogil=True)`` functions, so those threads run truly in parallel and Dask supplies the
parallelism; ``parallel=True`` is deliberately not used (Numba's workqueue threading layer aborts
when entered from several threads). Nothing is compiled at import: each specialisation is compiled
(or loaded from Numba's on-disk cache) on its first call inside the worker process, and the weights
are passed as data, so one compiled artefact serves every kernel.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numba
import numpy as np
from numba import njit

__all__ = ["correlate_direct", "correlate_separable", "device_info", "multiply"]

# float32 blocks accumulate in float32 (twice the SIMD width of float64: ~2x faster) while the
# worst-case rounding error of a recursive sum, about taps x 2**-24 x sum(|w| |x|), stays under
# the 1e-5 float32 tolerance distconv promises (128 x 6e-8 = 7.6e-6); kernels with more nonzero
# taps accumulate in float64 and round once, as scipy.ndimage always does.
_FLOAT32_ACC_MAX_TAPS = 128

# Output samples per inner pass: a float64 accumulator of this length is 16 KiB and stays in L1
# while the taps stream over it.
_SEGMENT = 2048


def correlate_direct(block: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Valid correlation of a padded block with a compiled loop over the nonzero taps.

    Parameters
    ----------
    block : numpy.ndarray
        float32 or float64 block, already padded for its halo.
    weights : numpy.ndarray
        Kernel with the same ``ndim`` (size 1 on axes that are not filtered). Zero taps are
        skipped, so the cost is proportional to the number of nonzero taps.

    Returns
    -------
    numpy.ndarray
        C-contiguous array of ``block.dtype`` with
        ``shape[i] == block.shape[i] - weights.shape[i] + 1``.

    Notes
    -----
    float64 blocks accumulate in float64. float32 blocks accumulate in float32 when the kernel
    has at most 128 nonzero taps (worst-case error about ``taps * 2**-24 * sum(|w| |x|)``, under
    the 1e-5 float32 tolerance; ~2x faster than a float64 accumulator) and in float64 beyond,
    rounding once. Each output sample sums its taps in the same order whatever the chunking.
    """
    block = np.ascontiguousarray(block)
    if block.dtype not in (np.float32, np.float64):
        raise TypeError(f"correlate_direct needs a float32 or float64 block, got {block.dtype}")
    weights = np.asarray(weights)
    if weights.ndim != block.ndim:
        raise ValueError(f"weights have {weights.ndim} dimension(s) but the block has {block.ndim}")
    out_shape = tuple(b - w + 1 for b, w in zip(block.shape, weights.shape))
    if min(out_shape) < 0:
        raise ValueError(f"block {block.shape} is smaller than the weights {weights.shape}")
    return _correlate(block, weights, out_shape)


def correlate_separable(block: np.ndarray, factors: Sequence[np.ndarray | None]) -> np.ndarray:
    """Valid correlation with a rank-1 kernel, one compiled 1-D pass per filtered axis.

    Parameters
    ----------
    block : numpy.ndarray
        float32 or float64 block, already padded for its halo.
    factors : sequence of numpy.ndarray or None
        One entry per axis of ``block``: the 1-D kernel for that axis, or ``None`` when the axis
        is not filtered.

    Returns
    -------
    numpy.ndarray
        C-contiguous array of ``block.dtype``, valid along every filtered axis.

    Notes
    -----
    Each pass rounds to ``block.dtype`` (as the scipy engine does between its ``correlate1d``
    passes); within a pass the accumulator follows :func:`correlate_direct`'s rule.
    """
    out = np.ascontiguousarray(block)
    if out.dtype not in (np.float32, np.float64):
        raise TypeError(f"correlate_separable needs a float32 or float64 block, got {out.dtype}")
    if len(factors) != out.ndim:
        raise ValueError(f"{len(factors)} factor(s) for a {out.ndim}-D block")
    for axis, factor in enumerate(factors):
        if factor is None:
            continue
        factor = np.asarray(factor).reshape(-1)
        size = factor.shape[0]
        n = out.shape[axis]
        if size > n:
            raise ValueError(f"factor of length {size} is longer than axis {axis} ({n})")
        before = int(np.prod(out.shape[:axis], dtype=np.int64))
        after = int(np.prod(out.shape[axis + 1 :], dtype=np.int64))
        # A pass along `axis` is a direct correlation of the (before, n, after) view with a
        # kernel of shape (1, size, 1); the row loop then runs along n*after contiguous samples.
        view = out.reshape(before, n, after)
        result = _correlate(view, factor.reshape(1, size, 1), (before, n - size + 1, after))
        new_shape = list(out.shape)
        new_shape[axis] = n - size + 1
        out = result.reshape(new_shape)
    return out


# dtypes the compiled multiply loop handles exactly as NumPy does (float16 and bool go to NumPy).
_MULTIPLY_DTYPES = frozenset(
    np.dtype(t)
    for t in (
        np.float32,
        np.float64,
        np.complex64,
        np.complex128,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
    )
)


def multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise product with ``numpy.multiply`` semantics on one pair of blocks.

    Parameters
    ----------
    a, b : numpy.ndarray
        The blocks. Equal shapes and one common integer, float32/64 or complex dtype run in a
        compiled loop that releases the GIL; anything else (broadcasting, mixed dtypes, bool,
        float16, 0-d) is handed to ``numpy.multiply``, which gives the same result.

    Returns
    -------
    numpy.ndarray
        ``numpy.multiply(a, b)``.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype or a.dtype not in _MULTIPLY_DTYPES or a.ndim == 0:
        return np.multiply(a, b)
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    out = np.empty(a.shape, dtype=a.dtype)
    _multiply_flat(a.reshape(-1), b.reshape(-1), out.reshape(-1))
    return out


def device_info() -> str:
    """One line for ``distconv engines``.

    Returns
    -------
    str
        Numba version, the host CPU as LLVM names it, and how the kernels use threads.
    """
    try:
        from llvmlite import binding

        cpu = binding.get_host_cpu_name()
    except Exception:  # informational only: never fail `distconv engines` over it
        cpu = "unknown cpu"
    return (
        f"CPU (numba {numba.__version__}, {cpu}, {os.cpu_count()} cores; serial nogil "
        f"kernels, parallel across Dask threads, threading layer unused)"
    )


def _correlate(block: np.ndarray, weights: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray:
    """Run the row kernel for a C-contiguous block and a same-rank kernel."""
    out = np.empty(out_shape, dtype=block.dtype)
    if out.size == 0:
        return out
    taps = np.nonzero(weights)
    ntaps = taps[0].shape[0]
    acc_dtype = (
        np.float32 if block.dtype == np.float32 and ntaps <= _FLOAT32_ACC_MAX_TAPS else np.float64
    )
    values = weights[taps].astype(acc_dtype)
    strides = np.array(block.strides, dtype=np.int64) // block.itemsize
    offsets = np.zeros(ntaps, dtype=np.int64)
    for axis, index in enumerate(taps):
        offsets += index.astype(np.int64) * strides[axis]

    # Merge trailing unfiltered axes (weights size 1, so input and output have the same length
    # there) into the row: a (H, W, C) block with a (3, 3, 1) kernel then runs rows of W*C
    # samples instead of rows of C.
    last = block.ndim - 1
    row = out_shape[last]
    while last > 0 and weights.shape[last] == 1:
        last -= 1
        row *= out_shape[last]
    row_shape = np.array(out_shape[:last], dtype=np.int64)
    row_strides = strides[:last].copy()
    rows = int(np.prod(row_shape, dtype=np.int64))
    acc = np.empty(min(row, _SEGMENT), dtype=acc_dtype)
    # Always hand Numba a read-only view: writable and read-only arrays are different Numba
    # types, and one specialisation per dtype is enough (blocks from Zarr may be read-only).
    flat = block.reshape(-1)
    flat.flags.writeable = False
    _correlate_rows(flat, values, offsets, row_shape, row_strides, acc, out.reshape(rows, row))
    return out


@njit(nogil=True, cache=True, fastmath={"contract"})
def _correlate_rows(x, values, offsets, row_shape, row_strides, acc, out):  # pragma: no cover
    """out[r, j] = sum_t values[t] * x[base(r) + offsets[t] + j] for every output row r.

    ``x`` is the flattened C-contiguous input, ``row_shape``/``row_strides`` give the output
    rows' multi-index and the matching input strides (in elements), ``acc`` is scratch whose
    dtype is the accumulation dtype.
    """
    rows, n = out.shape
    ndim = row_shape.shape[0]
    ntaps = values.shape[0]
    seg = acc.shape[0]
    for r in range(rows):
        rem = r
        base = 0
        for k in range(ndim - 1, -1, -1):
            base += (rem % row_shape[k]) * row_strides[k]
            rem //= row_shape[k]
        for j0 in range(0, n, seg):
            m = min(seg, n - j0)
            start = base + j0
            a = acc[:m]
            a[:] = 0.0
            # The inner loops index slices with the range variable: Numba knows it is not
            # negative, so no wraparound select is emitted and LLVM vectorises with plain
            # loads (indexing x[o + j] directly compiles to gathers, ~10x slower).
            t = 0
            while t + 4 <= ntaps:  # four taps per pass: one load/store of acc per four FMAs
                w0 = values[t]
                w1 = values[t + 1]
                w2 = values[t + 2]
                w3 = values[t + 3]
                x0 = x[start + offsets[t] : start + offsets[t] + m]
                x1 = x[start + offsets[t + 1] : start + offsets[t + 1] + m]
                x2 = x[start + offsets[t + 2] : start + offsets[t + 2] + m]
                x3 = x[start + offsets[t + 3] : start + offsets[t + 3] + m]
                for j in range(m):
                    a[j] += (w0 * x0[j] + w1 * x1[j]) + (w2 * x2[j] + w3 * x3[j])
                t += 4
            while t < ntaps:
                w0 = values[t]
                x0 = x[start + offsets[t] : start + offsets[t] + m]
                for j in range(m):
                    a[j] += w0 * x0[j]
                t += 1
            o = out[r, j0 : j0 + m]
            for j in range(m):
                o[j] = a[j]


@njit(nogil=True, cache=True)
def _multiply_flat(a, b, out):  # pragma: no cover
    for i in range(out.shape[0]):
        out[i] = a[i] * b[i]
