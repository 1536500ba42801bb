"""TensorFlow engine: ``tf.nn.convolution``, ``tf.signal`` FFTs and ``tf.linalg.matmul`` per chunk.

Every function follows the per-chunk contract in :mod:`distconv.kernels.registry` (which also
holds this engine's ranks, dtypes and cost model): NumPy in, NumPy out, the block arrives padded
for its halo and the *valid* correlation comes back in ``block.dtype``.

One :func:`tf.function` exists per (operation, rank, dtype), with an ``input_signature`` of
``None`` dimensions, so a job over many chunk shapes traces once per worker process. The functions
are built lazily on first use inside the process that computes (never pickled from the client),
and every shape-dependent quantity (the FFT length, the kernel size) is a tensor argument. The
weights are an argument too, so a second kernel reuses the same graph. :data:`TRACES` counts the
traces.

For the correlations, "rank" is the number of *filtered* axes: the others are moved to a leading
batch axis. TensorFlow's convolutions and FFTs handle up to three spatial axes; a kernel that
filters more is peeled one axis at a time (a sum over that axis' taps of lower-rank correlations).
TensorFlow's conv ops compute a correlation, which is exactly the contract's primitive (the plan
has already flipped the weights for a convolution).

Importing this module sets TensorFlow's thread pools to the calling Dask worker's ``nthreads``
(or ``os.cpu_count()`` outside a worker) and, on a GPU worker, keeps only the worker's GPU visible
with memory growth on; both must happen before TensorFlow's runtime starts.
"""

from __future__ import annotations

import collections
import os
import sys
from collections.abc import Callable, Sequence

import numpy as np
import scipy.fft

from distconv.kernels._cache import KeyedCache
from distconv.kernels.registry import CORRELATE_OPS, LINALG_OPS
from distconv.kernels.registry import (
    TENSORFLOW_MATMUL_NATIVE as _MATMUL_NATIVE,
)
from distconv.kernels.registry import (
    TENSORFLOW_MATMUL_WIDEN as _MATMUL_WIDEN,
)
from distconv.kernels.registry import (
    TENSORFLOW_MULTIPLY_NATIVE as _MULTIPLY_NATIVE,
)
from distconv.kernels.registry import (
    TENSORFLOW_MULTIPLY_WIDEN as _MULTIPLY_WIDEN,
)

# Keep INFO banners out of worker logs: set for TensorFlow's import only, so a caller's
# process that imports this module keeps its environment as it was.
_LOG_LEVEL_SET = "TF_CPP_MIN_LOG_LEVEL" not in os.environ
if _LOG_LEVEL_SET:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "1"
try:
    import tensorflow as tf
finally:
    if _LOG_LEVEL_SET:
        os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)

__all__ = [
    "DIRECT_TILE",
    "MAX_SPATIAL",
    "THREADS",
    "TRACES",
    *CORRELATE_OPS,
    "device_info",
    "map_chunk",
    *LINALG_OPS,
]

# Number of traces per (operation, rank, dtype name); the traced Python body increments it, and
# that body only runs while TensorFlow traces.
TRACES: collections.Counter = collections.Counter()

MAX_SPATIAL = 3  # tf.nn.convolution and tf.signal.rfft{,2d,3d} handle 1 to 3 spatial axes


def _worker_threads() -> int | None:
    """Threads this process may use: the Dask worker's ``nthreads``; None outside a worker."""
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except Exception:  # not running inside a Dask worker (client, tests, plain scripts)
        return None


def _configure_runtime() -> int:
    """Size the thread pools and tame the GPU in a Dask worker; a no-op once TensorFlow's
    runtime has started. In any other process (a caller's script on local threads) TensorFlow's
    threading and devices are the caller's: they are left as they are (they cannot be put back
    once an op ran)."""
    threads = _worker_threads()
    if threads is None:
        return os.cpu_count() or 1
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # TensorFlow already ran an op in this process: its pools are fixed
    try:
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            # dask-cuda puts the worker's own GPU first in CUDA_VISIBLE_DEVICES.
            tf.config.set_visible_devices(gpus[:1], "GPU")
            for gpu in gpus[:1]:
                tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
        pass  # TF's runtime already started in this process: its earlier settings stand
    return threads


# Threads requested for TensorFlow's pools at import: this worker's share of the cores.
THREADS: int = _configure_runtime()


