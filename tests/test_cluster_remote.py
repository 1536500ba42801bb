"""Remote clusters for real: ``dask scheduler`` and ``dask worker`` subprocesses on 127.0.0.1.

One plain-TCP cluster (a scheduler, a worker declaring ``GPU=1`` and a plain worker) serves the
CLI job, ``distconv cluster info``, the GPU routing test and the fault test; a second scheduler
speaks TLS with certificates made here by the ``openssl`` command. Every process is started in
its own session and its process group is stopped in the fixture's teardown (the helpers live in
tests/_hosts.py, with the multi-host harness).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask
import numpy as np
import pytest
import zarr
from scipy import ndimage

import distconv as dc
from distconv.provenance import remember_provenance, step_of
from tests._hosts import (  # shared with test_object_store_faults.py and _hosts.Hosts
    START_TIMEOUT,
    free_port,
    scheduler_args,
    spawn,
    stop_processes,
    wait_for,
    worker_args,
)


@pytest.fixture(scope="module")
def tcp_cluster(tmp_path_factory):
    """A scheduler plus two nanny-managed workers: ``gpu`` (resources GPU=1) and ``cpu``."""
    workers = {"gpu": ["--resources", "GPU=1"], "cpu": []}
    yield from tcp_processes(tmp_path_factory.mktemp("tcp-logs"), workers)


def tcp_processes(logs: Path, workers: dict[str, list[str]]):
    """Yield the address of a ``dask scheduler`` with a ``dask worker`` per name of ``workers``
    (its extra arguments; log ``<name>.log`` in ``logs``) once all have joined; stop them after."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    processes = [spawn(scheduler_args(port), logs / "scheduler.log")]
    try:
        for name, extra in workers.items():
            processes.append(spawn(worker_args(address, name, *extra), logs / f"{name}.log"))
        wait_for(address, len(workers), processes)
        yield address
    finally:
        stop_processes(processes[::-1])


def make_input(folder: Path, shape=(256, 192), chunks=(64, 64), seed=0) -> np.ndarray:
    data = np.random.default_rng(seed).random(shape)
    store = zarr.create_array(str(folder / "in.zarr"), shape=shape, chunks=chunks, dtype=data.dtype)
    store[:] = data
    return data


