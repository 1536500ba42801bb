"""A job whose cluster loses every worker: it goes on when workers come back, else it ends
within ``distconv.lost_workers_wait`` with one line naming the ``--resume`` command.

Real processes: a ``dask scheduler`` and nanny-managed ``dask worker`` processes on 127.0.0.1
(tests/_hosts.py), the ``distconv`` command in its own process. Workers are killed by process
group (nanny and worker: nothing restarts them) once the job's first chunks exist, so the job
is mid-way; what follows is decided by events and deadlines, not by sleeps.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import DISTCONV, one_stderr_line, start_distconv
from scipy import ndimage

from tests._hosts import Hosts

# 1024² float64 in 64² chunks: 256 chunks, and 16 KiB tiles make one task per chunk, so the
# workers are killed while most tasks are still to run.
SIZE, CHUNK = 1024, 64
TOTAL = (SIZE // CHUNK) ** 2
SMALL_TILES = {"DASK_DISTCONV__TILE_SIZE": "16KiB"}


def make_job(data_dir: Path, address: str, output: str = "out.zarr") -> list[str]:
    """Write the input and weights into ``data_dir`` (once); the convolve command's arguments."""
    if not (data_dir / "in.zarr").exists():
        image = np.random.default_rng(7).random((SIZE, SIZE))
        zarr.create_array(
            str(data_dir / "in.zarr"), shape=image.shape, chunks=(CHUNK, CHUNK), dtype=image.dtype
        )[:] = image
        np.save(data_dir / "k.npy", np.random.default_rng(8).standard_normal((5, 5)))
    return ["convolve", "in.zarr", "k.npy", "-o", output, "--engine", "scipy"] + [
        "--cluster",
        address,
        "-q",
    ]


def chunk_count(output: Path) -> int:
    """Chunk objects of a v3 output (``c/i/j``), temporary files left out."""
    return sum(
        not name.endswith(".partial") for _, _, files in os.walk(output / "c") for name in files
    )


def wait_for_first_chunk(process: subprocess.Popen, output: Path, timeout: float = 120) -> None:
    """Return once the job wrote a chunk; fail if it ends first or nothing comes in time."""
    deadline = time.monotonic() + timeout
    while chunk_count(output) == 0:
        if process.poll() is not None:
            pytest.fail(f"the job ended before writing a chunk: {process.communicate()[1]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no chunk of {output} after {timeout} s")
        time.sleep(0.01)


