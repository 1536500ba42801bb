"""Shared fixtures: random data (never zeros), the engines installed here, tolerances per method,
and the helpers of the command-line tests (the real script in a subprocess, Zarr inputs)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import zarr

os.environ.setdefault("DASK_DISTCONV__PROGRESS", "False")

from distconv import kernels
from distconv.plan import METHOD_OPS

# Every scipy.ndimage boundary mode distconv takes.
MODES = [
    "reflect",
    "constant",
    "nearest",
    "mirror",
    "wrap",
    "grid-mirror",
    "grid-constant",
    "grid-wrap",
]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 (tests/_s3.py) for the tests of one module."""
    from tests._s3 import S3Server

    server = S3Server()
    yield server
    server.stop()


def engines_under_test() -> list[str]:
    """Installed engines, or the comma list in DISTCONV_TEST_ENGINES to narrow a run on purpose."""
    chosen = os.environ.get("DISTCONV_TEST_ENGINES")
    installed = kernels.installed_engines()
    return [e for e in chosen.split(",") if e in installed] if chosen else installed


def cpu_engines_for(method: str, ndim: int = 2, dtype=np.float64) -> list[str]:
    """Engines under test on the CPU that implement ``method`` for this rank and dtype."""
    op = METHOD_OPS[method]
    found = []
    for name in engines_under_test():
        spec = kernels.ENGINES[name]
        if spec.device == "cpu" and op in spec.ops and kernels.supports(name, op, ndim, dtype):
            found.append(name)
    return found


def engine_method_params(ndim: int = 2, dtype=np.float64):
    """pytest params of (engine, method) for every installed CPU engine and its methods."""
    return [
        pytest.param(engine, method, id=f"{engine}-{method}")
        for method in METHOD_OPS
        for engine in cpu_engines_for(method, ndim, dtype)
    ]


def tolerance(x: np.ndarray, weights: np.ndarray, compute_dtype) -> float:
    """Absolute tolerance: float64 ≈ 1e-10, float32 ≈ 1e-5 of the largest possible output."""
    scale = float(np.abs(weights).sum() * max(np.abs(x).max(), 1.0))
    return scale * (1e-10 if np.dtype(compute_dtype) == np.float64 else 1e-5)


def random_weights(rng: np.random.Generator, shape, separable: bool) -> np.ndarray:
    """Signed random weights; rank-1 (outer product) when the separable method is tested."""
    if not separable:
        return rng.standard_normal(shape)
    out = rng.standard_normal(shape[0])
    for size in shape[1:]:
        out = np.multiply.outer(out, rng.standard_normal(size))
    return out


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261122)


# --- the command-line tests -------------------------------------------------------------------

#: The installed ``distconv`` script, beside this interpreter.
DISTCONV = os.path.join(os.path.dirname(sys.executable), "distconv")


def distconv(*args, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed ``distconv`` script in its own process, capturing its output as text."""
    return subprocess.run(
        [DISTCONV, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def start_distconv(args, folder, env: dict | None = None) -> subprocess.Popen:
    """The ``distconv`` command started in ``folder``, in its own session (to be signalled);
    ``env`` adds environment variables."""
    return subprocess.Popen(
        [DISTCONV, *args],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )


def one_stderr_line(stderr: str, status, expected_status: int) -> str:
    """Check the exit status and that ``stderr`` holds exactly one line; return that line."""
    assert status == expected_status, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def tree_digest(path) -> str:
    """Hash of every file's name and bytes under path: proves an input was not touched."""
    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(os.path.relpath(full, path).encode())
            with open(full, "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()


def write_zarr(path, data: np.ndarray, chunks, **kwargs) -> zarr.Array:
    """A new Zarr array at ``path`` holding ``data`` (``kwargs`` go to ``zarr.create_array``)."""
    array = zarr.create_array(
        str(path), shape=data.shape, chunks=chunks, dtype=data.dtype, **kwargs
    )
    array[:] = data
    return array