# --- compiled functions, one per (operation, rank, dtype), cached in this process -------------

# Traced once per process, under the cache's lock; never evicted (a job has a handful).
_FUNCTIONS: KeyedCache = KeyedCache(maxsize=None, compute_under_lock=True)


def _spec(rank: int, dtype: tf.DType) -> tf.TensorSpec:
    return tf.TensorSpec(shape=[None] * rank, dtype=dtype)


def _build_direct(key: tuple, rank: int, dtype: tf.DType) -> Callable:
    def direct(block, weights):
        # block: [batch, *spatial]; weights: [*kernel] over the same spatial axes.
        TRACES[key] += 1
        kernel = tf.reshape(weights, tf.concat([tf.shape(weights), [1, 1]], axis=0))
        kernel = tf.ensure_shape(kernel, [None] * (rank + 2))
        out = tf.nn.convolution(block[..., tf.newaxis], kernel, padding="VALID")
        return out[..., 0]

    return tf.function(direct, input_signature=[_spec(rank + 1, dtype), _spec(rank, dtype)])


_RFFT = {
    1: (tf.signal.rfft, tf.signal.irfft),
    2: (tf.signal.rfft2d, tf.signal.irfft2d),
    3: (tf.signal.rfft3d, tf.signal.irfft3d),
}


def _build_fft(key: tuple, rank: int, dtype: tf.DType) -> Callable:
    rfft, irfft = _RFFT[rank]
    complex_dtype = tf.complex64 if dtype == tf.float32 else tf.complex128

    def fft(block, spectrum, fft_length, kernel_size):
        # Overlap-save: a circular correlation of length L >= n is exact at k-1 .. n-1.
        TRACES[key] += 1
        full = irfft(rfft(block, fft_length) * spectrum, fft_length)
        valid = tf.shape(block)[1:] - kernel_size + 1
        begin = tf.concat([[0], kernel_size - 1], axis=0)
        size = tf.concat([[-1], valid], axis=0)
        return tf.slice(full, begin, size)

    signature = [
        _spec(rank + 1, dtype),
        _spec(rank, complex_dtype),
        tf.TensorSpec([rank], tf.int32),
        tf.TensorSpec([rank], tf.int32),
    ]
    return tf.function(fft, input_signature=signature)


def _build_separable(key: tuple, rank: int, dtype: tf.DType) -> Callable:
    def separable(block, *factors):
        # One 1-D VALID correlation per spatial axis, as a conv whose kernel is 1 wide elsewhere.
        TRACES[key] += 1
        out = block[..., tf.newaxis]
        for axis, factor in enumerate(factors):
            shape = [1] * (rank + 2)
            shape[axis] = -1
            out = tf.nn.convolution(out, tf.reshape(factor, shape), padding="VALID")
        return out[..., 0]

    signature = [_spec(rank + 1, dtype)] + [_spec(1, dtype)] * rank
    return tf.function(separable, input_signature=signature)


def _build_matmul(key: tuple, rank: int, dtype: tf.DType) -> Callable:
    def matmul(a, b):
        TRACES[key] += 1
        return tf.linalg.matmul(a, b)

    return tf.function(matmul, input_signature=[_spec(rank, dtype), _spec(rank, dtype)])


def _build_multiply(key: tuple, rank: int, dtype: tf.DType) -> Callable:
    def multiply(a, b):
        TRACES[key] += 1
        return tf.multiply(a, b)

    return tf.function(multiply, input_signature=[_spec(rank, dtype), _spec(rank, dtype)])


_BUILDERS = {
    "correlate_direct": _build_direct,
    "correlate_fft": _build_fft,
    "correlate_separable": _build_separable,
    "matmul": _build_matmul,
    "multiply": _build_multiply,
}


def _function(op: str, rank: int, dtype: np.dtype) -> Callable:
    """The process-wide ``tf.function`` for (op, rank, dtype), traced once on first request."""
    key = (op, rank, np.dtype(dtype).name)

    def build() -> Callable:
        function = _BUILDERS[op](key, rank, tf.as_dtype(np.dtype(dtype)))
        function.get_concrete_function()  # trace now, once, under the lock
        return function

    return _FUNCTIONS.get(key, build)


# --- correlations ---------------------------------------------------------------------------


