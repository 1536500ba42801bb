"""What distconv knows about each engine without importing it.

An engine is one module of this package (shipped as ``distconv.kernels.<module>``) holding only
per-chunk functions. Everything needed to *plan* a job lives here instead: the packages an engine
needs, its device, the operations it implements and on which ranks and dtypes, its cost model for
``method="auto"``, and how :func:`distconv.map_chunks` calls a user function on it. Availability
is checked with :func:`importlib.util.find_spec`; an engine module is imported only when a chunk
is computed (:func:`get_engine`, :func:`get_op`), so planning a job in the client imports neither
TensorFlow, nor Numba, nor CuPy.

Per-chunk contract (every engine module implements the operations its spec lists):

``correlate_direct(block, weights) -> out``
``correlate_fft(block, weights) -> out``
    ``block`` is a float32 or float64 array already padded for its halo; ``weights`` has the same
    dtype and ``ndim`` (size 1 on axes that are not filtered). Return the *valid* correlation,
    ``out.shape[i] == block.shape[i] - weights.shape[i] + 1``, in ``block.dtype``.
``correlate_separable(block, factors) -> out``
    ``factors[i]`` is a 1-D array of ``block.dtype`` for each filtered axis, or ``None`` for an
    axis that is not filtered. Return the valid correlation with the outer product of the factors.
``matmul(a, b) -> out`` and ``multiply(a, b) -> out``
    NumPy semantics on one block each (the graph has already aligned the blocks).
``wiener_filter(block, psf, balance, reg) -> out``
    Wiener–Hunt deconvolution of the whole block, circular over it (scikit-image's formula,
    no clipping), in ``block.dtype``. Richardson–Lucy needs no op of its own: it runs on the
    correlation ops (:mod:`distconv.ops.deconvolve_blocks`).

An engine module may also define ``device_info() -> str`` for ``distconv engines`` and
``map_chunk`` for :func:`distconv.map_chunks` (called through its spec's runner). Which ranks and
dtypes an engine takes is its spec's ``rule`` here, never a function of the module. Functions
must be pure; compiled artifacts are created and cached inside the worker process
(:class:`distconv.kernels._cache.KeyedCache`), never pickled from the client.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from types import ModuleType
from typing import Any

import numpy as np

from distconv.errors import EngineError

__all__ = [
    "CHUNK_ENGINES",
    "CORRELATE_OPS",
    "CPU_PREFERENCE",
    "DECONVOLUTION_OPS",
    "ENGINES",
    "EngineSpec",
    "FFT_COST_DUCC0",
    "FFT_COST_SCIPY",
    "FLOAT_DTYPES",
    "GPU_ENGINES",
    "GPU_PREFERENCE",
    "LINALG_OPS",
    "TENSORFLOW_MATMUL_NATIVE",
    "TENSORFLOW_MATMUL_WIDEN",
    "TENSORFLOW_MULTIPLY_NATIVE",
    "TENSORFLOW_MULTIPLY_WIDEN",
    "chunk_runner",
    "ducc0_installed",
    "engine_names",
    "get_engine",
    "get_op",
    "install_hint",
    "installed_engines",
    "is_gpu_engine",
    "is_installed",
    "resolve_engine",
    "run_direct",
    "supports",
]

CORRELATE_OPS = ("correlate_direct", "correlate_fft", "correlate_separable")
LINALG_OPS = ("matmul", "multiply")
#: Whole-block deconvolution filters (Richardson–Lucy runs on the correlation ops).
DECONVOLUTION_OPS = ("wiener_filter",)

#: dtypes every correlation engine computes in (and the numba-cuda kernels are compiled for).
FLOAT_DTYPES: tuple[np.dtype, ...] = (np.dtype(np.float32), np.dtype(np.float64))

Rule = Callable[[str, int, Any], bool]
Runner = Callable[[Callable, str, dict, tuple], Any]


# --- which ranks and dtypes each engine takes (pure: no engine import) -----------------------


def _numba_rule(op: str, ndim: int, dtype) -> bool:
    """numba: correlation of float32/float64 blocks of any rank >= 1 (the row loop does not
    depend on the rank) and ``multiply`` of any numeric dtype (NumPy fallback beyond the
    compiled same-shape case)."""
    dtype = np.dtype(dtype)
    if op in ("correlate_direct", "correlate_separable"):
        return ndim >= 1 and dtype in FLOAT_DTYPES
    if op == "multiply":
        return dtype.kind in "biufc"
    return False


TENSORFLOW_MATMUL_NATIVE = frozenset(
    np.dtype(t)
    for t in (np.float16, np.float32, np.float64, np.int32, np.int64, np.complex64, np.complex128)
)
# Integer types TensorFlow's matmul lacks: computed in a wider integer, then wrapped back, which
# gives NumPy's modular result exactly.
TENSORFLOW_MATMUL_WIDEN: Mapping[np.dtype, np.dtype] = {
    np.dtype(np.int8): np.dtype(np.int32),
    np.dtype(np.int16): np.dtype(np.int32),
    np.dtype(np.uint8): np.dtype(np.int32),
    np.dtype(np.uint16): np.dtype(np.int32),
    np.dtype(np.uint32): np.dtype(np.int64),
}
TENSORFLOW_MULTIPLY_NATIVE = (
    TENSORFLOW_MATMUL_NATIVE | set(TENSORFLOW_MATMUL_WIDEN) | {np.dtype(np.uint64)}
)
TENSORFLOW_MULTIPLY_WIDEN: Mapping[np.dtype, np.dtype] = {np.dtype(bool): np.dtype(np.uint8)}


def _tensorflow_rule(op: str, ndim: int, dtype) -> bool:
    """tensorflow: correlations of float32/float64 of any rank (three filtered axes per
    TensorFlow call, more by peeling; float64 stays float64), matmul and multiply of the dtypes
    TensorFlow computes natively or in a wider integer."""
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        return False
    if op in CORRELATE_OPS:
        return ndim >= 1 and dtype in FLOAT_DTYPES
    if op == "matmul":
        return ndim >= 1 and (dtype in TENSORFLOW_MATMUL_NATIVE or dtype in TENSORFLOW_MATMUL_WIDEN)
    if op == "multiply":
        return ndim >= 0 and (
            dtype in TENSORFLOW_MULTIPLY_NATIVE or dtype in TENSORFLOW_MULTIPLY_WIDEN
        )
    return False


def _cupy_rule(op: str, ndim: int, dtype) -> bool:
    """cupy: correlations and the Wiener filter of float32/float64 of any rank; matmul and
    multiply: any numeric."""
    dtype = np.dtype(dtype)
    if op in CORRELATE_OPS or op in DECONVOLUTION_OPS:
        return ndim >= 1 and dtype in FLOAT_DTYPES
    return op in LINALG_OPS and dtype.kind in "biufc"


def _numba_cuda_rule(op: str, ndim: int, dtype) -> bool:
    """numba-cuda: direct correlation of 1-D, 2-D and 3-D float32/float64; matmul and multiply
    of float32/float64 at any rank (1-D matmul operands and broadcasting multiplies use the
    array library)."""
    if np.dtype(dtype) not in FLOAT_DTYPES:
        return False
    if op == "correlate_direct":
        return 1 <= ndim <= 3
    return op in LINALG_OPS and ndim >= 1


# --- cost models for method="auto" (distconv.plan.method_costs) ------------------------------
# Each COST[method] is seconds per unit of work, or (seconds per output pixel, seconds per unit
# of work). Work: direct = nonzero taps x pixels; separable = sum of 1-D taps x pixels;
# fft = 2 x padded samples x log2(padded samples). A method an engine does not price falls back
# to scipy's constant.


@cache
def ducc0_installed() -> bool:
    """Whether ducc0 (a core dependency; scipy.fft is the fallback) can be imported; it is not
    imported here."""
    return importlib.util.find_spec("ducc0") is not None


# scipy: fitted on 1024x1024 float32 blocks on the 2-core CI machine (kernels 3..31); FFT
# already wins from 5x5 on, direct only for tiny kernels. With ducc0 the same FFT passes take
# about two thirds of scipy.fft's time (20 vs 30 ms per 2078² float32 chunk,
# benchmarks/RESULTS.md).
FFT_COST_SCIPY = 7.0e-10
FFT_COST_DUCC0 = 0.67 * FFT_COST_SCIPY
_SCIPY_COST = {
    "direct": (9.7e-9, 1.5e-9),
    "fft": (0.0, FFT_COST_DUCC0 if ducc0_installed() else FFT_COST_SCIPY),
    "separable": (1.2e-8, 9.0e-10),
}

# numba: fitted with ``python benchmarks/engines.py --fit --engines numba`` on 1024x1024 float32
# blocks (kernels 3..31) on the 2-core CI machine, in the same run as a refit of the scipy
# engine, and scaled by scipy's constants over that refit (~1.7x) so both engines share one
# scale. Direct's per-tap cost is ~1e-10 with the float32 accumulator (<= 128 taps) and
# ~1.9e-10 with float64; 1.6e-10 puts the direct/FFT crossover at ~13x13, where it was measured.
_NUMBA_COST = {"direct": (6.0e-10, 1.6e-10), "separable": (2.6e-9, 1.2e-10)}

# tensorflow: fitted with ``python benchmarks/engines.py --fit --engines tensorflow`` on
# 1024x1024 float32 blocks (kernels 3..31, 2 threads) on the shared 2-core machine and rescaled
# to scipy's COST from the same run (x0.92). TensorFlow's conv is 2.4-5.4x scipy.ndimage there
# and its separable passes ~2.2x, while its FFT is ~0.7x scipy.fft; the model puts the
# direct/FFT crossover at ~10x10 (measured: FFT is faster from 9x9 on).
_TENSORFLOW_COST = {
    "direct": (7.0e-9, 3.3e-10),
    "fft": (0.0, 9.0e-10),
    "separable": (6.4e-9, 3.6e-10),
}

# cupy: direct and separable are order-of-magnitude estimates written without a GPU (cupyx's
# generic correlate kernel ~2e12 taps/s; 1-D passes bandwidth-bound). fft is set from the H200
# (2026-12-04, benchmarks/RESULTS.md "GPU engines"): with tiles run by threads, cupyx's FFT path
# lost to its direct kernel at every small kernel measured (512³ uint16, 5³, 128³ chunks: direct
# 0.52 s, fft 1.53 s; 4096², 9×9: fft 1.69× the copy, numba-cuda's direct 1.12×) and won at
# 31×31. 3.3e-12 puts the crossover near 17×17 in 2-D and 7³ in 3-D.
_CUPY_COST = {"direct": 5e-13, "fft": 3.3e-12, "separable": 3e-13}

# numba-cuda: UNMEASURED, from H100 throughput (about 2e12 taps/s for a shared-memory
# stencil), written without a GPU. Only "direct" is priced: other methods use scipy's COST.
_NUMBA_CUDA_COST = {"direct": 5e-13}


# --- how distconv.map_chunks calls a user function on each engine ----------------------------


def run_direct(fn: Callable, token: str, kwargs: dict, blocks: tuple) -> np.ndarray:
    """Call ``fn`` on NumPy blocks (engines ``numpy``, ``scipy``, ``numba``).

    Parameters
    ----------
    fn : callable
        The user's function (a Numba ``@njit`` function is just a function).
    token : str
        Identifies ``fn`` and ``kwargs`` (unused here).
    kwargs : dict
        Constant keyword arguments for ``fn``.
    blocks : tuple of numpy.ndarray
        The haloed chunk(s).

    Returns
    -------
    numpy.ndarray
    """
    return np.asarray(fn(*blocks, **kwargs))


def _run_tensorflow(fn: Callable, token: str, kwargs: dict, blocks: tuple):
    return _import("tensorflow").map_chunk(fn, token, kwargs, *blocks)


def _run_cupy(fn: Callable, token: str, kwargs: dict, blocks: tuple):
    return _import("cupy").map_chunk(fn, kwargs, *blocks)


def _run_numba_cuda(fn: Callable, token: str, kwargs: dict, blocks: tuple):
    return _import("numba_cuda").map_chunk(fn, kwargs, *blocks)


# --- the registry ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineSpec:
    """What the registry knows about an engine before importing it.

    Attributes
    ----------
    name : str
        The engine's name (``engine=`` / ``--engine``).
    module : str
        Its module in this package.
    requires : tuple of str
        Packages it needs (checked with ``find_spec``).
    extra : str
        The pip extra installing them (``""``: core).
    device : {'cpu', 'gpu'}
        Where it computes.
    ops : tuple of str
        The per-chunk operations it implements.
    rule : callable or None
        ``rule(op, ndim, dtype) -> bool``: the ranks and dtypes it takes (None: every one).
    cost : dict
        ``method -> seconds per unit`` or ``(seconds per pixel, seconds per unit)``.
    map_chunk : callable
        ``runner(fn, token, kwargs, blocks)``: how :func:`distconv.map_chunks` calls a user
        function on this engine.
    map_chunk_requires : tuple of str or None
        Packages :func:`distconv.map_chunks` needs for it, when fewer than ``requires``.
    """

    name: str
    module: str
    requires: tuple[str, ...]
    extra: str
    device: str  # "cpu" or "gpu"
    ops: tuple[str, ...]
    rule: Rule | None = field(default=None, compare=False)
    cost: dict = field(default_factory=dict, compare=False)
    map_chunk: Runner = field(default=run_direct, compare=False)
    map_chunk_requires: tuple[str, ...] | None = None

    def supports(self, op: str, ndim: int, dtype) -> bool:
        """Whether this engine implements ``op`` for ``ndim``-D blocks of ``dtype``.

        Pure: neither imports the engine nor checks that it is installed (see :func:`supports`).
        """
        if op not in self.ops:
            return False
        return True if self.rule is None else bool(self.rule(op, ndim, dtype))


ENGINES: dict[str, EngineSpec] = {
    spec.name: spec
    for spec in (
        EngineSpec(
            "scipy",
            "scipy",
            ("scipy", "numpy"),
            "",
            "cpu",
            CORRELATE_OPS + LINALG_OPS + DECONVOLUTION_OPS,
            cost=_SCIPY_COST,
        ),
        EngineSpec(
            "numba",
            "numba_cpu",
            ("numba",),
            "",  # a core dependency
            "cpu",
            CORRELATE_OPS[::2] + ("multiply",),
            rule=_numba_rule,
            cost=_NUMBA_COST,
        ),
        EngineSpec(
            "tensorflow",
            "tensorflow",
            ("tensorflow",),
            "tensorflow",
            "cpu",
            CORRELATE_OPS + LINALG_OPS,
            rule=_tensorflow_rule,
            cost=_TENSORFLOW_COST,
            map_chunk=_run_tensorflow,
        ),
        EngineSpec(
            "cupy",
            "cupy",
            ("cupy",),
            "gpu",
            "gpu",
            CORRELATE_OPS + LINALG_OPS + DECONVOLUTION_OPS,
            rule=_cupy_rule,
            cost=_CUPY_COST,
            map_chunk=_run_cupy,
        ),
        # numba-cuda needs only Numba (numba.cuda, or the numba-cuda package that replaces it):
        # without CuPy it copies host blocks to Numba device arrays and back, which is also how
        # it runs under the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) on a machine without a GPU.
        # The `gpu` extra adds numba-cuda (the maintained CUDA target) and CuPy.
        EngineSpec(
            "numba-cuda",
            "numba_cuda",
            ("numba",),
            "gpu",
            "gpu",
            ("correlate_direct", "matmul", "multiply"),
            rule=_numba_cuda_rule,
            cost=_NUMBA_CUDA_COST,
            map_chunk=_run_numba_cuda,
        ),
    )
}

#: The engines that compute on a GPU, in ``engine="auto"``'s order of preference for CuPy
#: chunks. The one list of GPU engines: everything else asks :func:`is_gpu_engine`.
GPU_ENGINES: tuple[str, ...] = tuple(name for name, spec in ENGINES.items() if spec.device == "gpu")
GPU_PREFERENCE: tuple[str, ...] = GPU_ENGINES

# What ``engine="auto"`` picks on CPU chunks, per operation, best first. The order comes from
# benchmarks/engines.py (see benchmarks/RESULTS.md); an engine that is not installed is skipped.
CPU_PREFERENCE: dict[str, tuple[str, ...]] = {
    # numba: 7-14x scipy.ndimage on 1024² float32 for 3x3..31x31 (see kernels/numba_cpu.py).
    "correlate_direct": ("numba", "scipy"),
    "correlate_fft": ("scipy",),
    "correlate_separable": ("numba", "scipy"),
    "matmul": ("scipy",),
    "wiener_filter": ("scipy",),
    "multiply": ("scipy",),
}

#: Engines :func:`distconv.map_chunks` takes: ``numpy`` (a plain function) and every engine.
CHUNK_ENGINES: tuple[str, ...] = ("numpy", *ENGINES)


def engine_names() -> list[str]:
    """All engines distconv knows, installed or not."""
    return list(ENGINES)


def is_gpu_engine(name: str) -> bool:
    """Whether engine ``name`` computes on a GPU (False for names that are no engine)."""
    return name in GPU_ENGINES


def is_installed(name: str) -> bool:
    """True when every package the engine needs can be found (nothing is imported)."""
    spec = _spec(name)
    return all(importlib.util.find_spec(pkg) is not None for pkg in spec.requires)


def install_hint(name: str) -> str:
    """The pip command that installs engine ``name``'s packages.

    ``pip install 'distconv[EXTRA]'`` for an engine behind an extra; for a core engine (whose
    packages ``pip install distconv`` brings) the packages themselves, missing only from an
    environment assembled by hand.
    """
    spec = _spec(name)
    if spec.extra:
        return f"pip install 'distconv[{spec.extra}]'"
    return f"pip install {' '.join(spec.requires)}"


def installed_engines() -> list[str]:
    """Names of the engines whose packages are installed."""
    return [name for name in ENGINES if is_installed(name)]


def get_engine(name: str) -> ModuleType:
    """Import (once per process) and return the module that implements engine ``name``.

    Raises
    ------
    EngineError
        The engine is unknown, not installed, or fails to import.
    """
    spec = _require_installed(name)
    try:
        return _import(spec.module)
    except ImportError as exc:
        raise EngineError(f"engine {name!r} is installed but failed to import: {exc}") from exc


def get_op(name: str, op: str) -> Callable:
    """Return engine ``name``'s implementation of ``op``, or raise :class:`EngineError`."""
    spec = _spec(name)
    if op not in spec.ops:
        able = [e for e, s in ENGINES.items() if op in s.ops]
        raise EngineError(f"engine {name!r} has no {op}; engines with it: {', '.join(able)}")
    return getattr(get_engine(name), op)