def run_cli(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distconv.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def test_cli_job_on_a_remote_scheduler(tcp_cluster, tmp_path):
    data = make_input(tmp_path)
    w = np.random.default_rng(1).standard_normal((5, 7))
    np.save(tmp_path / "k.npy", w)
    done = run_cli(
        "convolve",
        "in.zarr",
        "k.npy",
        "-o",
        "out.zarr",
        "--mode",
        "mirror",
        "--engine",
        "scipy",
        "--cluster",
        tcp_cluster,
        "-q",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")
    np.testing.assert_allclose(out[:], ndimage.convolve(data, w, mode="mirror"), atol=1e-10)
    assert out.attrs["distconv"]["complete"] is True


def test_cluster_info_lists_the_remote_workers(tcp_cluster):
    from click.testing import CliRunner

    from distconv.cli import cli

    done = CliRunner().invoke(cli, ["cluster", "info", "--cluster", tcp_cluster, "--json"])
    assert done.exit_code == 0, done.output
    info = json.loads(done.output)
    assert info["kind"] == "remote" and info["scheduler"] == tcp_cluster
    by_name = {w["name"]: w for w in info["workers"]}
    assert set(by_name) == {"gpu", "cpu"}
    assert by_name["gpu"]["resources"] == {"GPU": 1} and by_name["cpu"]["resources"] == {}
    assert info["total_threads"] == 2 and info["gpus"] == 1
    assert by_name["cpu"]["memory_limit"] == 2 * 2**30
    text = CliRunner().invoke(cli, ["cluster", "info", "--cluster", tcp_cluster])
    assert text.exit_code == 0 and "resources GPU=1" in text.output
    assert "2 (2 threads, 4.0 GiB memory, 1 GPUs)" in text.output


def test_gpu_plugin_acts_on_the_gpu_worker_only(tcp_cluster):
    """The worker declaring GPU=1 gets TensorFlow's memory growth and the CuPy pool set up
    (CuPy is reported missing where it is not installed); the plain worker is left alone."""
    from distconv.clusters.plugins import plugin_report

    def growth():
        return os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH")

    with dc.cluster(tcp_cluster) as client:
        names = {
            a: str(w["name"]) for a, w in client.scheduler_info(n_workers=-1)["workers"].items()
        }
        reports = {names[a]: r["distconv-gpu-setup"] for a, r in client.run(plugin_report).items()}
        env = {names[a]: value for a, value in client.run(growth).items()}
    assert reports["cpu"] == {"gpu": False} and env["cpu"] is None
    assert reports["gpu"]["gpu"] is True and env["gpu"] == "true"
    cupy_installed = importlib.util.find_spec("cupy") is not None
    assert (reports["gpu"]["cupy"] == "not installed") == (not cupy_installed)


def test_unreachable_scheduler_is_one_line(tmp_path, monkeypatch, capsys):
    from distconv.cli import main

    make_input(tmp_path, shape=(32, 32), chunks=(16, 16))
    monkeypatch.chdir(tmp_path)
    with dask.config.set({"distconv.connect-timeout": "1s"}), pytest.raises(SystemExit) as code:
        main(
            [
                "convolve",
                "in.zarr",
                "box:size=3",
                "-o",
                "o.zarr",
                "--cluster",
                f"tcp://127.0.0.1:{free_port()}",
                "-q",
            ]
        )
    err = capsys.readouterr().err
    assert code.value.code == 2
    assert err.startswith("distconv: error: cannot reach the scheduler at tcp://")
    assert err.count("\n") == 1
    assert not (tmp_path / "o.zarr").exists()


# --- GPU routing on a mixed cluster ------------------------------------------------------------


def _workers_that_ran(client, run) -> dict[str, set[str]]:
    """Run ``run()`` recording the scheduler's task stream; key prefix → worker names."""
    from distributed import get_task_stream

    names = {a: str(w["name"]) for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
    with get_task_stream(client) as stream:
        run()
    ran: dict[str, set[str]] = {}
    for record in stream.data:
        key = record["key"]
        prefix = key[0] if isinstance(key, tuple) else key
        prefix = str(prefix).rsplit("-", 1)[0]
        ran.setdefault(prefix, set()).add(names.get(record["worker"], record["worker"]))
    return ran


@pytest.mark.parametrize("engine_device", ["gpu", "cpu"])
def test_gpu_engine_tasks_run_on_the_gpu_worker(tcp_cluster, tmp_path, engine_device):
    """A GPU-engine job lands on the worker with GPU=1 only, after fusion; a CPU job spreads.

    There is no GPU here, so the graph computes with scipy, but its provenance names ``cupy``:
    routing is decided from the engine recorded in the graph (clusters/routing.py), which is
    exactly what a real cupy graph carries. The task stream shows the fused task names: the
    correlate layer never runs as a task of its own, so its resources survived fusion only if
    every fused task still went to the GPU worker.
    """
    data = make_input(tmp_path, shape=(384, 384), chunks=(48, 48))
    w = np.random.default_rng(2).standard_normal((3, 3))
    y = dc.correlate(dc.open(tmp_path / "in.zarr"), w, engine="scipy", method="direct")
    if engine_device == "gpu":
        y = remember_provenance(y, {**step_of(y), "engine": "cupy"})
    correlate_layer = y.name.rsplit("-", 1)[0]
    with dc.cluster(tcp_cluster) as client:
        ran = _workers_that_ran(client, lambda: dc.save(y, tmp_path / "o.zarr", progress=False))
    out = zarr.open_array(str(tmp_path / "o.zarr"), mode="r")
    np.testing.assert_allclose(out[:], ndimage.correlate(data, w, mode="reflect"), atol=1e-10)
    assert correlate_layer not in ran, f"expected the correlate layer fused away: {ran}"
    everyone = set().union(*ran.values())
    if engine_device == "gpu":
        assert everyone == {"gpu"}, ran
    else:
        assert everyone == {"gpu", "cpu"}, ran  # 64 chunks on two single-thread workers


def test_annotations_alone_are_dropped_by_fusion(tcp_cluster, tmp_path):
    """The trap the routing avoids: ``dask.annotate(resources=...)`` does not reach fused tasks.

    If a future Dask keeps annotations through fusion this test fails, and annotating becomes
    an alternative; routing at submission keeps working either way.
    """
    make_input(tmp_path, shape=(384, 384), chunks=(48, 48))
    with dask.annotate(resources={"GPU": 1}):
        y = dc.correlate(dc.open(tmp_path / "in.zarr"), np.ones((3, 3)), engine="scipy")
    with dc.cluster(tcp_cluster) as client:
        ran = _workers_that_ran(client, lambda: dc.save(y, tmp_path / "o.zarr", progress=False))
    assert set().union(*ran.values()) == {"gpu", "cpu"}, ran


# --- fault tolerance -----------------------------------------------------------------------------


def _worker_pids(client) -> dict[str, int]:
    return {
        str(client.scheduler_info(n_workers=-1)["workers"][a]["name"]): pid
        for a, pid in client.run(os.getpid).items()
    }


@pytest.mark.parametrize("kill_at", [0.1, 0.4, 0.7])
def test_job_survives_a_killed_worker(tcp_cluster, tmp_path, kill_at):
    """SIGKILL the plain worker once ``kill_at`` of the chunks are written: its tasks are
    recomputed elsewhere (its nanny restarts it), a chunk is at worst written twice with the
    same values, and the output equals SciPy's."""
    data = make_input(tmp_path, shape=(512, 512), chunks=(64, 64), seed=int(kill_at * 10))
    w = np.random.default_rng(3).standard_normal((5, 5))
    # One stored chunk (16 KiB) per tile, planned here with the graph: with the default tiles
    # the job is a few tasks, and a fast machine finishes them between two looks at the output.
    with dask.config.set({"distconv.tile_size": "16KiB"}):
        y = dc.convolve(
            dc.open(tmp_path / "in.zarr"), w, mode="nearest", engine="scipy", method="direct"
        )
    total = 8 * 8
    assert y.numblocks == (8, 8)
    errors: list[BaseException] = []

    def job():
        try:
            dc.save(y, tmp_path / "out.zarr", progress=False)
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    with dc.cluster(tcp_cluster) as client:
        pid = _worker_pids(client)["cpu"]
        runner = threading.Thread(target=job)
        runner.start()
        written = 0
        deadline = time.monotonic() + 60
        while written < kill_at * total and runner.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
            # Chunk objects on disk (Zarr v3 keys c/i/j; empty chunks are written too).
            written = sum(1 for p in (tmp_path / "out.zarr" / "c").rglob("*") if p.is_file())
        still_running = runner.is_alive()
        os.kill(pid, signal.SIGKILL)
        runner.join(timeout=120)
        assert not runner.is_alive() and not errors, errors
        assert still_running and written < total, "the kill came after the job finished"
        client.wait_for_workers(2, timeout=START_TIMEOUT)  # the nanny brought it back
        assert _worker_pids(client)["cpu"] != pid
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")
    assert out.attrs["distconv"]["complete"] is True
    np.testing.assert_allclose(out[:], ndimage.convolve(data, w, mode="nearest"), atol=1e-10)


# --- TLS ------------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    """A TLS scheduler and one worker, with a CA and a node certificate made here."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    certs = tmp_path_factory.mktemp("certs")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=distconv test CA",
        cwd=certs,
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "node.key",
        "-out",
        "node.csr",
        "-subj",
        "/CN=127.0.0.1",
        cwd=certs,
    )
    (certs / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        "node.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "node.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        cwd=certs,
    )
    tls = (
        "--tls-ca-file",
        str(certs / "ca.pem"),
        "--tls-cert",
        str(certs / "node.pem"),
        "--tls-key",
        str(certs / "node.key"),
    )
    port = free_port()
    address = f"tls://127.0.0.1:{port}"
    processes = [spawn(scheduler_args(port, *tls), certs / "scheduler.log")]
    try:
        processes.append(spawn(worker_args(address, "tls-worker", *tls), certs / "worker.log"))
        env = {
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(certs / "ca.pem"),
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": str(certs / "node.pem"),
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": str(certs / "node.key"),
        }
        from distributed import Security

        wait_for(
            address,
            1,
            processes,
            security=Security(
                tls_ca_file=env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"],
                tls_client_cert=env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT"],
                tls_client_key=env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"],
            ),
        )
        yield address, env
    finally:
        stop_processes(processes[::-1])


def test_cli_job_over_tls(tls_cluster, tmp_path):
    address, env = tls_cluster
    data = make_input(tmp_path, shape=(128, 96), chunks=(32, 32))
    done = run_cli(
        "correlate",
        "in.zarr",
        "gaussian:sigma=1.5",
        "-o",
        "out.zarr",
        "--engine",
        "scipy",
        "--cluster",
        address,
        "-q",
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    expected = ndimage.correlate(
        data, dc.load_weights("gaussian:sigma=1.5", ndim=2), mode="reflect"
    )
    np.testing.assert_allclose(zarr.open_array(str(tmp_path / "out.zarr"))[:], expected, atol=1e-10)


def test_tls_without_config_is_one_line(tls_cluster, monkeypatch):
    address, _ = tls_cluster
    for name in list(os.environ):
        if name.startswith("DASK_DISTRIBUTED__COMM__TLS"):
            monkeypatch.delenv(name)
    with dask.config.set({"distributed.comm.tls.ca-file": None}):
        with pytest.raises(dc.DistconvError, match="distributed.comm.tls.ca-file") as caught:
            with dc.cluster(address):
                pass
    assert "\n" not in str(caught.value)
