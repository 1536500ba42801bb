"""Faults on an object store, for real: the ``distconv`` command killed with SIGKILL while it
writes to S3, the S3 server stopped in the middle of a job, and a job on ``dask scheduler`` +
``dask worker`` processes that read and write the bucket themselves."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import numpy as np
import pytest
import zarr
from scipy import ndimage

import distconv as dc
from tests._images import DISTCONV
from tests._s3 import ACCESS_KEY, SECRET_KEY, object_bytes, s3_environment

SIZE, CHUNK = 512, 32  # 256 chunk objects: a job that takes seconds to write
pytestmark = pytest.mark.slow


@pytest.fixture
def job(s3, tmp_path):
    """A bucket with the input, the command's arguments, and the bytes an uninterrupted run
    writes (a reference written to another key)."""
    bucket = s3.new_bucket()
    data = np.random.default_rng(41).random((SIZE, SIZE)).astype(np.float32)
    zarr.create_array(str(tmp_path / "big.zarr"), data=data, chunks=(CHUNK, CHUNK))
    s3.filesystem().put(str(tmp_path / "big.zarr"), f"{bucket}/big.zarr", recursive=True)
    common = ["gaussian:sigma=2", "--engine", "scipy", "--method", "direct",
              "--storage-option", f"endpoint_url={s3.endpoint}",
              "--cluster", "threads"]  # fmt: skip
    # Tiles of 4 stored chunks: 64 tasks, so a kill lands mid-job even on a fast machine (one
    # default tile would hold the whole image and write all its chunks at once).
    env = {**s3_environment(tmp_path), "DASK_DISTCONV__TILE_SIZE": "16KiB"}
    reference = subprocess.run(
        [DISTCONV, "convolve", f"s3://{bucket}/big.zarr", *common, "-o", f"s3://{bucket}/ref.zarr"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert reference.returncode == 0, reference.stderr
    args = ["convolve", f"s3://{bucket}/big.zarr", *common, "-o", f"s3://{bucket}/out.zarr"]
    return bucket, args, env, object_bytes(s3.filesystem(), f"{bucket}/ref.zarr"), data


def _start(args, env) -> subprocess.Popen:
    return subprocess.Popen(
        [DISTCONV, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _chunks_written(s3, root: str) -> int:
    fs = s3.filesystem()
    try:
        return sum(1 for p in fs.find(root) if "/c/" in p)
    except FileNotFoundError:
        return 0


def _wait_for_chunks(s3, process, root: str, count: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        written = _chunks_written(s3, root)
        if written >= count or process.poll() is not None:
            return written
        time.sleep(0.02)
    raise AssertionError(f"no {count} chunks after {timeout} s")


def _info(s3, url: str) -> dict:
    options = {"endpoint_url": s3.endpoint, "key": ACCESS_KEY, "secret": SECRET_KEY}
    return dc.info(url, storage_options=options)


def test_sigkill_while_writing_to_s3_then_resume_is_bit_identical(s3, job):
    """Five kills at seeded random moments (a fresh run, then resumed runs), then --resume:
    every chunk object equals the uninterrupted run's, and the output is complete."""
    bucket, args, env, reference, _ = job
    out, total = f"{bucket}/out.zarr", (SIZE // CHUNK) ** 2
    choices, written, kills = random.Random(20261129), 0, 0
    for trial in range(5):
        target = choices.randint(written + 1, written + max(1, (total - written) // 4))
        process = _start(args + (["--resume"] if trial else []), env)
        written = _wait_for_chunks(s3, process, out, target)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.communicate(timeout=60)
        assert _info(s3, f"s3://{out}")["complete"] is False
    assert kills >= 4
    finished = subprocess.run(
        [DISTCONV, *args, "--resume"], capture_output=True, text=True, env=env, timeout=300
    )
    assert finished.returncode == 0, finished.stderr
    assert _info(s3, f"s3://{out}")["complete"] is True
    assert object_bytes(s3.filesystem(), out) == reference


def test_the_s3_server_stopped_mid_job_fails_in_one_line_and_resume_finishes(s3, job):
    bucket, args, env, reference, _ = job
    out = f"{bucket}/out.zarr"
    process = _start(args, env)
    written = _wait_for_chunks(s3, process, out, 40)
    assert process.poll() is None, "the job finished before the server could be stopped"
    s3.stop()
    try:
        _, stderr = process.communicate(timeout=240)
    finally:
        s3.start_again()
    assert process.returncode == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "--resume" in lines[0], stderr
    described = _info(s3, f"s3://{out}")
    assert described["complete"] is False
    assert written <= described["chunks_initialized"] < described["chunks_total"]
    finished = subprocess.run(
        [DISTCONV, *args, "--resume"], capture_output=True, text=True, env=env, timeout=300
    )
    assert finished.returncode == 0, finished.stderr
    assert _info(s3, f"s3://{out}")["complete"] is True
    assert object_bytes(s3.filesystem(), out) == reference


def _spawn(args: list[str], log, env) -> subprocess.Popen:
    with open(log, "wb") as handle:
        return subprocess.Popen(
            args, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def test_a_remote_cluster_reads_and_writes_s3_itself(s3, job, tmp_path):
    """``dask scheduler`` and two ``dask worker`` processes: the workers open the bucket with
    their own credentials and endpoint (from their environment) and write every chunk."""
    from tests.test_cluster_remote import free_port, scheduler_args, wait_for, worker_args

    bucket, args, env, _, data = job
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    worker_env = {**s3_environment(tmp_path, endpoint=s3.endpoint), "PYTHONUNBUFFERED": "1"}
    processes = [_spawn(scheduler_args(port), tmp_path / "scheduler.log", worker_env)]
    try:
        for name in ("w1", "w2"):
            processes.append(
                _spawn(worker_args(address, name), tmp_path / f"{name}.log", worker_env)
            )
        wait_for(address, 2, processes)
        command = [a if a != "threads" else address for a in args]
        command[command.index(f"s3://{bucket}/out.zarr")] = f"s3://{bucket}/remote.zarr"
        done = subprocess.run(
            [DISTCONV, *command, "-q"], capture_output=True, text=True, env=env, timeout=300
        )
        assert done.returncode == 0, done.stderr
        from distributed import Client

        with Client(address, timeout="10s") as client:
            # Each worker opened the bucket itself: s3fs caches the clients it creates.
            opened = client.run(lambda: len(__import__("s3fs").S3FileSystem._cache))
        assert opened and all(opened.values()), opened
    finally:
        for process in processes[::-1]:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
    described = _info(s3, f"s3://{bucket}/remote.zarr")
    assert described["complete"] is True
    store = zarr.open_array(_store(s3, f"s3://{bucket}/remote.zarr"), mode="r")
    weights = dc.load_weights("gaussian:sigma=2", ndim=2)
    np.testing.assert_allclose(
        store[:], ndimage.convolve(data.astype(np.float64), weights), atol=1e-5
    )


def _store(s3, url):
    from distconv.stores import Location

    options = {"endpoint_url": s3.endpoint, "key": ACCESS_KEY, "secret": SECRET_KEY}
    return Location.parse(url, options).zarr_store()