def kill_all_mid_job(hosts: Hosts, names: list[str], output: Path) -> int:
    """Kill every worker of ``names`` (whole process groups); the chunks written by then, which
    must be fewer than all (else the job was not mid-way and the test proves nothing)."""
    for name in names:
        hosts.kill_worker(name)
    written = chunk_count(output)
    assert written < TOTAL, "the job finished before its workers were killed: make it bigger"
    return written


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [DISTCONV, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def expected(data_dir: Path) -> np.ndarray:
    image = zarr.open_array(str(data_dir / "in.zarr"), mode="r")[:]
    return ndimage.convolve(image, np.load(data_dir / "k.npy"))


def test_all_workers_lost_ends_in_one_line_and_the_resume_finishes(tmp_path):
    data = tmp_path / "data"
    env = {**SMALL_TILES, "DASK_DISTCONV__LOST_WORKERS_WAIT": "5"}
    with Hosts(tmp_path / "hosts", data) as hosts:
        hosts.add_worker("a", own_disk=False)
        hosts.add_worker("b", own_disk=False)
        hosts.wait_for_workers(2)
        args = make_job(data, hosts.address)
        job = start_distconv(args, data, env=env)
        try:
            wait_for_first_chunk(job, data / "out.zarr")
            written = kill_all_mid_job(hosts, ["a", "b"], data / "out.zarr")
            # 5 s of waiting for a worker, then the failure; far less than this deadline.
            _, stderr = job.communicate(timeout=120)
        finally:
            if job.poll() is None:
                job.kill()
        line = one_stderr_line(stderr, job.returncode, 1)
        assert "all 2 workers were lost while computing out.zarr" in line, line
        assert f"; {chunk_count(data / 'out.zarr')} of {TOTAL} chunks are written;" in line
        assert chunk_count(data / "out.zarr") >= written
        assert "the output is partial, not marked complete" in line
        command = line.split("; finish it with: ", 1)[1]
        assert shlex.split(command) == ["distconv", *args, "--resume"]
        assert line.count("--resume") == 1
        out = zarr.open_array(str(data / "out.zarr"), mode="r")
        assert out.attrs["distconv"]["complete"] is False

        hosts.add_worker("c", own_disk=False)
        hosts.add_worker("d", own_disk=False)
        hosts.wait_for_workers(2)
        resumed = run(shlex.split(command)[1:], data, env)
        assert resumed.returncode == 0, resumed.stderr
        reference = run(make_job(data, hosts.address, "ref.zarr"), data, env)
        assert reference.returncode == 0, reference.stderr

    out = zarr.open_array(str(data / "out.zarr"), mode="r")
    assert out.attrs["distconv"]["complete"] is True
    assert out.attrs["distconv"]["resumed"][-1]["chunks_already_written"] >= written
    result = out[:]
    np.testing.assert_allclose(result, expected(data), rtol=0, atol=1e-10)
    uninterrupted = zarr.open_array(str(data / "ref.zarr"), mode="r")[:]
    assert result.tobytes() == uninterrupted.tobytes()  # bit for bit


def test_a_new_worker_within_the_wait_lets_the_job_finish(tmp_path):
    """Every worker killed mid-job, a new one started: it passes the probe of what workers see,
    is admitted, and the job finishes as if nothing happened."""
    data = tmp_path / "data"
    env = {**SMALL_TILES, "DASK_DISTCONV__LOST_WORKERS_WAIT": "120"}
    with Hosts(tmp_path / "hosts", data) as hosts:
        hosts.add_worker("a", own_disk=False)
        hosts.add_worker("b", own_disk=False)
        hosts.wait_for_workers(2)
        job = start_distconv(make_job(data, hosts.address), data, env=env)
        try:
            wait_for_first_chunk(job, data / "out.zarr")
            kill_all_mid_job(hosts, ["a", "b"], data / "out.zarr")
            hosts.add_worker("c", own_disk=False)
            _, stderr = job.communicate(timeout=240)
        finally:
            if job.poll() is None:
                job.kill()
        assert job.returncode == 0, stderr
    out = zarr.open_array(str(data / "out.zarr"), mode="r")
    assert out.attrs["distconv"]["complete"] is True
    np.testing.assert_allclose(out[:], expected(data), rtol=0, atol=1e-10)


def test_the_watcher_counts_only_workers_that_may_run_the_job():
    """In-process: a watcher stops a job only after it saw a worker that may run it (one with
    every required resource) and then none for ``wait`` seconds; a worker back resets it."""
    import dask
    from distributed import Client, LocalCluster

    from distconv.errors import JobFailed, WorkersLost
    from distconv.executor import LostWorkers

    with dask.config.set({"distconv.lost_workers_wait": 7}):
        assert LostWorkers().wait == 7.0
    cluster = LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
    )
    with cluster, Client(cluster) as client:
        needs_gpu, now = LostWorkers({"GPU": 1}, wait=0), LostWorkers(wait=0)
        later = LostWorkers(wait=3600)
        for watcher in (needs_gpu, now, later):
            assert watcher(client) is None
        assert not needs_gpu.seen and len(now.seen) == len(later.seen) == 1

        cluster.scale(0)
        deadline = time.monotonic() + 60
        while client.scheduler_info(n_workers=-1)["workers"]:
            assert time.monotonic() < deadline, "the worker did not leave"
            time.sleep(0.05)
        lost = now(client)
        assert isinstance(lost, WorkersLost) and isinstance(lost, JobFailed)
        assert (lost.workers, lost.exit_code) == (1, 1)
        assert "the only worker that could run the job was lost" in str(lost)
        assert later(client) is None and later.since is not None  # waiting, not failed
        assert needs_gpu(client) is None  # never saw a worker that may run it: a queue's wait

        cluster.scale(1)
        client.wait_for_workers(1, timeout=60)
        assert later(client) is None and later.since is None and len(later.seen) == 2
