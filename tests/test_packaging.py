"""Packaging: distconv.kernels/distconv.clusters ship inside distconv, never as bare top-level
modules, for a wheel install and for the editable install; importing distconv imports no engine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = (
    "import importlib.util, sys, distconv, distconv.kernels, distconv.clusters, "
    "distconv.kernels.scipy;"
    "assert importlib.util.find_spec('kernels') is None, 'bare kernels installed';"
    "assert importlib.util.find_spec('clusters') is None, 'bare clusters installed';"
    "print(distconv.__file__)"
)


def test_editable_install_imports_the_subpackages(tmp_path):
    # Run from an unrelated directory so the source tree is not on sys.path by accident.
    result = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_wheel_ships_only_the_distconv_package(tmp_path):
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-v",  # shows the build backend's output, where setuptools warns
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    log = built.stdout + built.stderr
    assert "deprecat" not in log.lower(), [x for x in log.splitlines() if "eprecat" in x]
    wheel = next((tmp_path / "dist").glob("distconv-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"distconv"}, top
    assert "distconv/kernels/scipy.py" in names and "distconv/clusters/local.py" in names

    target = tmp_path / "site"
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0, installed.stderr
    result = subprocess.run(
        [sys.executable, "-c", CHECK],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(target)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(target))  # the wheel's copy, not the source


def test_import_distconv_imports_no_engine_library():
    code = (
        "import sys, distconv;"
        "heavy = [m for m in ('tensorflow', 'cupy', 'numba', 'numba.cuda', 'dask_cuda') "
        "if m in sys.modules];"
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
