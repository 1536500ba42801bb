"""``make gpu-check`` (benchmarks/gpu_check.py), the parts that run anywhere.

The whole command needs a GPU machine to mean much; here: it installs nothing, the source tree
laid out as installed imports (for a Python where distconv is not installed), and the JUnit
summary counts outcomes and groups skip reasons. A full run without a GPU takes about 90 s on
two cores (every GPU test skips with its reason; the simulator checks run).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


def test_make_gpu_check_installs_nothing():
    plan = subprocess.run(
        ["make", "-n", "gpu-check"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert plan.returncode == 0, plan.stderr
    assert "benchmarks/gpu_check.py --out gpu-check" in plan.stdout
    assert "pip" not in plan.stdout


def test_source_tree_layout_imports_without_an_install(tmp_path):
    top = gpu_check._layout_source_tree(tmp_path, with_distconv=True)
    assert (top / "tests" / "_images.py").exists()  # the tests import tests._images
    site_packages = str(Path(numpy.__file__).parents[1])
    # -S: no site processing, so not the editable install; the layout and the dependencies only.
    code = (
        "import distconv, distconv.kernels.scipy, distconv.clusters.local, numpy as np;"
        "print(distconv.kernels.__file__);"
        "print(float(distconv.convolve(np.ones((5, 5)), np.ones((3, 3))).compute().sum()))"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(top), site_packages])},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    kernels_file, total = done.stdout.split()
    assert kernels_file == str(top / "distconv" / "kernels" / "__init__.py")
    assert float(total) == 225.0  # 5×5 ones, 3×3 ones, reflect: every sample sums to 9


def test_junit_summary_counts_and_groups_skip_reasons(tmp_path):
    report = tmp_path / "junit.xml"
    report.write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_a" name="test_ok"/>'
        '<testcase classname="tests.test_a" name="test_bad">'
        '<failure message="AssertionError: 1 != 2">trace</failure></testcase>'
        '<testcase classname="tests.test_b" name="test_s1"><skipped message="no GPU"/></testcase>'
        '<testcase classname="tests.test_b" name="test_s2"><skipped message="no GPU"/></testcase>'
        '<testcase classname="tests.test_b" name="test_s3"><skipped message="no TF"/></testcase>'
        "</testsuite></testsuites>"
    )
    lines = gpu_check._junit_summary(report)
    assert lines[0] == "1 passed, 1 failed, 3 skipped"
    assert "- FAILED `tests.test_a::test_bad`: AssertionError: 1 != 2" in lines
    assert "- 2 × no GPU" in lines and "- 1 × no TF" in lines
    assert gpu_check._junit_summary(tmp_path / "missing.xml")[0].startswith("no JUnit report")
