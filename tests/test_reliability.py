"""Outputs that never lie: resume, Ctrl-C, SIGKILL at random moments, failed writes.

Real Zarr stores on disk, the real ``distconv`` command in subprocesses, a real LocalCluster.
"""

from __future__ import annotations

import hashlib
import os
import random
import shlex
import signal
import subprocess
import time

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from conftest import distconv, one_stderr_line, start_distconv
from scipy import ndimage

import distconv as dc
from distconv.errors import JobFailed


def chunk_files(path) -> list[str]:
    """Chunk objects of a v3 store written by distconv (``c/i/j``), relative paths."""
    root = os.path.join(path, "c")
    found = []
    for folder, _, files in os.walk(root):
        found += [
            os.path.relpath(os.path.join(folder, f), path)
            for f in files
            if not f.endswith(".partial")
        ]
    return sorted(found)


def chunk_digest(path) -> str:
    """Hash of every chunk object's name and bytes (the attributes may differ)."""
    digest = hashlib.sha256()
    for key in chunk_files(path):
        digest.update(key.encode())
        with open(os.path.join(path, key), "rb") as handle:
            digest.update(handle.read())
    return digest.hexdigest()


def make_input(folder, shape=(64, 48), chunks=(16, 16), seed=0):
    rng = np.random.default_rng(seed)
    data = rng.random(shape, dtype=np.float32)
    array = zarr.create_array(str(folder / "in.zarr"), shape=shape, chunks=chunks, dtype=data.dtype)
    array[:] = data
    weights = rng.standard_normal((5, 3))
    np.save(folder / "k.npy", weights)
    return data, weights


def mark_partial(path, drop_every: int) -> int:
    """Turn a complete output into an interrupted one: delete chunks, clear ``complete``."""
    array = zarr.open_array(str(path), mode="r+")
    record = dict(array.attrs["distconv"])
    record["complete"] = False
    array.attrs.update({"distconv": record})
    files = chunk_files(path)
    for key in files[::drop_every]:
        os.remove(os.path.join(path, key))
    return len(files[::drop_every])


def test_resume_computes_only_missing_chunks_and_marks_complete(tmp_path):
    data, weights = make_input(tmp_path)
    job = lambda: dc.correlate(dc.open(tmp_path / "in.zarr"), weights, mode="nearest")  # noqa
    dc.save(job(), tmp_path / "ref.zarr", progress=False)
    dc.save(job(), tmp_path / "out.zarr", progress=False)
    dropped = mark_partial(tmp_path / "out.zarr", 3)
    # A write the kill interrupted: zarr's temporary file, never a valid chunk.
    leftover = tmp_path / "out.zarr" / "c" / "0" / f"1.{'a' * 32}.partial"
    leftover.write_bytes(b"half a chunk")
    described = dc.info(tmp_path / "out.zarr")
    assert described["complete"] is False
    assert described["chunks_initialized"] == described["chunks_total"] - dropped
    with pytest.raises(dc.DistconvError, match="partial"):
        dc.open(tmp_path / "out.zarr")
    before = {
        k: os.stat(tmp_path / "out.zarr" / k).st_mtime_ns
        for k in chunk_files(tmp_path / "out.zarr")
    }

    resumed = dc.save(job(), tmp_path / "out.zarr", resume=True, progress=False)

    record = resumed.attrs["distconv"]
    assert record["complete"] is True
    assert record["resumed"][0]["chunks_already_written"] == len(before)
    after = {k: os.stat(tmp_path / "out.zarr" / k).st_mtime_ns for k in before}
    assert after == before  # chunks already written were not rewritten
    assert not leftover.exists()
    assert chunk_digest(tmp_path / "out.zarr") == chunk_digest(tmp_path / "ref.zarr")
    np.testing.assert_allclose(
        resumed[:], ndimage.correlate(data.astype(float), weights, mode="nearest"), atol=1e-4
    )
    # Resuming a complete output computes nothing and keeps it complete.
    again = dc.save(job(), tmp_path / "out.zarr", resume=True, progress=False)
    assert again.attrs["distconv"]["resumed"][-1]["chunks_already_written"] == 12
    assert dc.open(tmp_path / "out.zarr").shape == data.shape


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(weights_scale=2.0), "weights differ"),
        (dict(mode="wrap"), "mode differs"),
        (dict(origin=1), "origin differs"),
        (dict(operation="convolve"), "operation differs"),
        (dict(dtype="float64"), "dtype differ"),
        (dict(other_input=True), "inputs differ"),
    ],
)
def test_resume_refuses_a_different_job(tmp_path, change, words):
    data, weights = make_input(tmp_path)
    zarr.create_array(
        str(tmp_path / "other.zarr"), shape=data.shape, chunks=(16, 16), dtype=data.dtype
    )[:] = data
    dc.save(
        dc.correlate(dc.open(tmp_path / "in.zarr"), weights), tmp_path / "out.zarr", progress=False
    )
    mark_partial(tmp_path / "out.zarr", 2)
    function = dc.convolve if change.get("operation") == "convolve" else dc.correlate
    source = tmp_path / ("other.zarr" if change.get("other_input") else "in.zarr")
    y = function(
        dc.open(source),
        weights * change.get("weights_scale", 1.0),
        mode=change.get("mode", "reflect"),
        origin=change.get("origin", 0),
        dtype=change.get("dtype"),
    )
    with pytest.raises(dc.OutputError, match=f"cannot resume .*{words}") as raised:
        dc.save(y, tmp_path / "out.zarr", resume=True, progress=False)
    assert "\n" not in str(raised.value)
    assert dc.info(tmp_path / "out.zarr")["complete"] is False


