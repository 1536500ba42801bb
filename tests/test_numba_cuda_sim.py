"""The numba-cuda engine's kernels under numba's CUDA simulator, on tiny arrays, on any machine.

``NUMBA_ENABLE_CUDASIM=1`` only takes effect if it is set before ``numba.cuda`` is first
imported, and it would change ``numba.cuda`` for every later test in this process, so the checks
(tests/_cudasim_checks.py) run once in a subprocess and each check is reported here as its own
test. References: scipy.ndimage.correlate in float64, numpy.matmul, numpy.multiply, on random
data. The same is done for the public API (dc.convolve/correlate in every mode, dc.matmul,
dc.multiply, dc.save) on host arrays with CuPy made unimportable (tests/_cudasim_api_checks.py):
what a user without a GPU can run to test a numba-cuda pipeline. A last subprocess compiles the
kernels to PTX when a CUDA compiler (NVVM) is installed; no device is needed for any of them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HELPER = Path(__file__).with_name("_cudasim_checks.py")
API_HELPER = Path(__file__).with_name("_cudasim_api_checks.py")


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # only names and constants: imports no numba
    return module


checks = _load(HELPER)
api_checks = _load(API_HELPER)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("numba") is None,
    reason="numba is not installed (a core dependency: pip install numba)",
)


def _run_helper(
    args: list[str], simulator: bool, timeout: float, helper: Path = HELPER
) -> tuple[dict, str]:
    env = {**os.environ}
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    else:
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    proc = subprocess.run(
        [sys.executable, str(helper), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith(checks.PREFIX):
            record = json.loads(line[len(checks.PREFIX) :])
            results[record.get("name", "unavailable")] = record
    log = (
        f"exit status {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n"
        f"{proc.stderr[-4000:]}"
    )
    return results, log


@pytest.fixture(scope="module")
def simulator_results():
    """Run every simulator check once (about 20 s on two cores) and keep the results."""
    results, log = _run_helper([], simulator=True, timeout=300)
    if "unavailable" in results:
        pytest.skip(results["unavailable"]["unavailable"])
    return results, log


@pytest.mark.parametrize("name", checks.SIM_CHECKS)
def test_under_cuda_simulator(simulator_results, name):
    results, log = simulator_results
    assert name in results, f"check {name} did not report (crashed?)\n{log}"
    assert results[name]["ok"], results[name]["detail"]


@pytest.fixture(scope="module")
def api_results():
    """The public API on engine="numba-cuda" under the simulator, CuPy made unimportable
    (tests/_cudasim_api_checks.py; about 30 s on two cores)."""
    results, log = _run_helper([], simulator=True, timeout=600, helper=API_HELPER)
    if "unavailable" in results:
        pytest.skip(results["unavailable"]["unavailable"])
    return results, log


@pytest.mark.parametrize("name", api_checks.API_CHECKS)
def test_public_api_under_cuda_simulator_without_cupy(api_results, name):
    results, log = api_results
    assert name in results, f"check {name} did not report (crashed?)\n{log}"
    assert results[name]["ok"], results[name]["detail"]


def test_kernels_compile_to_ptx():
    """Every kernel types and lowers for sm_80/sm_90 (skips without a CUDA compiler here)."""
    results, log = _run_helper(["--ptx"], simulator=False, timeout=300)
    if "unavailable" in results:
        pytest.skip(results["unavailable"]["unavailable"])
    assert "ptx" in results, f"the PTX check did not report\n{log}"
    assert results["ptx"]["ok"], results["ptx"]["detail"]
