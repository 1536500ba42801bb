"""The default cluster ``auto`` and the guard against scripts that start clusters unguarded.

``auto`` runs small jobs on threads in this process and starts a local cluster from
``distconv.auto-local-bytes`` of input plus output; the command's summary line says which ran.
Scripts that start a local cluster at their top level without ``if __name__ == "__main__":``
are stopped with one line, both by the parent (before any process starts) and, as a backstop,
by a spawned process that is still booting. Everything runs for real: the ``distconv`` script
and Python scripts in subprocesses, a real LocalCluster where one is expected.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import dask
import numpy as np
import pytest
import zarr
from conftest import DISTCONV, write_zarr
from scipy import ndimage

import distconv as dc
from distconv.clusters import parse_spec, resolve
from distconv.clusters.auto import choose, local_threshold, work_bytes


def test_auto_is_the_default_and_parses():
    assert parse_spec(None).kind == "auto"
    assert parse_spec("auto").kind == "auto"
    assert local_threshold() == 2**30


def test_auto_chooses_by_bytes_of_input_and_output():
    x = dask.array.zeros((512, 512), dtype=np.float32, chunks=256)
    assert work_bytes([x, x]) == 2 * 512 * 512 * 4
    assert work_bytes(None) is None
    small = choose([x, x])
    assert small.kind == "threads" and "2.00 MiB" in small.reason
    with dask.config.set({"distconv.auto-local-bytes": "1MiB"}):
        large = choose([x, x])
    assert large.kind == "local" and "≥" in large.reason
    assert choose(None).kind == "local"  # no job size: a `with dc.cluster():` block
    assert choose([x], sized=True).kind == "local"  # --workers asks for worker processes
    spec, choice = resolve(None, [x])
    assert spec.kind == "threads" and choice.kind == "threads"
    spec, choice = resolve("threads", 10**12)
    assert spec.kind == "threads" and choice is None  # an explicit spec is never replaced
    with dask.config.set({"distconv.auto-local-bytes": "lots"}):
        with pytest.raises(dc.DistconvError, match="auto-local-bytes"):
            choose([x])


def test_api_cluster_with_a_small_job_runs_on_threads(tmp_path):
    x = np.random.default_rng(3).random((64, 48))
    y = dc.convolve(x, np.ones((3, 3)))
    with dc.cluster(work=[x, y]) as client:
        assert client is None
        dc.save(y, tmp_path / "out.zarr", progress=False)
    np.testing.assert_allclose(
        zarr.open_array(str(tmp_path / "out.zarr"))[:], ndimage.convolve(x, np.ones((3, 3)))
    )


@pytest.fixture
def image(tmp_path):
    data = np.random.default_rng(11).random((512, 512), dtype=np.float32)
    write_zarr(tmp_path / "small.zarr", data, chunks=(256, 256))
    return tmp_path, data


def _convolve(folder, *extra, env=None):
    return subprocess.run(
        [DISTCONV, "convolve", "small.zarr", "gaussian:sigma=2", "-o", "out.zarr", *extra],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_small_job_runs_in_process_and_says_so(image):
    folder, data = image
    result = _convolve(folder)
    assert result.returncode == 0, result.stderr
    assert "on threads (auto: 2.00 MiB < 1.00 GiB)" in result.stdout
    assert "dashboard" not in result.stdout + result.stderr  # no cluster was started
    expected = ndimage.gaussian_filter(data.astype(np.float64), 2)
    np.testing.assert_allclose(zarr.open_array(str(folder / "out.zarr"))[:], expected, atol=1e-5)


def test_threaded_job_imports_no_distributed(image):
    """What keeps a small job fast: the threaded path never imports distributed (~0.3 s)."""
    folder, _ = image
    code = (
        "import sys\n"
        "from distconv.cli import main\n"
        "try:\n"
        "    main(['convolve', 'small.zarr', 'box:size=3', '-o', 'o.zarr', '-q'])\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        "print(sorted(m for m in ('distributed', 'rich') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_large_job_starts_a_local_cluster_and_says_so(image):
    folder, data = image
    result = _convolve(folder, env={"DASK_DISTCONV__AUTO_LOCAL_BYTES": "1MiB"})
    assert result.returncode == 0, result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert "on local, " in summary and "(auto: 2.00 MiB ≥ 1.00 MiB)" in summary, summary
    assert "dashboard: http://127.0.0.1:" in result.stdout
    assert result.stderr == ""
    expected = ndimage.gaussian_filter(data.astype(np.float64), 2)
    np.testing.assert_allclose(zarr.open_array(str(folder / "out.zarr"))[:], expected, atol=1e-5)


def test_explicit_cluster_is_named_without_auto(image):
    folder, _ = image
    result = _convolve(folder, "--cluster", "threads")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("on threads")


# --- scripts without a __main__ guard ---------------------------------------------------------

UNGUARDED = """
import numpy as np
import distconv as dc

x = np.random.default_rng(0).random((32, 32))
with dc.cluster("local", workers=2, quiet=True) as client:
    print(dc.convolve(x, np.ones((3, 3))).compute().sum())
"""

UNGUARDED_MAIN = """
import distconv as dc


def main():
    with dc.cluster("local", workers=1, quiet=True):
        print("started")


main()
"""

GUARDED = """
import numpy as np
import distconv as dc


def main():
    x = np.random.default_rng(0).random((32, 32))
    with dc.cluster("local", workers=1, quiet=True) as client:
        assert client is not None
        print("sum", float(dc.convolve(x, np.ones((3, 3))).compute().sum()))


if __name__ == "__main__":
    main()
"""


def _script(tmp_path, name: str, source: str) -> subprocess.CompletedProcess:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "source, line", [(UNGUARDED, 6), (UNGUARDED_MAIN, 10)], ids=["top-level", "main()-call"]
)
def test_unguarded_script_is_one_line(tmp_path, source, line):
    result = _script(tmp_path, "analysis.py", source)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"distconv: error: analysis.py, line {line} starts ")
    assert 'if __name__ == "__main__":' in lines[0]
    assert result.stdout == ""  # stopped before any work


def test_guarded_script_runs_its_local_cluster(tmp_path):
    result = _script(tmp_path, "analysis.py", GUARDED)
    assert result.returncode == 0, result.stderr
    x = np.random.default_rng(0).random((32, 32))
    expected = ndimage.convolve(x, np.ones((3, 3))).sum()
    assert float(result.stdout.split("sum")[-1]) == pytest.approx(expected)


def test_a_booting_spawned_process_stops_with_one_line(tmp_path):
    """The backstop: a spawned child re-running the main script stops itself with one line
    (exit 2) when that script starts a cluster while the child boots."""
    source = """
    import multiprocessing
    import sys
    from distconv.clusters.guard import refuse_while_bootstrapping

    refuse_while_bootstrapping("local")  # what dc.cluster("local") does first


    def noop():
        pass


    if __name__ == "__main__":
        child = multiprocessing.get_context("spawn").Process(target=noop)
        child.start()
        child.join(120)
        print("child exit", child.exitcode)
    """
    result = _script(tmp_path, "spawner.py", source)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "child exit 2"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distconv: error: spawner.py starts "), lines
