"""Engine registry: which library computes one chunk.

Every engine is one module in this package (shipped as ``distconv.kernels.<module>``). The
registry below names them, the operations each implements and the packages each needs; it checks
availability with :func:`importlib.util.find_spec` and imports an engine only when it is first
used, so ``import distconv`` never imports TensorFlow, CuPy or Numba.

Per-chunk contract (every engine module implements the operations it lists):

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

An engine may also define ``supports(op, ndim, dtype) -> bool`` (default: everything it lists)
and ``device_info() -> str`` for ``distconv engines``. Functions must be pure; compiled artifacts
are created and cached inside the worker process, never pickled from the client.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType

from distconv.errors import EngineError

CORRELATE_OPS = ("correlate_direct", "correlate_fft", "correlate_separable")
LINALG_OPS = ("matmul", "multiply")


@dataclass(frozen=True)
class EngineSpec:
    """What the registry knows about an engine before importing it."""

    name: str
    module: str
    requires: tuple[str, ...]
    extra: str
    device: str  # "cpu" or "gpu"
    ops: tuple[str, ...]


ENGINES: dict[str, EngineSpec] = {
    spec.name: spec
    for spec in (
        EngineSpec("scipy", "scipy", ("scipy", "numpy"), "", "cpu", CORRELATE_OPS + LINALG_OPS),
        EngineSpec(
            "numba", "numba_cpu", ("numba",), "numba", "cpu", CORRELATE_OPS[::2] + ("multiply",)
        ),
        EngineSpec(
            "tensorflow", "tensorflow", ("tensorflow",), "tensorflow", "cpu",
            CORRELATE_OPS + LINALG_OPS,
        ),
        EngineSpec("cupy", "cupy", ("cupy",), "gpu", "gpu", CORRELATE_OPS + LINALG_OPS),
        EngineSpec(
            "numba-cuda", "numba_cuda", ("numba", "cupy"), "gpu", "gpu",
            ("correlate_direct", "matmul", "multiply"),
        ),
    )
}

# What ``engine="auto"`` picks on CPU chunks, per operation, best first. The order comes from
# benchmarks/engines.py (see benchmarks/RESULTS.md); an engine that is not installed is skipped.
CPU_PREFERENCE: dict[str, tuple[str, ...]] = {
    # numba: 7-14x scipy.ndimage on 1024² float32 for 3x3..31x31 (see kernels/numba_cpu.py).
    "correlate_direct": ("numba", "scipy"),
    "correlate_fft": ("scipy",),
    "correlate_separable": ("numba", "scipy"),
    "matmul": ("scipy",),
    "multiply": ("scipy",),
}
GPU_PREFERENCE: tuple[str, ...] = ("cupy", "numba-cuda")


def engine_names() -> list[str]:
    """All engines distconv knows, installed or not."""
    return list(ENGINES)


def is_installed(name: str) -> bool:
    """True when every package the engine needs can be found (nothing is imported)."""
    spec = _spec(name)
    return all(importlib.util.find_spec(pkg) is not None for pkg in spec.requires)


def installed_engines() -> list[str]:
    """Names of the engines whose packages are installed."""
    return [name for name in ENGINES if is_installed(name)]


def get_engine(name: str) -> ModuleType:
    """Import (once per process) and return the module that implements engine ``name``."""
    spec = _spec(name)
    if not is_installed(name):
        raise EngineError(
            f"engine {name!r} is not installed (pip install 'distconv[{spec.extra}]'); "
            f"installed engines: {', '.join(installed_engines())}"
        )
    try:
        return _import(spec.module)
    except ImportError as exc:
        raise EngineError(f"engine {name!r} is installed but failed to import: {exc}") from exc


def get_op(name: str, op: str):
    """Return engine ``name``'s implementation of ``op``, or raise :class:`EngineError`."""
    spec = _spec(name)
    if op not in spec.ops:
        able = [e for e, s in ENGINES.items() if op in s.ops]
        raise EngineError(f"engine {name!r} has no {op}; engines with it: {', '.join(able)}")
    return getattr(get_engine(name), op)


def supports(name: str, op: str, ndim: int, dtype) -> bool:
    """Whether engine ``name`` can run ``op`` on blocks of this rank and dtype."""
    if op not in _spec(name).ops:
        return False
    check = getattr(get_engine(name), "supports", None)
    return True if check is None else bool(check(op, ndim, dtype))


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


def _spec(name: str) -> EngineSpec:
    try:
        return ENGINES[name]
    except KeyError:
        raise EngineError(
            f"unknown engine {name!r}; choose one of: auto, {', '.join(ENGINES)} "
            f"(installed: {', '.join(installed_engines())})"
        ) from None


@lru_cache(maxsize=None)
def _import(module: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{module}")
