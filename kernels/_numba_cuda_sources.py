"""Sources of the numba-cuda engine's kernels (compiled by :mod:`distconv.kernels.numba_cuda`).

Each builder closes over compile-time constants (the numba element type, a typed zero, a tile
side) - never over weights - and returns a plain Python function that the engine compiles with
``cuda.jit``. ``cuda`` must stay a global of this module: the CUDA simulator swaps it in the
kernels' globals while they run. Importing this module compiles nothing and touches no device.
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np
from numba import cuda, types

__all__ = ["SOURCES", "python_kernel", "signature"]


def _build_correlate_shared(nbtype, zero):
    """Tiled valid correlation of 3-D arrays; the haloed tile lives in dynamic shared memory."""

    def correlate_shared(x, w, out):
        tile = cuda.shared.array(0, dtype=nbtype)
        kd, kh, kw = w.shape
        od, oh, ow = out.shape
        _, xh, xw = x.shape
        by = cuda.blockDim.y
        bx = cuda.blockDim.x
        ty = cuda.threadIdx.y
        tx = cuda.threadIdx.x
        th = by + kh - 1
        tw = bx + kw - 1
        col0 = cuda.blockIdx.x * bx
        j = col0 + tx
        row_tiles = (oh + by - 1) // by
        # Loop bounds below depend on the block only, so every thread meets every syncthreads.
        for k in range(cuda.blockIdx.z, od, cuda.gridDim.z):
            for row_tile in range(cuda.blockIdx.y, row_tiles, cuda.gridDim.y):
                row0 = row_tile * by
                i = row0 + ty
                acc = zero
                for d in range(kd):
                    cuda.syncthreads()  # the previous tile is no longer being read
                    for r in range(ty, th, by):
                        gr = row0 + r
                        for c in range(tx, tw, bx):
                            gc = col0 + c
                            if gr < xh and gc < xw:
                                tile[r * tw + c] = x[k + d, gr, gc]
                            else:
                                tile[r * tw + c] = zero
                    cuda.syncthreads()
                    if i < oh and j < ow:
                        for a in range(kh):
                            base = (ty + a) * tw + tx
                            for b in range(kw):
                                acc += tile[base + b] * w[d, a, b]
                if i < oh and j < ow:
                    out[k, i, j] = acc

    return correlate_shared


def _build_correlate_global(nbtype, zero):
    """Valid correlation of 3-D arrays read straight from global memory (large kernels)."""

    def correlate_global(x, w, out):
        kd, kh, kw = w.shape
        od, oh, ow = out.shape
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if j >= ow:
            return  # no barrier in this kernel, so threads may leave early
        first_row = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
        row_step = cuda.gridDim.y * cuda.blockDim.y
        for k in range(cuda.blockIdx.z, od, cuda.gridDim.z):
            for i in range(first_row, oh, row_step):
                acc = zero
                for d in range(kd):
                    for a in range(kh):
                        for b in range(kw):
                            acc += x[k + d, i + a, j + b] * w[d, a, b]
                out[k, i, j] = acc

    return correlate_global


def _build_matmul(nbtype, zero, tile):
    """C[b] = A[b or 0] @ B[b or 0] on 3-D operands with tile x tile shared-memory tiles."""

    def matmul_tiled(a, b, c):
        sa = cuda.shared.array((tile, tile), dtype=nbtype)
        sb = cuda.shared.array((tile, tile), dtype=nbtype)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        batches = c.shape[0]
        m = c.shape[1]
        n = c.shape[2]
        depth = a.shape[2]
        a_batched = a.shape[0] > 1
        b_batched = b.shape[0] > 1
        col = cuda.blockIdx.x * tile + tx
        row_tiles = (m + tile - 1) // tile
        for batch in range(cuda.blockIdx.z, batches, cuda.gridDim.z):
            ba = batch if a_batched else 0
            bb = batch if b_batched else 0
            for row_tile in range(cuda.blockIdx.y, row_tiles, cuda.gridDim.y):
                row = row_tile * tile + ty
                acc = zero
                for k0 in range(0, depth, tile):
                    if row < m and k0 + tx < depth:
                        sa[ty, tx] = a[ba, row, k0 + tx]
                    else:
                        sa[ty, tx] = zero
                    if k0 + ty < depth and col < n:
                        sb[ty, tx] = b[bb, k0 + ty, col]
                    else:
                        sb[ty, tx] = zero
                    cuda.syncthreads()
                    for e in range(tile):
                        acc += sa[ty, e] * sb[e, tx]
                    cuda.syncthreads()  # both tiles fully used before the next load
                if row < m and col < n:
                    c[batch, row, col] = acc

    return matmul_tiled


def _build_multiply(nbtype, zero):
    """out[i] = a[i] * b[i] over contiguous 1-D views, grid-stride."""

    def multiply_flat(a, b, out):
        start = cuda.grid(1)
        step = cuda.gridsize(1)
        for i in range(start, out.shape[0], step):
            out[i] = a[i] * b[i]

    return multiply_flat


# name -> (builder, dimensions of each argument, layout of the arguments)
SOURCES = {
    "correlate_shared": (_build_correlate_shared, 3, "A"),
    "correlate_global": (_build_correlate_global, 3, "A"),
    "matmul": (_build_matmul, 3, "A"),
    "multiply": (_build_multiply, 1, "C"),
}


def signature(name: str, dtype: np.dtype):
    """The Numba signature ``void(array, array, array)`` of kernel ``name`` for ``dtype``."""
    _, ndim, layout = SOURCES[name]
    array = types.Array(numba.from_dtype(np.dtype(dtype)), ndim, layout)
    return types.void(array, array, array)


def python_kernel(name: str, dtype: np.dtype, tile: int | None = None) -> Callable:
    """The plain Python function of kernel ``name`` for ``dtype`` (and ``tile`` for matmul)."""
    builder = SOURCES[name][0]
    dtype = np.dtype(dtype)
    args = (numba.from_dtype(dtype), dtype.type(0))
    return builder(*args, tile) if name == "matmul" else builder(*args)
