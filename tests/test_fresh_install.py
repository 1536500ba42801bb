"""What ``pip install distconv`` gives: the fast CPU engines, a readable engines table, clean
packaging metadata.

numba and ducc0 are core dependencies (the fastest CPU engines in benchmarks/RESULTS.md); the
``numba``/``fft`` extras stay so that old install commands still work; TensorFlow and the GPU
packages stay extras. ``distconv engines`` fits an 80-column terminal with every pip extra
spelled out.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import DISTCONV

from distconv import kernels

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_fast_cpu_engines_are_core_dependencies(pyproject):
    project = pyproject["project"]
    core = _names(project["dependencies"])
    assert {"numba", "ducc0"} <= core
    extras = project["optional-dependencies"]
    assert "numba" in extras and "fft" in extras  # `distconv[numba]` still installs
    assert not _names(extras["numba"]) - {"numba"} and not _names(extras["fft"]) - {"ducc0"}
    assert not any(n.startswith("tensorflow") for n in core)
    assert not {n for n in core if n.startswith(("cupy", "numba-cuda", "dask-cuda"))}
    assert {"numba-cuda", "dask-cuda"} <= _names(extras["gpu"])
    assert any(n.startswith("cupy-cuda") for n in _names(extras["gpu"]))


def test_license_is_an_spdx_string(pyproject):
    assert pyproject["project"]["license"] == "BSD-3-Clause"
    setuptools = next(r for r in pyproject["build-system"]["requires"] if "setuptools" in r)
    minimum = re.search(r">=\s*([\d.]+)", setuptools).group(1)
    assert tuple(int(p) for p in minimum.split(".")) >= (77,)  # SPDX strings need 77


def test_registry_marks_the_core_engines():
    assert kernels.ENGINES["scipy"].extra == "" and kernels.ENGINES["numba"].extra == ""
    assert kernels.is_installed("numba")  # a core dependency
    assert kernels.install_hint("numba") == "pip install numba"
    assert kernels.install_hint("tensorflow") == "pip install 'distconv[tensorflow]'"
    # numba-cuda needs Numba only: host blocks go through numba.cuda device arrays.
    assert kernels.ENGINES["numba-cuda"].requires == ("numba",)
    assert kernels.is_installed("numba-cuda")


def test_auto_picks_numba_on_cpu_chunks():
    import numpy as np

    assert kernels.resolve_engine("auto", "correlate_direct", 2, np.float32) == "numba"
    assert kernels.resolve_engine("auto", "correlate_separable", 2, np.float32) == "numba"


def test_engines_table_fits_80_columns():
    result = subprocess.run(
        [DISTCONV, "engines"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    rows = {
        line.split()[0]: line
        for line in lines
        if line.strip() and line.split()[0] in kernels.ENGINES
    }
    assert set(rows) == set(kernels.ENGINES)
    for name, spec in kernels.ENGINES.items():
        extra = f"distconv[{spec.extra}]" if spec.extra else "(core)"
        assert rows[name].rstrip().endswith(extra), rows[name]
    assert rows["numba"].split()[1:3] == ["yes", "yes"]
    # Long device descriptions come below the table, one per usable engine.
    assert any(line.startswith("scipy: CPU (scipy ") for line in lines)