def supports(name: str, op: str, ndim: int, dtype) -> bool:
    """Whether engine ``name`` can run ``op`` on blocks of this rank and dtype.

    Answered from the registry, without importing the engine.

    Raises
    ------
    EngineError
        The engine is unknown, or implements ``op`` but is not installed.
    """
    spec = _spec(name)
    if op not in spec.ops:
        return False
    _require_installed(name)
    return spec.supports(op, ndim, dtype)


def resolve_engine(name: str, op: str, ndim: int, dtype, gpu_chunks: bool = False) -> str:
    """Turn ``"auto"`` (or a configured name) into a concrete engine able to run ``op``.

    ``gpu_chunks`` follows the chunk type (CuPy meta → a GPU engine); an explicit engine is
    validated, never silently replaced.
    """
    if name != "auto":
        if not supports(name, op, ndim, dtype):
            raise EngineError(
                f"engine {name!r} cannot run {op} on {ndim}-D {dtype} blocks; "
                f"try engine='scipy' or 'auto'"
            )
        return name
    candidates = GPU_PREFERENCE if gpu_chunks else CPU_PREFERENCE.get(op, ("scipy",))
    for candidate in candidates:
        if is_installed(candidate) and supports(candidate, op, ndim, dtype):
            return candidate
    raise EngineError(f"no installed engine can run {op} on {ndim}-D {dtype} blocks")