def test_resume_ignores_the_engine(tmp_path):
    """Engines agree to rounding: a job may be finished by another engine than it started on."""
    data, weights = make_input(tmp_path)
    x = dc.open(tmp_path / "in.zarr")
    dc.save(
        dc.correlate(x, weights, engine="scipy", method="direct"),
        tmp_path / "out.zarr",
        progress=False,
    )
    mark_partial(tmp_path / "out.zarr", 2)
    done = dc.save(
        dc.correlate(x, weights, method="fft"), tmp_path / "out.zarr", resume=True, progress=False
    )
    np.testing.assert_allclose(done[:], ndimage.correlate(data.astype(float), weights), atol=1e-4)


def _big_job(folder, size=1024, chunk=32, seed=1, shard=None):
    """1024 chunks in 256 tiles (SMALL_TILES), or in 64 shards of 128² (one tile each): a
    second or more of work, far longer than the 5 ms between polls."""
    rng = np.random.default_rng(seed)
    data = rng.random((size, size), dtype=np.float32)
    zarr.create_array(
        str(folder / "big.zarr"),
        shape=data.shape,
        chunks=(chunk, chunk),
        shards=(shard, shard) if shard else None,
        dtype=data.dtype,
    )[:] = data
    np.save(folder / "k.npy", rng.standard_normal((9, 9)))
    return [
        "convolve",
        "big.zarr",
        "k.npy",
        "-o",
        "out.zarr",
        "--method",
        "direct",
        "--engine",
        "scipy",
        "--cluster",
        "threads",
    ]


# Tiles of 4 stored chunks (64² float32): 64 tasks, so a kill lands while tiles are written.
SMALL_TILES = {"DASK_DISTCONV__TILE_SIZE": "16KiB"}


def _wait_for_chunks(process, output, count: int, timeout: float = 60) -> int:
    """Poll until ``count`` chunk objects exist (or the process ended); return how many."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        written = len(chunk_files(output)) if os.path.isdir(output / "c") else 0
        if written >= count or process.poll() is not None:
            return written
        time.sleep(0.005)
    raise AssertionError(f"no {count} chunks after {timeout} s")


def test_ctrl_c_cancels_says_how_to_resume_and_exits_130(tmp_path):
    args = _big_job(tmp_path)
    process = start_distconv(args, tmp_path, env=SMALL_TILES)
    written = _wait_for_chunks(process, tmp_path / "out.zarr", 3)
    assert process.poll() is None, "the job finished before it could be interrupted"
    os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole group
    _, stderr = process.communicate(timeout=60)
    line = one_stderr_line(stderr, process.returncode, 130)
    assert "interrupted" in line and "not marked complete" in line
    command = line.split("finish it with: ", 1)[1]
    assert shlex.split(command) == ["distconv", *args, "--resume"]
    described = dc.info(tmp_path / "out.zarr")
    assert described["complete"] is False
    assert written <= described["chunks_initialized"] < described["chunks_total"]

    finished = distconv(*shlex.split(command)[1:], cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert "wrote out.zarr" in finished.stdout  # the summary says what this run computed:
    assert "computed now" in finished.stdout and "already written" in finished.stdout
    out = dc.open(tmp_path / "out.zarr")  # complete: no allow_partial needed
    data = zarr.open_array(str(tmp_path / "big.zarr"))[:].astype(float)
    np.testing.assert_allclose(
        out.compute(), ndimage.convolve(data, np.load(tmp_path / "k.npy")), atol=1e-3
    )


@pytest.mark.parametrize("shard", [None, 128])
def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path, shard):
    """Kill -9 the CLI at seeded random moments (fresh run, then resumed runs), finish with
    --resume: the chunks (or shards, the output keeping the input's) equal an uninterrupted
    run's, byte for byte, and it is complete."""
    args = _big_job(tmp_path, shard=shard)
    total = (1024 // (shard or 32)) ** 2
    reference = dc.save(
        dc.convolve(
            dc.open(tmp_path / "big.zarr"),
            dc.load_weights(str(tmp_path / "k.npy")),
            method="direct",
            engine="scipy",
        ),
        tmp_path / "ref.zarr",
        progress=False,
    )
    choices = random.Random(20261122)
    written = 0
    kills = 0
    for trial in range(3):
        target = choices.randint(written + 1, written + (total - written) // 2)
        process = start_distconv(args + (["--resume"] if trial else []), tmp_path, env=SMALL_TILES)
        written = _wait_for_chunks(process, tmp_path / "out.zarr", target)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.communicate(timeout=60)
        assert dc.info(tmp_path / "out.zarr")["complete"] is False
    assert kills >= 2
    # Default tiles: resumed runs may plan other tiles; chunks are still written whole.
    finished = distconv(*args, "--resume", cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert dc.info(tmp_path / "out.zarr")["complete"] is True
    assert dc.info(tmp_path / "out.zarr")["shards"] == ((shard, shard) if shard else None)
    assert chunk_digest(tmp_path / "out.zarr") == chunk_digest(tmp_path / "ref.zarr")
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "out.zarr"))[:], reference[:])


def _mount_tmpfs(where, options: str) -> bool:
    """A small tmpfs (root only; CI without it skips). Returns True when mounted."""
    where.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True
    )
    return result.returncode == 0


