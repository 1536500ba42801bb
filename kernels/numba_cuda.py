"""Numba CUDA engine: hand-written CUDA kernels for direct correlation, matmul and multiply.

Kernels
-------
``correlate_direct``
    One tiled kernel serves 1-D, 2-D and 3-D blocks: blocks are viewed as 3-D (a 2-D block is
    ``(1, H, W)``, a 1-D block ``(1, 1, N)``). A thread block of ``(by, bx)`` threads computes a
    ``by x bx`` tile of one output plane: for every plane of the kernel's depth it loads the
    haloed input tile, ``(by + kh - 1) x (bx + kw - 1)`` samples, into *dynamic* shared memory
    (its size depends on the kernel, so it is given at launch, not compiled in) and accumulates
    ``kh * kw`` taps per thread from it. When that tile does not fit the 48 KiB every CUDA device
    grants without an opt-in, a kernel that reads global memory directly (through the cache) is
    used instead. The weights are a device-array *argument*: one compiled kernel per
    (device, dtype) serves every kernel shape and value.
``matmul``
    Classic shared-memory tiling (``tile x tile`` tiles of both operands per step, one output
    per thread); batches run along grid z, a batch of 1 broadcasts against the other operand.
``multiply``
    A grid-stride element-wise kernel on equal shapes; broadcasting (and any dtype other than
    float32/float64) falls back to the array library, which is just as fast for that case.

Accumulation is in the block's dtype (float32 accumulates in float32: full speed on every GPU);
results agree with scipy.ndimage in float64 to about ``1e-6 * sum|w| * max|x|`` in float32.

Arrays
------
CuPy blocks (anything with ``__cuda_array_interface__``) are used in place through
:func:`numba.cuda.as_cuda_array`, kernels run on CuPy's current stream and on the block's
device, and CuPy arrays are returned. NumPy blocks are copied to the device and the result is
copied back (and returned as NumPy), so the engine also works on host chunks and under the
CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, which must be set before ``numba.cuda`` is first
imported), where the tests run it on tiny arrays.

Compilation
-----------
Kernels are compiled inside the worker on first use, eagerly for one signature, and cached per
process by (kernel, device id, dtype[, tile]); nothing compiled is ever pickled from the client.
Importing this module neither creates a CUDA context nor touches a device.

Verification status: every kernel is checked against scipy.ndimage / numpy under the CUDA
simulator (``tests/test_numba_cuda_sim.py``) and compiles to PTX with NVVM for sm_90 without a
device (:func:`_compile_ptx`), but the module was written on a machine without a GPU: the real
device path (CuPy interop, streams, launch limits) is covered by ``tests/test_engine_gpu.py``,
which only runs where a CUDA device is present.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from threading import RLock
from types import ModuleType

import numba
import numpy as np
from numba import cuda
from numba.core import config as _numba_config

from distconv.kernels._cache import KeyedCache
from distconv.kernels._numba_cuda_sources import SOURCES, python_kernel, signature
from distconv.kernels.registry import FLOAT_DTYPES  # the dtypes the kernels are compiled for

__all__ = [
    "CORRELATE_THREADS",
    "FLOAT_DTYPES",
    "MATMUL_TILE",
    "MAX_GRID_YZ",
    "MAX_MULTIPLY_BLOCKS",
    "MULTIPLY_THREADS",
    "SHARED_LIMIT",
    "SIMULATOR",
    "correlate_direct",
    "device_info",
    "map_chunk",
    "matmul",
    "multiply",
    "usable",
]

#: True when numba runs kernels in its CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``).
SIMULATOR: bool = bool(_numba_config.ENABLE_CUDASIM)

#: Threads per block for the correlation, as (y, x): 32 along x so one warp reads one row of
#: the input tile (coalesced loads, conflict-free shared reads), 8 rows: 256 threads.
CORRELATE_THREADS: tuple[int, int] = (8, 32)
#: Dynamic shared memory every CUDA device grants a block without cudaFuncSetAttribute.
SHARED_LIMIT: int = 48 * 1024
#: Side of the square matmul tile (tile x tile threads; two tiles of shared memory).
MATMUL_TILE: int = 16
#: Threads per block for the element-wise multiply.
MULTIPLY_THREADS: int = 256
#: Largest grid y/z extent CUDA allows; longer axes are covered by grid-stride loops.
MAX_GRID_YZ: int = 65535
#: Cap on blocks for the element-wise grid-stride loop (plenty to fill any current GPU).
MAX_MULTIPLY_BLOCKS: int = 65535


# --------------------------------------------------------------------------------------------
# Compiled kernels (their sources are in kernels/_numba_cuda_sources.py)
# --------------------------------------------------------------------------------------------

# The simulator runs one kernel at a time per process and swaps the kernel module's `cuda`
# global while one runs: calls take this (re-entrant: map_chunk holds it around user code that
# itself launches through _Call) one at a time there.
_SIMULATOR_LOCK = RLock()

# Compiled once per process under the cache's lock; never evicted (a handful per job).
_KERNELS: KeyedCache = KeyedCache(maxsize=None, compute_under_lock=True)


def _kernel(name: str, dtype: np.dtype, device_id: int, tile: int | None = None):
    """The compiled kernel for (name, device, dtype[, tile]), compiled once per process.

    Compilation happens under a lock (Dask runs several tasks per worker in threads) and inside
    the caller's device context, so the kernel is built for that device's compute capability.
    """
    key = (name, device_id, np.dtype(dtype).str, tile)
    return _KERNELS.get(
        key, lambda: cuda.jit(signature(name, dtype))(python_kernel(name, dtype, tile))
    )


def _compile_ptx(cc: tuple[int, int] = (9, 0)) -> dict[str, str]:
    """Compile every kernel for every dtype to PTX for compute capability ``cc``.

    Needs NVVM (a CUDA toolkit, or the ``nvidia-cuda-nvcc-cu12`` wheel with ``CUDA_HOME``
    pointing at it) but no device: a check that the kernels type and lower for real hardware.
    """
    ptx = {}
    for name in SOURCES:
        for dtype in FLOAT_DTYPES:
            tile = MATMUL_TILE if name == "matmul" else None
            source = python_kernel(name, dtype, tile)
            ptx[f"{name}-{dtype}"] = cuda.compile_ptx(source, signature(name, dtype).args, cc=cc)[0]
    return ptx


# --------------------------------------------------------------------------------------------
# Array placement: CuPy in -> CuPy out (on the block's device, CuPy's stream); NumPy in -> copy
# to the device, run, copy back.
# --------------------------------------------------------------------------------------------


def _is_cupy(a) -> bool:
    return type(a).__module__.split(".")[0] == "cupy"


def _cupy() -> ModuleType:
    import cupy  # only reached with CuPy arrays, so the host and simulator paths never need it

    return cupy


class _Call:
    """Where one engine call runs: the device, the stream and how arrays get there and back."""

    def __init__(self, *arrays) -> None:
        self.gpu = any(_is_cupy(a) for a in arrays)
        if self.gpu:
            self.xp = _cupy()
            self.device_id = next(a.device.id for a in arrays if _is_cupy(a))
        else:
            self.xp = np
            self.device_id = 0 if SIMULATOR else None  # resolved on entry

    @contextlib.contextmanager
    def active(self) -> Iterator[_Call]:
        """Make the call's device current for both CuPy and Numba.

        Under the simulator, one call at a time: it runs one kernel per process ("concurrent
        simulated kernel not supported"), and Dask's threads would launch several at once.
        """
        if SIMULATOR:
            with _SIMULATOR_LOCK:
                yield self
        elif self.gpu:
            with self.xp.cuda.Device(self.device_id), cuda.gpus[self.device_id]:
                yield self
        else:
            self.device_id = cuda.get_current_device().id
            yield self

    @property
    def stream(self):
        """CuPy's current stream: kernels queue behind the CuPy work that made their inputs.

        CuPy's null stream (pointer 0) is CUDA's legacy default stream; any other pointer,
        including CuPy's per-thread default stream, is wrapped as is.
        """
        if not self.gpu or SIMULATOR:
            return 0
        ptr = self.xp.cuda.get_current_stream().ptr
        return cuda.external_stream(ptr) if ptr else cuda.legacy_default_stream()

    def array(self, a, dtype: np.dtype):
        """An array of the call's kind (CuPy or NumPy) with ``dtype``; views are kept."""
        if self.gpu:
            if _is_cupy(a) and a.device.id != self.device_id:
                a = a.copy()  # CuPy copies onto the current (this call's) device
            return self.xp.asarray(a, dtype=dtype)
        if _is_cupy(a):
            a = a.get()
        return np.asarray(a, dtype=dtype)

    def to_kernel(self, a):
        """What a kernel takes: a zero-copy Numba view of a CuPy array, or a host-to-device copy."""
        if self.gpu:
            # No stream sync on import: CuPy reports its current stream, the one we launch on.
            return cuda.as_cuda_array(a, sync=False)
        return cuda.to_device(np.ascontiguousarray(a))

    def empty(self, shape, dtype: np.dtype):
        """An output the kernel writes, and a function returning it as the caller's array kind."""
        if self.gpu:
            out = self.xp.empty(shape, dtype=dtype)
            return cuda.as_cuda_array(out, sync=False), lambda: out
        out = cuda.device_array(shape, dtype=dtype)
        return out, out.copy_to_host


# Weights are small and the same for every chunk: keep their device copies per device (the
# first inserted goes first once 16 are kept).
_WEIGHTS: KeyedCache = KeyedCache(maxsize=16, policy="fifo")


def _device_weights(call: _Call, weights, dtype: np.dtype):
    if not call.gpu or _is_cupy(weights):
        return call.array(weights, dtype)
    host = np.ascontiguousarray(weights, dtype=dtype)
    key = (call.device_id, host.dtype.str, host.shape, host.tobytes())
    return _WEIGHTS.get(key, lambda: call.xp.asarray(host))


def _check_float(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"numba-cuda kernels run float32 or float64, not {dtype}")
    return dtype


# --------------------------------------------------------------------------------------------
# Engine operations (the per-chunk contract of distconv.kernels.registry)
# --------------------------------------------------------------------------------------------


def correlate_direct(
    block,
    weights,
    *,
    threads: tuple[int, int] | None = None,
    shared: bool | None = None,
    max_grid: int = MAX_GRID_YZ,
):
    """Valid correlation of a haloed block with the tiled shared-memory CUDA kernel.

    Parameters
    ----------
    block : cupy.ndarray or numpy.ndarray
        1-D, 2-D or 3-D float32/float64 block, padded for its halo; may be a strided view.
    weights : array_like
        Same ``ndim`` as ``block``; cast to ``block.dtype``.
    threads : tuple of int, optional
        Threads per block as ``(y, x)``; default :data:`CORRELATE_THREADS`.
    shared : bool, optional
        Force (True) or forbid (False) the shared-memory kernel; default: shared when the
        haloed tile fits :data:`SHARED_LIMIT`.
    max_grid : int
        Cap on grid y/z (CUDA's limit by default; smaller values exercise the grid-stride loops).

    Returns
    -------
    cupy.ndarray or numpy.ndarray
        ``block.shape[i] - weights.shape[i] + 1`` per axis, ``block.dtype``, same kind as
        ``block``.
    """
    dtype = _check_float(block.dtype)
    if not 1 <= block.ndim <= 3 or np.ndim(weights) != block.ndim:
        raise ValueError(
            f"numba-cuda correlate_direct needs 1-D to 3-D blocks and weights of "
            f"the same rank, got {block.ndim}-D and {np.ndim(weights)}-D"
        )
    out_shape = tuple(b - w + 1 for b, w in zip(block.shape, np.shape(weights)))
    if min(out_shape) < 1:
        raise ValueError(f"weights {np.shape(weights)} are larger than block {block.shape}")
    lead = (1,) * (3 - block.ndim)
    by, bx = threads or CORRELATE_THREADS
    call = _Call(block, weights)
    with call.active():
        x = call.array(block, dtype).reshape(lead + block.shape)  # unit axes: never a copy
        w = _device_weights(call, weights, dtype).reshape(lead + np.shape(weights))
        out, result = call.empty(lead + out_shape, dtype)
        kd, kh, kw = w.shape
        tile_bytes = (by + kh - 1) * (bx + kw - 1) * dtype.itemsize
        use_shared = tile_bytes <= SHARED_LIMIT if shared is None else shared
        grid = (
            math.ceil(out.shape[2] / bx),
            min(math.ceil(out.shape[1] / by), max_grid),
            min(out.shape[0], max_grid),
        )
        name = "correlate_shared" if use_shared else "correlate_global"
        kernel = _kernel(name, dtype, call.device_id)
        kernel[grid, (bx, by, 1), call.stream, tile_bytes if use_shared else 0](
            call.to_kernel(x), call.to_kernel(w), out
        )
        return result().reshape(out_shape)


def matmul(a, b, *, tile: int | None = None, max_grid: int = MAX_GRID_YZ):
    """``numpy.matmul`` semantics with a shared-memory tiled CUDA kernel.

    2-D operands and stacks of matrices (batch dimensions broadcast as NumPy does) run the
    kernel, one batch per grid z index; 1-D operands, empty shapes and non-float dtypes use the
    array library's ``matmul``.

    Parameters
    ----------
    a, b : cupy.ndarray or numpy.ndarray
        Operands; the result is CuPy if either is CuPy.
    tile : int, optional
        Tile side (threads per block = tile²); default :data:`MATMUL_TILE`.
    max_grid : int
        Cap on grid y/z (smaller values exercise the grid-stride loops).
    """
    call = _Call(a, b)
    dtype = np.result_type(a.dtype, b.dtype)
    with call.active():
        a = call.array(a, a.dtype)
        b = call.array(b, b.dtype)
        if dtype not in FLOAT_DTYPES or a.ndim < 2 or b.ndim < 2 or 0 in a.shape or 0 in b.shape:
            return call.xp.matmul(a, b)
        if a.shape[-1] != b.shape[-2]:
            raise ValueError(f"matmul: inner dimensions differ: {a.shape} @ {b.shape}")
        tile = tile or MATMUL_TILE
        batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        m, n = a.shape[-2], b.shape[-1]
        a3 = _stack(call.xp, a.astype(dtype, copy=False), batch)
        b3 = _stack(call.xp, b.astype(dtype, copy=False), batch)
        count = max(a3.shape[0], b3.shape[0])
        out, result = call.empty((count, m, n), dtype)
        grid = (math.ceil(n / tile), min(math.ceil(m / tile), max_grid), min(count, max_grid))
        kernel = _kernel("matmul", dtype, call.device_id, tile)
        kernel[grid, (tile, tile, 1), call.stream, 0](call.to_kernel(a3), call.to_kernel(b3), out)
        return result().reshape(batch + (m, n))


def _stack(xp: ModuleType, a, batch: tuple[int, ...]):
    """``a`` as (batches, rows, cols): 1 batch if it broadcasts whole, else the full batch."""
    if math.prod(a.shape[:-2]) == 1:
        return a.reshape((1,) + a.shape[-2:])
    if a.shape[:-2] != batch:
        a = xp.broadcast_to(a, batch + a.shape[-2:])
    return a.reshape((-1,) + a.shape[-2:])  # copies only when the batch axes are not mergeable


def multiply(a, b, *, threads: int | None = None, max_blocks: int = MAX_MULTIPLY_BLOCKS):
    """``numpy.multiply`` of two blocks: a CUDA kernel for equal float shapes.

    Parameters
    ----------
    a, b : cupy.ndarray or numpy.ndarray
        Operands; the result is CuPy if either is CuPy. Different shapes (broadcasting),
        scalars, non-float dtypes and empty arrays use the array library's ``multiply``.
    threads : int, optional
        Threads per block; default :data:`MULTIPLY_THREADS`.
    max_blocks : int
        Cap on the grid (the kernel strides over the rest).
    """
    call = _Call(a, b)
    with call.active():
        if not (hasattr(a, "shape") and hasattr(b, "shape")):
            return call.xp.multiply(a, b)
        dtype = np.result_type(a.dtype, b.dtype)
        a = call.array(a, a.dtype)
        b = call.array(b, b.dtype)
        if a.shape != b.shape or dtype not in FLOAT_DTYPES or a.size == 0:
            return call.xp.multiply(a, b)
        flat_a = call.xp.ascontiguousarray(a, dtype=dtype).reshape(-1)
        flat_b = call.xp.ascontiguousarray(b, dtype=dtype).reshape(-1)
        out, result = call.empty(flat_a.shape, dtype)
        threads = threads or MULTIPLY_THREADS
        grid = min(math.ceil(flat_a.size / threads), max_blocks)
        kernel = _kernel("multiply", dtype, call.device_id)
        kernel[grid, threads, call.stream, 0](call.to_kernel(flat_a), call.to_kernel(flat_b), out)
        return result().reshape(a.shape)


def map_chunk(fn, kwargs: dict, *blocks):
    """Run a user's Numba CUDA function (``distconv.map_chunks``) on device arrays.

    ``fn`` receives one Numba device array per block (a zero-copy view of a CuPy block, or a
    copy of a NumPy block on the current device, which is also what the CUDA simulator runs)
    and returns a device array (Numba's, CuPy's, anything with ``__cuda_array_interface__``) or
    a NumPy array. The result comes back in the blocks' kind: CuPy for CuPy blocks, else NumPy.
    """
    call = _Call(*blocks)
    # The simulator swaps the kernel module's `cuda` global while a kernel runs, so two threads
    # calling user code that uses `cuda` at once would see the fake module: one at a time there.
    with _SIMULATOR_LOCK if SIMULATOR else contextlib.nullcontext(), call.active():
        out = fn(*(call.to_kernel(call.array(b, b.dtype)) for b in blocks), **kwargs)
        if call.gpu:
            return call.xp.asarray(out)  # zero-copy through __cuda_array_interface__
        if hasattr(out, "copy_to_host"):
            return out.copy_to_host()
        return out.get() if _is_cupy(out) else np.asarray(out)


def usable() -> bool:
    """Whether kernels can run here: a CUDA device Numba sees, or the CUDA simulator."""
    if SIMULATOR:
        return True
    try:
        return bool(cuda.is_available())
    except Exception:  # a broken driver means no device, not a failed command
        return False


def device_info() -> str:
    """One line for ``distconv engines``: the GPUs Numba sees (or why there are none)."""
    implementation = getattr(cuda, "implementation", "numba.cuda")
    if SIMULATOR:
        return f"numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1; numba {numba.__version__})"
    try:
        if not cuda.is_available():
            return f"no CUDA device visible to numba.cuda (numba {numba.__version__})"
        names = []
        for device in cuda.list_devices():
            name = device.name.decode() if isinstance(device.name, bytes) else str(device.name)
            cc = ".".join(map(str, device.compute_capability))
            names.append(f"{device.id}: {name} (sm {cc})")
    except Exception as error:  # a broken driver must not break `distconv engines`
        return f"numba.cuda unavailable: {error}"
    return f"{'; '.join(names)} (numba {numba.__version__}, {implementation} numba.cuda)"
