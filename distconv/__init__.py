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
from distconv.io import info
from distconv.io import open as _open
from distconv.labelled import (
    labelled_apply,
    labelled_map_chunks,
    labelled_open,
    labelled_operation,
    labelled_pair,
    labelled_plan,
    labelled_save,
)
from distconv.ops import convolve as _convolve
from distconv.ops import deconvolve as _deconvolve
from distconv.ops import map_chunks as _map_chunks
from distconv.ops import matmul as _matmul
from distconv.ops import multiply as _multiply
from distconv.ops.apply import apply as _apply
from distconv.ops.apply import plan_apply
from distconv.ops.filter_plan import plan_convolve as _plan_convolve
from distconv.ops.filter_plan import plan_correlate as _plan_correlate
from distconv.save import steps as _steps
from distconv.weights import load_weights

# xarray in and out (distconv.labelled): a DataArray given to these is unwrapped, its dims
# named in axes=, the result wrapped back; xarray is imported only when one is passed.
open = labelled_open(_open)
convolve = labelled_operation(_convolve.convolve, axes=True)
correlate = labelled_operation(_convolve.correlate, axes=True)
richardson_lucy = labelled_operation(_deconvolve.richardson_lucy, axes=False)
wiener = labelled_operation(_deconvolve.wiener, axes=False)
plan_convolve = labelled_plan(_plan_convolve)
plan_correlate = labelled_plan(_plan_correlate)
map_chunks = labelled_map_chunks(_map_chunks.map_chunks)
apply = labelled_apply(_apply)
matmul = labelled_pair(_matmul.matmul, matrix=True)
multiply = labelled_pair(_multiply.multiply, matrix=False)
# Bound last: ``distconv.save`` is also the package of the save steps, and this name must be
# the function (Python binds a subpackage's name on its parent only when first importing it).
save = labelled_save(_steps.save)

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
    "apply",
    "cluster",
    "convolve",
    "correlate",
    "info",
    "load_weights",
    "map_chunks",
    "matmul",
    "multiply",
    "open",
    "plan_apply",
    "plan_convolve",
    "plan_correlate",
    "richardson_lucy",
    "save",
    "wiener",
]