def chunk_runner(engine: str) -> Runner:
    """How :func:`distconv.map_chunks` calls a user function on ``engine``.

    Parameters
    ----------
    engine : str
        A name in :data:`CHUNK_ENGINES`: ``"numpy"`` or any engine.

    Returns
    -------
    callable
        ``runner(fn, token, kwargs, blocks)``, picklable (a module-level function).

    Raises
    ------
    EngineError
        The name is not a map_chunks engine, or a package it needs is missing.
    """
    if engine not in CHUNK_ENGINES:
        raise EngineError(
            f"unknown map_chunks engine {engine!r}; choose one of: {', '.join(CHUNK_ENGINES)}"
        )
    if engine == "numpy":
        return run_direct
    spec = ENGINES[engine]
    needed = spec.requires if spec.map_chunk_requires is None else spec.map_chunk_requires
    missing = [p for p in needed if importlib.util.find_spec(p) is None]
    if missing:
        raise EngineError(f"engine {engine!r} needs {', '.join(missing)} ({install_hint(engine)})")
    return spec.map_chunk


def _spec(name: str) -> EngineSpec:
    try:
        return ENGINES[name]
    except KeyError:
        raise EngineError(
            f"unknown engine {name!r}; choose one of: auto, {', '.join(ENGINES)} "
            f"(installed: {', '.join(installed_engines())})"
        ) from None


def _require_installed(name: str) -> EngineSpec:
    spec = _spec(name)
    if not is_installed(name):
        raise EngineError(
            f"engine {name!r} is not installed ({install_hint(name)}); "
            f"installed engines: {', '.join(installed_engines())}"
        )
    return spec


@cache
def _import(module: str) -> ModuleType:
    return importlib.import_module(f"{__package__}.{module}")
