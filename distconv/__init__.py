"""distconv: convolve, matrix-multiply and element-wise multiply arrays larger than memory.

Arrays are read from Zarr as chunked Dask arrays, computed chunk by chunk by an engine
(SciPy/NumPy, Numba, TensorFlow, CuPy, Numba CUDA) on a Dask cluster, and written back to Zarr.

>>> import distconv as dc
>>> y = dc.convolve(dc.open("big.zarr"), dc.load_weights("gaussian:sigma=2", ndim=2))
>>> dc.save(y, "smooth.zarr")  # doctest: +SKIP

Importing distconv imports none of the optional engines (TensorFlow, CuPy, Numba).
"""

from distconv import config as _config  # noqa: F401 - registers the dask.config defaults
from distconv._version import __version__
from distconv.clusters import cluster
from distconv.errors import (
    ChunkError,
    DistconvError,
    DistconvRuntimeError,
    DistconvTypeError,
    EngineError,
    InputValueError,
    OutputError,
    WeightsRankError,
)
from distconv.io import info, open
from distconv.ops.convolve import convolve, correlate
from distconv.ops.deconvolve import richardson_lucy, wiener
from distconv.ops.filter_plan import plan_convolve, plan_correlate
from distconv.ops.map_chunks import map_chunks
from distconv.ops.matmul import matmul
from distconv.ops.multiply import multiply

# Bound last: ``distconv.save`` is also the package of the save steps, and this name must be
# the function (Python binds a subpackage's name on its parent only when first importing it).
from distconv.save.steps import save
from distconv.weights import load_weights

__all__ = [
    "__version__",
    "ChunkError",
    "DistconvError",
    "DistconvRuntimeError",
    "DistconvTypeError",
    "EngineError",
    "InputValueError",
    "OutputError",
    "WeightsRankError",
    "cluster",
    "convolve",
    "correlate",
    "info",
    "load_weights",
    "map_chunks",
    "matmul",
    "multiply",
    "open",
    "plan_convolve",
    "plan_correlate",
    "richardson_lucy",
    "save",
    "wiener",
]
