"""Planning a job imports no optional engine: the registry answers without importing one.

Each check runs in a fresh interpreter, since this test process may already have imported
TensorFlow or Numba for other tests. Numba may be needed to *compute* on the numba engine, never
to build the graph.
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("tensorflow", "numba", "cupy", "numba.cuda")

_CHECK = """
import sys
{body}
found = [name for name in {heavy!r} if name in sys.modules]
assert not found, f"imported: {{found}}"
"""


def _run(body: str) -> None:
    code = _CHECK.format(body=body, heavy=HEAVY)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_import_distconv_imports_no_engine():
    _run("import distconv")


def test_planning_jobs_imports_no_engine():
    _run("""
import distconv as dc, numpy as np, dask.array as da
x = da.random.random((256, 256), chunks=128)
y = dc.convolve(x, np.ones((5, 5)))
y2 = dc.convolve(x, np.ones((5, 5)), engine="auto", method="auto")
y3 = dc.correlate(x, np.ones((1, 31)), engine="auto", method="auto")  # separable candidate
a = da.random.random((64, 48), chunks=32)
b = da.random.random((48, 40), chunks=16)
p = dc.matmul(a, b)
m = dc.multiply(a, a)
m2 = dc.multiply(a, 2.0)
d = dc.richardson_lucy(x, np.ones((5, 5)), 3)  # deconvolution plans too
w = dc.wiener(x, np.ones((5, 5)), 0.1)
assert all(isinstance(r, da.Array) for r in (y, y2, y3, p, m, m2, d, w))
""")


def test_registry_answers_without_importing_engines():
    _run("""
import numpy as np
from distconv import kernels
for name, spec in kernels.ENGINES.items():
    for op in spec.ops:
        spec.supports(op, 2, np.float32)
    if kernels.is_installed(name):
        for op in spec.ops:
            kernels.supports(name, op, 2, np.float32)
kernels.resolve_engine("auto", "correlate_direct", 2, np.float32)
kernels.chunk_runner("numpy")
assert kernels.GPU_ENGINES == tuple(n for n, s in kernels.ENGINES.items() if s.device == "gpu")
""")


# dask.array itself imports xarray when it is installed, so "not imported" is checked as "not
# needed": with xarray made unimportable, importing distconv and planning jobs still work.
_NO_XARRAY = """
import sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name == "xarray" or name.startswith("xarray."):
            raise ImportError("xarray blocked")
sys.meta_path.insert(0, _Blocked())
"""


def test_xarray_is_optional_for_import_and_planning():
    _run(
        _NO_XARRAY
        + """
import distconv as dc, numpy as np, dask.array as da
x = da.random.random((64, 64), chunks=32)
y = dc.convolve(x, np.ones((3, 3)))
m = dc.multiply(x, x)
assert isinstance(y, da.Array) and isinstance(m, da.Array)
assert "xarray" not in sys.modules
"""
    )


def test_distconv_imports_xarray_only_inside_functions():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "distconv"
    for path in root.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module level only
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "xarray" for n in names), path
