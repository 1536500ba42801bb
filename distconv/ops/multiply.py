"""The element-wise product of chunked arrays, block by block, as :func:`numpy.multiply` does it.

Broadcasting and dtypes follow NumPy (:mod:`._broadcast`): Python scalars are promoted weakly,
as NumPy 2 does. Each block is computed by an engine from :mod:`distconv.kernels`.
"""

from __future__ import annotations

import dask.array as da
import numpy as np

from distconv import kernels
from distconv.backend import array_module, is_gpu_array
from distconv.config import get_default
from distconv.errors import DistconvError
from distconv.io import as_dask_array
from distconv.ops.tiling import as_tiles, same_tiles, tile_plan_for
from distconv.plan.broadcast import broadcast_shape, is_scalar, scalar_as, scalar_result_dtype
from distconv.provenance import layout_of, remember_layout, remember_provenance

__all__ = ["multiply", "multiply_block"]

_MULTIPLY_OP = "multiply"


def multiply(a, b, *, engine: str | None = None) -> da.Array:
    """Element-wise product with :func:`numpy.multiply` semantics, block by block.

    Parameters
    ----------
    a, b : str, zarr.Array, dask.array.Array, numpy.ndarray or scalar
        Operands whose shapes broadcast; a path is opened with :func:`distconv.open`. A Python
        scalar is promoted weakly, as NumPy 2 does (``float32 array * 0.5`` stays float32).
    engine : str, optional
        Engine computing each block; default from config ``distconv.engine``.

    Returns
    -------
    dask.array.Array
        Lazy product chunked like the broadcast inputs, in NumPy's result dtype.

    Raises
    ------
    DistconvError
        Shapes that do not broadcast, or a scalar out of range for the array's integer dtype,
        with NumPy's message.
    """
    if is_scalar(a) and is_scalar(b):
        raise DistconvError("multiply needs at least one array operand")
    if is_scalar(a):  # multiplication commutes; keep the array first
        a, b = b, a
    x = as_dask_array(a)
    if is_scalar(b):
        dtype = scalar_result_dtype(x.dtype, b)
        y = None
        scalar = scalar_as(b, dtype)
        out_shape = x.shape
    else:
        y = as_dask_array(b)
        scalar = None
        dtype = np.result_type(x.dtype, y.dtype)
        out_shape = broadcast_shape(x.shape, y.shape)
    if tuple(x.shape) == tuple(out_shape):
        x, y = _in_tiles(x, y, dtype)
    name = kernels.resolve_engine(
        engine or get_default("engine"),
        _MULTIPLY_OP,
        len(out_shape),
        dtype,
        gpu_chunks=is_gpu_array(x) or is_gpu_array(y),
    )
    graph_options = {
        "dtype": dtype,
        "meta": array_module(x._meta).empty((0,) * len(out_shape), dtype=dtype),
        "engine": name,  # this and dtype_ go to multiply_block
        "dtype_": dtype,
        "token": "distconv-multiply",
    }
    if y is None:
        product = x.map_blocks(multiply_block, b=scalar, **graph_options)
    else:
        out_ind = tuple(range(len(out_shape)))
        x_ind, y_ind = out_ind[len(out_shape) - x.ndim :], out_ind[len(out_shape) - y.ndim :]
        product = da.blockwise(multiply_block, out_ind, x, x_ind, y, y_ind, **graph_options)
    layout = layout_of(x)
    if layout is not None:  # stored like the first operand (the second may differ)
        remember_layout(product, layout)
    return remember_provenance(
        product,
        {
            "operation": "multiply",
            "parameters": {
                "engine": engine or get_default("engine"),
                "scalar": None if scalar is None else scalar.item(),
            },
            "engine": name,
            "method": "elementwise",
            "input_shapes": [list(x.shape)] + ([] if y is None else [list(y.shape)]),
            "input_dtypes": [str(x.dtype)] + ([] if y is None else [str(y.dtype)]),
        },
    )


def _in_tiles(x: da.Array, y: da.Array | None, dtype) -> tuple[da.Array, da.Array | None]:
    """Both operands in tiles of ``x``'s stored chunks (or of its Dask chunks when merging
    enough of them pays), ``y`` read from its store at the same tiles when it has ``x``'s shape.
    Tiles are planned for ``x``; a broadcast ``y`` is aligned by ``blockwise``."""
    plan = tile_plan_for(
        x,
        compute_dtype=dtype,
        out_dtype=dtype,
        method_for=lambda tile: "elementwise",
        operands=1 if y is None else 2,
    )
    x = as_tiles(x, plan)
    if y is not None and y.shape == x.shape:
        y = same_tiles(y, x.chunks)
    return x, y


def multiply_block(a, b, *, engine: str, dtype_: np.dtype):
    """Per-block function: both operands in the result dtype, then the engine's multiply.

    Parameters
    ----------
    a, b : array
        Blocks (or a 0-d scalar for ``b``) that broadcast against each other.
    engine : str
        A resolved engine name.
    dtype_ : numpy.dtype
        The result dtype.

    Returns
    -------
    array
        The product block, in the engine's array type.
    """
    return kernels.get_op(engine, _MULTIPLY_OP)(
        a.astype(dtype_, copy=False), b.astype(dtype_, copy=False)
    )