def correlate_direct(block: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Valid correlation of a padded block with ``tf.nn.convolution`` (padding ``"VALID"``).

    ``block`` is a float32 or float64 NumPy array, already padded for the halo; ``weights`` has
    ``block.ndim`` axes (size 1 on axes that are not filtered). Returns a NumPy array with
    ``block.shape[i] - weights.shape[i] + 1`` samples per axis, in ``block.dtype``.
    """
    weights = np.asarray(weights, dtype=block.dtype)

    def run(part: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        return _direct_tiled(_function("correlate_direct", kernel.ndim, part.dtype), part, kernel)

    return _correlate(block, weights, run, skip_zero_taps=True)


# Output samples per tf.nn.convolution call. TensorFlow's Eigen convolution (the path without
# oneDNN) dies with std::bad_alloc on one 8192² image and a 31×31 kernel; bands of this size
# keep its scratch memory small at no cost in speed.
DIRECT_TILE = 1 << 22


def _direct_tiled(function: Callable, part: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Run the direct graph on ``[batch, *spatial]`` in pieces of at most DIRECT_TILE outputs."""
    spatial_out = [n - k + 1 for n, k in zip(part.shape[1:], kernel.shape)]
    per_item = int(np.prod(spatial_out))
    batch = part.shape[0]
    if batch * per_item <= DIRECT_TILE:
        return function(part, kernel).numpy()
    out = np.empty([batch] + spatial_out, dtype=part.dtype)
    if per_item <= DIRECT_TILE:  # many small items: whole items per call
        step = DIRECT_TILE // per_item
        for start in range(0, batch, step):
            out[start : start + step] = function(part[start : start + step], kernel).numpy()
        return out
    # Large items: bands along the first spatial axis, each with the kernel's overlap.
    rows = max(1, DIRECT_TILE // (per_item // spatial_out[0]))
    for item in range(batch):
        for start in range(0, spatial_out[0], rows):
            stop = min(start + rows, spatial_out[0])
            band = part[item : item + 1, start : stop + kernel.shape[0] - 1]
            out[item : item + 1, start:stop] = function(band, kernel).numpy()
    return out


def correlate_fft(block: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Valid correlation by FFT overlap-save on the haloed block with ``tf.signal``.

    Each filtered axis is padded to ``scipy.fft.next_fast_len(n, real=True)``; a circular
    correlation of that length is exact at indices ``k-1 .. n-1``, which is all the contract asks
    for. The weights' spectrum is computed in float64 with SciPy (cached per process) and passed
    to the graph as an argument, as are the FFT length and the kernel size. ``block`` and
    ``weights`` are as for :func:`correlate_direct`; returns the valid correlation, in
    ``block.dtype``.
    """
    weights = np.asarray(weights, dtype=block.dtype)

    def run(part: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        lengths = tuple(scipy.fft.next_fast_len(n, real=True) for n in part.shape[1:])
        spectrum = _weights_spectrum(kernel, lengths)
        function = _function("correlate_fft", kernel.ndim, part.dtype)
        return function(
            part, spectrum, np.array(lengths, np.int32), np.array(kernel.shape, np.int32)
        ).numpy()

    return _correlate(block, weights, run, skip_zero_taps=False)


def correlate_separable(block: np.ndarray, factors: Sequence[np.ndarray | None]) -> np.ndarray:
    """Valid correlation with a rank-1 kernel, one 1-D ``tf.nn.convolution`` pass per axis.

    ``block`` is a float32 or float64 NumPy array, already padded for the halo; ``factors`` holds
    one 1-D factor per axis of ``block``, or None for an axis that is not filtered. Returns the
    valid correlation with the outer product of the factors, in ``block.dtype``.
    """
    axes = [a for a, f in enumerate(factors) if f is not None]
    if not axes:
        return block.copy()
    if len(axes) > MAX_SPATIAL:  # filter in groups of three axes, one after another
        first = [f if a in axes[:MAX_SPATIAL] else None for a, f in enumerate(factors)]
        rest = [f if a in axes[MAX_SPATIAL:] else None for a, f in enumerate(factors)]
        return correlate_separable(correlate_separable(block, first), rest)
    batched, restore = _to_batched(block, axes)
    function = _function("correlate_separable", len(axes), block.dtype)
    out = function(batched, *(np.asarray(factors[a], dtype=block.dtype) for a in axes))
    return restore(out.numpy(), [block.shape[a] - len(factors[a]) + 1 for a in axes])


def _correlate(
    block: np.ndarray,
    weights: np.ndarray,
    run: Callable[[np.ndarray, np.ndarray], np.ndarray],
    skip_zero_taps: bool,
) -> np.ndarray:
    """Bring a correlation to the batched layout ``run`` takes; peel axes beyond the third.

    ``run(part, kernel)`` correlates ``part`` of shape ``[batch, *spatial]`` with ``kernel`` of
    shape ``[*kernel]`` over the spatial axes.
    """
    axes = [a for a, size in enumerate(weights.shape) if size > 1]
    out_shape = [b - w + 1 for b, w in zip(block.shape, weights.shape)]
    if not axes:
        return (block * weights.reshape(())).astype(block.dtype, copy=False)
    if len(axes) > MAX_SPATIAL:
        # Sum over the first filtered axis' taps of correlations with one slice of the kernel.
        axis, total = axes[0], np.zeros(out_shape, dtype=block.dtype)
        for tap in range(weights.shape[axis]):
            kernel = np.take(weights, [tap], axis=axis)
            if skip_zero_taps and not kernel.any():
                continue
            part = np.take(block, range(tap, tap + out_shape[axis]), axis=axis)
            total += _correlate(part, kernel, run, skip_zero_taps)
        return total
    batched, restore = _to_batched(block, axes)
    kernel = np.ascontiguousarray(weights.reshape([weights.shape[a] for a in axes]))
    return restore(run(batched, kernel), [out_shape[a] for a in axes])


def _to_batched(block: np.ndarray, axes: Sequence[int]):
    """Move the unfiltered axes to one leading batch axis: ``[batch, *block.shape[axes]]``.

    Returns the batched array and a function mapping a ``[batch, *spatial_out]`` result back to
    ``block``'s axis order.
    """
    others = [a for a in range(block.ndim) if a not in axes]
    moved = np.moveaxis(block, others, list(range(len(others))))
    batched = np.ascontiguousarray(moved.reshape([-1] + [block.shape[a] for a in axes]))

    def restore(out: np.ndarray, spatial_out: Sequence[int]) -> np.ndarray:
        out = out.reshape([block.shape[a] for a in others] + list(spatial_out))
        out = np.moveaxis(out, list(range(len(others))), others)
        return np.ascontiguousarray(out, dtype=block.dtype)

    return batched, restore


# The spectrum of the flipped weights is the same for every interior chunk: keep a few per
# process, keyed by the weights' bytes and the FFT lengths.
_SPECTRA: KeyedCache = KeyedCache(maxsize=8, policy="lru")


def _weights_spectrum(kernel: np.ndarray, lengths: tuple[int, ...]) -> np.ndarray:
    """``rfftn`` of the flipped kernel zero-padded to ``lengths``, in the kernel's precision."""
    key = (kernel.tobytes(), kernel.shape, kernel.dtype.str, lengths)

    def compute() -> np.ndarray:
        flipped = kernel[(slice(None, None, -1),) * kernel.ndim].astype(np.float64)
        complex_dtype = np.complex64 if kernel.dtype == np.float32 else np.complex128
        return scipy.fft.rfftn(flipped, s=lengths).astype(complex_dtype)

    return _SPECTRA.get(key, compute)


# --- linear algebra ---------------------------------------------------------------------------


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``numpy.matmul`` on one pair of blocks with ``tf.linalg.matmul``.

    Parameters
    ----------
    a, b : numpy.ndarray
        Operands with at least one dimension; batch dimensions broadcast, a 1-D operand is
        promoted to a matrix and its axis removed from the result, as in NumPy.

    Returns
    -------
    numpy.ndarray
        The product in ``numpy.result_type(a, b)``.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul: input operand does not have enough dimensions")
    dtype = np.result_type(a, b)
    if dtype not in _MATMUL_NATIVE and dtype not in _MATMUL_WIDEN:
        raise TypeError(f"the tensorflow engine cannot matmul {dtype} arrays")
    compute = _MATMUL_WIDEN.get(dtype, dtype)
    vector_a, vector_b = a.ndim == 1, b.ndim == 1
    a2 = a[np.newaxis, :] if vector_a else a
    b2 = b[:, np.newaxis] if vector_b else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(f"matmul: mismatch in core dimension: {a.shape} @ {b.shape}")
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])  # raises NumPy's error
    rank = len(batch) + 2
    a2 = a2.reshape((1,) * (rank - a2.ndim) + a2.shape).astype(compute, copy=False)
    b2 = b2.reshape((1,) * (rank - b2.ndim) + b2.shape).astype(compute, copy=False)
    out = _function("matmul", rank, compute)(a2, b2).numpy()
    if vector_a:
        out = out[..., 0, :]
    if vector_b:
        out = out[..., 0]
    return np.asarray(out).astype(dtype, copy=False)


def multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``numpy.multiply`` on one pair of blocks with ``tf.multiply`` (broadcasting).

    Parameters
    ----------
    a, b : numpy.ndarray
        Operands whose shapes broadcast.

    Returns
    -------
    numpy.ndarray
        The element-wise product in ``numpy.result_type(a, b)``.
    """
    a, b = np.asarray(a), np.asarray(b)
    dtype = np.result_type(a, b)
    if dtype not in _MULTIPLY_NATIVE and dtype not in _MULTIPLY_WIDEN:
        raise TypeError(f"the tensorflow engine cannot multiply {dtype} arrays")
    compute = _MULTIPLY_WIDEN.get(dtype, dtype)
    rank = len(np.broadcast_shapes(a.shape, b.shape))  # raises NumPy's error
    a = a.reshape((1,) * (rank - a.ndim) + a.shape).astype(compute, copy=False)
    b = b.reshape((1,) * (rank - b.ndim) + b.shape).astype(compute, copy=False)
    out = _function("multiply", rank, compute)(a, b).numpy()
    return np.asarray(out).astype(dtype, copy=False)


# --- user functions (distconv.map_chunks) --------------------------------------------------


def map_chunk(fn: Callable, token: str, kwargs: dict, *blocks: np.ndarray) -> np.ndarray:
    """Run a user's TensorFlow function on NumPy blocks as a cached ``tf.function``.

    One ``tf.function`` exists per (function token, rank and dtype of every block), with an
    ``input_signature`` of ``None`` dimensions, so a job over chunks of many shapes traces it once
    per worker process (counted in :data:`TRACES` under ``("map_chunks", token, signature)``).
    The blocks become tensors at the call and the result becomes NumPy on return, nowhere else;
    the call runs on the worker's GPU when TensorFlow sees one.

    Parameters
    ----------
    fn : callable
        Takes one tensor per block (plus ``kwargs``, fixed at trace time), returns one tensor.
    token : str
        Identifies ``fn`` and ``kwargs`` across processes (the client computes it once, so a
        function unpickled anew for every task still finds its traced graph).
    kwargs : dict
        Constant keyword arguments for ``fn``.
    *blocks : numpy.ndarray
        The chunk(s), already haloed.
    """
    signature = tuple((block.ndim, np.dtype(block.dtype).name) for block in blocks)
    key = ("map_chunks", token, signature)

    def build() -> Callable:
        def body(*tensors):
            TRACES[key] += 1
            return fn(*tensors, **kwargs)

        specs = [_spec(rank, tf.as_dtype(np.dtype(name))) for rank, name in signature]
        function = tf.function(body, input_signature=specs)
        function.get_concrete_function()  # trace now, once, under the lock
        return function

    function = _FUNCTIONS.get(key, build)
    with tf.device(_compute_device()):
        out = function(*blocks)
    if not isinstance(out, (tf.Tensor, np.ndarray)):
        raise TypeError(
            f"the function returned {type(out).__name__}; map_chunks needs one tensor per chunk"
        )
    return out.numpy() if isinstance(out, tf.Tensor) else out


def _compute_device() -> str:
    """The worker's own GPU (the only one left visible by :func:`_configure_runtime`) or CPU."""
    return "/GPU:0" if tf.config.list_logical_devices("GPU") else "/CPU:0"


# --- information -----------------------------------------------------------------------------


def device_info() -> str:
    """One line for ``distconv engines``: the device TensorFlow computes on and its threads."""
    gpus = tf.config.get_visible_devices("GPU")
    where = f"GPU {gpus[0].name}" if gpus else "CPU"
    threads = tf.config.threading.get_intra_op_parallelism_threads() or THREADS
    return (
        f"{where} (TensorFlow {tf.__version__}, {threads} intra-op threads, "
        f"{len(_FUNCTIONS)} compiled functions)"
    )
