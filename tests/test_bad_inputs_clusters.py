"""Bad input is one stderr line on every kind of cluster: threads, local, and a remote scheduler.

tests/test_bad_inputs.py runs its whole table in this process on threads. Here a representative
subset runs through the installed ``distconv`` script in its own process, so everything that
reaches the terminal is seen (worker processes write to the same stderr), on ``threads``, on
the embedded ``local`` cluster, and on a real ``dask scheduler`` + ``dask worker`` pair on
127.0.0.1: failures found before work starts (missing input, bad weights), while computing (a
corrupt input chunk, read by a worker) and while writing (a read-only target). Each must print
exactly one line, exit 2, and leave the folder as it was.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from conftest import distconv, one_stderr_line, tree_digest
from test_bad_inputs import CASES, folder  # noqa: F401  (folder is a fixture)
from test_cluster_remote import tcp_processes

SUBSET = [
    "missing input",
    "nan weights",
    "pickled .npy weights",
    "corrupt chunk in the input",
    "output exists",
]


@pytest.fixture(scope="module")
def remote_scheduler(tmp_path_factory):
    """``dask scheduler`` and one ``dask worker`` (its logs in files, as on a real cluster)."""
    yield from tcp_processes(tmp_path_factory.mktemp("scheduler-logs"), {"w1": []})


@pytest.fixture(scope="module")
def read_only_dir(tmp_path_factory):
    """A directory nothing can be created in (root ignores permission bits: a ro tmpfs)."""
    where = tmp_path_factory.mktemp("ro") / "target"
    where.mkdir()
    if os.geteuid() != 0:
        where.chmod(0o555)
        yield where
        where.chmod(0o755)
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root and mount rights)")
    yield where
    subprocess.run(["umount", str(where)], check=False)


def _cluster_args(kind: str, address: str | None) -> list[str]:
    return ["--cluster", address if kind == "tcp" else kind]


def _run(cwd, args: list[str]) -> subprocess.CompletedProcess:
    return distconv("convolve", *args, cwd=cwd)


def _assert_one_line(result: subprocess.CompletedProcess, words: str) -> None:
    line = one_stderr_line(result.stderr, result.returncode, 2)
    assert line.startswith("distconv: error: "), line
    assert words.lower() in line.lower(), line


@pytest.mark.parametrize("kind", ["threads", "local", "tcp"])
@pytest.mark.parametrize("name", SUBSET)
def test_one_line_on_every_cluster(folder, request, kind, name):  # noqa: F811
    args = next(a for n, a, _ in CASES if n == name)
    words = next(w for n, _, w in CASES if n == name)
    address = request.getfixturevalue("remote_scheduler") if kind == "tcp" else None
    output = [] if "-o" in args else ["-o", f"out-{kind}.zarr"]
    before = tree_digest(folder)
    result = _run(folder, [*args, *output, *_cluster_args(kind, address)])
    _assert_one_line(result, words)
    assert tree_digest(folder) == before  # inputs untouched, no output left behind


@pytest.mark.parametrize("kind", ["threads", "local", "tcp"])
def test_read_only_target_is_one_line_on_every_cluster(
    folder,  # noqa: F811
    read_only_dir,
    request,
    kind,
):
    address = request.getfixturevalue("remote_scheduler") if kind == "tcp" else None
    before = tree_digest(folder)
    target = str(read_only_dir / "out.zarr")
    result = _run(folder, ["big.zarr", "kernel.npy", "-o", target, *_cluster_args(kind, address)])
    _assert_one_line(result, "cannot create output")
    assert os.listdir(read_only_dir) == []
    assert tree_digest(folder) == before


def test_worker_logs_come_back_with_debug(folder):  # noqa: F811
    """``--debug`` lets the local cluster's workers log again (and raises the traceback)."""
    args = next(a for n, a, _ in CASES if n == "corrupt chunk in the input")
    result = distconv(
        "--debug", "convolve", *args, "-o", "out-debug.zarr", "--cluster", "local", cwd=folder
    )
    assert result.returncode != 0
    assert "Compute Failed" in result.stderr  # the worker's own report of the failed task
    assert "Traceback" in result.stderr


def test_a_damaged_chunk_on_a_cluster_leaves_no_output_behind_running_blocks(tmp_path):
    """The damaged chunk fails the job while the other worker is still writing its block:
    distributed cannot stop that block, so save waits for it before removing the output, and
    nothing lands in the output's place afterwards."""
    import dask
    import numpy as np
    import zarr

    import distconv as dc

    data = np.random.default_rng(7).random((4096, 4096)).astype(np.float32)
    zarr.create_array(str(tmp_path / "in.zarr"), data=data, chunks=(512, 512))
    (tmp_path / "in.zarr" / "c" / "6" / "6").write_bytes(b"not a zstd frame")
    weights = np.random.default_rng(8).random((31, 31))
    out = tmp_path / "out.zarr"
    with dask.config.set({"distconv.tile_size": "1MiB"}):  # 64 one-chunk tiles
        with dc.cluster("local", workers=2, quiet=True) as client:
            y = dc.convolve(dc.open(tmp_path / "in.zarr"), weights)
            with pytest.raises(dc.DistconvError, match=r"\[3072:3584, 3072:3584\] cannot be read"):
                dc.save(y, out, progress=False)
            for _ in range(600):  # until the workers run nothing (what was running has landed)
                busy = client.run(lambda dask_worker: len(dask_worker.state.executing))
                if not any(busy.values()):
                    break
                time.sleep(0.05)
            time.sleep(0.2)
    assert not out.exists(), sorted(str(p.relative_to(out)) for p in out.rglob("*"))