@pytest.fixture
def read_only_dir(tmp_path):
    where = tmp_path / "ro"
    if os.geteuid() != 0:
        where.mkdir()
        where.chmod(0o555)
        yield where
        where.chmod(0o755)
        return
    # root ignores permission bits: only a read-only file system refuses it
    if not _mount_tmpfs(where, "ro,size=64k"):
        pytest.skip("cannot mount a read-only tmpfs here (needs root and mount rights)")
    yield where
    subprocess.run(["umount", str(where)], check=False)


def _convolve_into(folder, cwd):
    """``distconv convolve in.zarr k.npy`` (threads) writing ``out.zarr`` into ``folder``."""
    args = ["convolve", "in.zarr", "k.npy", "-o", folder / "out.zarr", "--cluster", "threads"]
    return distconv(*args, cwd=cwd, timeout=120)


def test_read_only_target_fails_loudly_and_writes_nothing(tmp_path, read_only_dir):
    make_input(tmp_path)
    result = _convolve_into(read_only_dir, tmp_path)
    line = one_stderr_line(result.stderr, result.returncode, 2)
    assert "cannot create output" in line, result.stderr
    assert os.listdir(read_only_dir) == []


@pytest.fixture
def tiny_disk(tmp_path):
    where = tmp_path / "tiny"
    if not _mount_tmpfs(where, "size=128k"):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount rights)")
    yield where
    subprocess.run(["umount", str(where)], check=False)


def test_disk_full_fails_loudly_and_the_output_stays_partial(tmp_path, tiny_disk):
    """576 KiB of incompressible float32 into 128 KiB: ENOSPC in a task, exit 1, never complete."""
    make_input(tmp_path, shape=(384, 384), chunks=(64, 64))
    result = _convolve_into(tiny_disk, tmp_path)
    line = one_stderr_line(result.stderr, result.returncode, 1)
    assert "No space left on device" in line and "--resume" in line
    assert dc.info(tiny_disk / "out.zarr")["complete"] is False


def _die_on_a_worker(block, block_info=None):
    # Only on a distributed worker (never in the test process): the worker process vanishes.
    if block_info[0]["chunk-location"] == (2, 1):
        os._exit(1)
    return block


def test_a_lost_worker_fails_loudly_and_nothing_is_marked_complete(tmp_path):
    rng = np.random.default_rng(5)
    x = da.from_array(rng.random((64, 64)), chunks=(16, 16)).map_blocks(
        _die_on_a_worker, dtype=float
    )
    # One death is enough to call the task poisoned: no restarts, a fast test.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with dc.cluster("local", workers=1, quiet=True) as client:
            # Security default: nothing of the embedded cluster listens beyond this machine.
            info = client.scheduler_info()
            addresses = [client.scheduler.address, *info["workers"]]
            assert all(a.startswith("tcp://127.0.0.1:") for a in addresses), addresses
            assert client.dashboard_link.startswith("http://127.0.0.1:")
            with pytest.raises(JobFailed, match="worker died.*--resume"):
                dc.save(x, tmp_path / "out.zarr", progress=False)
    assert dc.info(tmp_path / "out.zarr")["complete"] is False
