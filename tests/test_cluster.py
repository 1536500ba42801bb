"""Where work runs: the spec parser, a real multi-process LocalCluster on 127.0.0.1 with the
worker plugins, and the ``cuda`` cluster (real on a GPU machine, its errors everywhere).

Remote schedulers, TLS, routing and faults: test_cluster_remote.py; cluster files:
test_cluster_jobqueue.py.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr
from conftest import write_zarr
from scipy import ndimage

import distconv as dc
from distconv.clusters import SPEC_FORMS, describe, parse_spec
from distconv.clusters.plugins import plugin_report, register_plugins


def test_spec_parser(tmp_path):
    assert parse_spec("local").kind == "local"
    assert parse_spec(" threads ").kind == "threads"
    assert parse_spec("cuda").kind == "cuda"
    assert parse_spec("tcp://127.0.0.1:8786").address == "tcp://127.0.0.1:8786"
    assert parse_spec("tls://sched.example.org:8786").kind == "remote"
    assert parse_spec("tcp://[::1]:8786").address == "tcp://[::1]:8786"
    (tmp_path / "slurm.yml").write_text("system: slurm\n")
    assert parse_spec(str(tmp_path / "slurm.yml")).path == str(tmp_path / "slurm.yml")
    assert parse_spec(None).kind == "auto"  # config default
    for bad in ("moon", "", "http://x:1", "gpu", "slurm"):
        with pytest.raises(dc.DistconvError, match="local, threads, cuda, tcp://HOST:PORT"):
            parse_spec(bad)
    for bad in ("tcp://", "tcp://host", "tls://host:port"):
        with pytest.raises(dc.DistconvError, match="must be tcp://HOST:PORT or tls://HOST:PORT"):
            parse_spec(bad)
    with pytest.raises(dc.DistconvError, match="no such file"):
        parse_spec(str(tmp_path / "missing.yaml"))
    assert "PATH.yaml" in SPEC_FORMS


def test_spec_from_dask_config():
    import dask

    with dask.config.set({"distconv.cluster": "threads"}):
        assert parse_spec(None).kind == "threads"


def test_local_cluster_job_equals_scipy_and_plugins_apply(tmp_path):
    rng = np.random.default_rng(5)
    data = rng.random((300, 200), dtype=np.float32)
    write_zarr(tmp_path / "in.zarr", data, (64, 64))
    w = rng.standard_normal((9, 9))
    with dc.cluster("local", workers=2, quiet=True) as client:
        info = describe(client)
        assert len(info["workers"]) == 2 and info["total_threads"] == 2
        assert all(w["address"].startswith("tcp://127.0.0.1:") for w in info["workers"])
        assert info["scheduler"].startswith("tcp://127.0.0.1:")
        assert info["dashboard"].startswith("http://127.0.0.1:")
        # Each worker's pools are capped at its share (1 thread) ...
        reports = client.run(plugin_report)
        for report in reports.values():
            assert report["distconv-thread-limits"]["threads"] == 1
            assert set(report["distconv-thread-limits"]["threadpoolctl"].values()) == {1}
            assert report["distconv-gpu-setup"] == {"gpu": False}

        # ... and a re-registration with another share replaces the plugin and its limits,
        # including for libraries imported afterwards (Numba reads NUMBA_NUM_THREADS at import).
        register_plugins(client, threads=2)

        def pools():
            import numba
            from threadpoolctl import threadpool_info

            return (
                {lib["num_threads"] for lib in threadpool_info()},
                numba.config.NUMBA_NUM_THREADS,
                os.environ["TF_NUM_INTRAOP_THREADS"],
            )

        for blas, numba_threads, tf_threads in client.run(pools).values():
            assert blas == {2} and numba_threads == 2 and tf_threads == "2"
        register_plugins(client)  # back to the worker's share for the job
        for report in client.run(plugin_report).values():
            assert set(report["distconv-thread-limits"]["threadpoolctl"].values()) == {1}
        dc.save(
            dc.convolve(dc.open(tmp_path / "in.zarr"), w, mode="wrap", engine="scipy"),
            tmp_path / "o.zarr",
            progress=False,
        )
    out = zarr.open_array(str(tmp_path / "o.zarr"), mode="r")
    expected = ndimage.convolve(data.astype(np.float64), w, mode="wrap")
    np.testing.assert_allclose(out[:], expected, atol=1e-4)
    assert out.attrs["distconv"]["complete"] is True


def malloc_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}


def clean_malloc_environ(monkeypatch) -> None:
    """distributed copies the workers' pre-spawn variables into this process's environment,
    where they take precedence over the config for later clusters: start without them."""
    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX"):
        monkeypatch.delenv(name, raising=False)


def test_local_cluster_reuses_chunk_buffers_and_keeps_a_read_ready(monkeypatch):
    clean_malloc_environ(monkeypatch)
    with dc.cluster("local", workers=1, quiet=True) as client:
        environs = list(client.run(malloc_environ).values())
        saturation = client.cluster.scheduler.WORKER_SATURATION
    clean_malloc_environ(monkeypatch)
    assert environs == [
        {
            "MALLOC_TRIM_THRESHOLD_": str(32 * 2**20),
            "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
            "MALLOC_ARENA_MAX": "1",
        }
    ]
    assert saturation == 2.5
    with dc.cluster("local", workers=1, threads_per_worker=2, quiet=True) as client:
        (arenas,) = client.run(lambda: os.environ["MALLOC_ARENA_MAX"]).values()
    assert arenas == "2"  # one per computing thread


def test_local_cluster_keeps_the_users_own_malloc_and_saturation_settings(monkeypatch):
    import dask

    clean_malloc_environ(monkeypatch)
    with dask.config.set(
        {
            "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 4096,
            "distributed.scheduler.worker-saturation": 1.0,
        }
    ):
        with dc.cluster("local", workers=1, quiet=True) as client:
            environs = list(client.run(malloc_environ).values())
            saturation = client.cluster.scheduler.WORKER_SATURATION
    assert environs == [{"MALLOC_TRIM_THRESHOLD_": "4096"}]
    assert saturation == 1.0


def test_threads_spec_needs_no_cluster():
    with dc.cluster("threads") as client:
        assert client is None


def test_rmm_pool_needs_the_cuda_cluster():
    with pytest.raises(dc.DistconvError, match="--cluster cuda only"):
        with dc.cluster("local", rmm_pool_size="1GB"):
            pass


# --- cuda ---------------------------------------------------------------------------------------


def _gpu_count() -> int:
    """CUDA devices here, from NVML (no CUDA context); 0 without a driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:
        return 0


@pytest.mark.skipif(
    importlib.util.find_spec("dask_cuda") is not None and _gpu_count() > 0,
    reason="a GPU and dask-cuda are present: the real test runs instead",
)
def test_cuda_without_a_gpu_or_dask_cuda_is_one_line():
    with pytest.raises(dc.DistconvError) as caught:
        with dc.cluster("cuda", quiet=True):
            pass
    message = str(caught.value)
    assert message.startswith("the cuda cluster") and "\n" not in message
    assert ("distconv[cuda]" in message) == (importlib.util.find_spec("dask_cuda") is None)


# Whether this process holds a CUDA context, asked of the driver without creating one: the
# primary context of each device (what CuPy, Numba and the runtime API use) and the current one.
CUDA_CONTEXT_PROBE = """
def cuda_contexts():
    import ctypes
    cuda = ctypes.CDLL("libcuda.so.1")
    assert cuda.cuInit(0) == 0
    count = ctypes.c_int()
    assert cuda.cuDeviceGetCount(ctypes.byref(count)) == 0
    active = []
    for ordinal in range(count.value):
        device, flags, on = ctypes.c_int(), ctypes.c_uint(), ctypes.c_int()
        assert cuda.cuDeviceGet(ctypes.byref(device), ordinal) == 0
        assert cuda.cuDevicePrimaryCtxGetState(device, ctypes.byref(flags), ctypes.byref(on)) == 0
        if on.value:
            active.append(ordinal)
    current = ctypes.c_void_p()
    assert cuda.cuCtxGetCurrent(ctypes.byref(current)) == 0
    return {"primary": active, "current": bool(current.value)}
"""


@pytest.mark.gpu
@pytest.mark.skipif(_gpu_count() == 0, reason="no CUDA device (NVML reports none)")
@pytest.mark.skipif(
    importlib.util.find_spec("dask_cuda") is None or importlib.util.find_spec("cupy") is None,
    reason="dask-cuda and cupy are needed (pip install 'distconv[cuda]')",
)
def test_cuda_cluster_one_worker_per_gpu_no_context_in_client(tmp_path):
    """A cupy convolve and matmul on ``--cluster cuda``: one GPU worker per device, no CUDA
    context in the client process (it would take memory from GPU 0's worker), results equal
    SciPy's and NumPy's.

    Importing CuPy is not the test: ``dask.array`` itself imports it when installed
    (``dask/array/chunk_types.py``), and an import creates no context. What must not happen is
    CuPy, Numba or the runtime API touching a device in the client.
    """
    script = tmp_path / "client.py"
    script.write_text(
        CUDA_CONTEXT_PROBE
        + textwrap.dedent(f"""
        import sys, json
        import numpy as np, zarr
        import distconv as dc
        from distconv.clusters import describe
        from distconv.clusters.plugins import plugin_report
        if __name__ == "__main__":
            data = np.random.default_rng(0).random((512, 384)).astype(np.float32)
            z = zarr.create_array("{tmp_path}/in.zarr", shape=data.shape, chunks=(128, 128),
                                  dtype=data.dtype)
            z[:] = data
            w = np.random.default_rng(1).standard_normal((7, 7))
            rng = np.random.default_rng(2)
            with dc.cluster("cuda", quiet=True) as client:
                info = describe(client)
                reports = client.run(plugin_report)
                dc.save(dc.convolve(dc.open("{tmp_path}/in.zarr"), w, engine="cupy"),
                        "{tmp_path}/out.zarr", progress=False)
                # Partial products summed on the workers' devices (the budget splits k).
                a = rng.random((150, 1100)).astype(np.float32)
                b = rng.random((1100, 140)).astype(np.float32)
                zarr.create_array("{tmp_path}/a.zarr", data=a, chunks=(100, 100))
                zarr.create_array("{tmp_path}/b.zarr", data=b, chunks=(100, 70))
                product = dc.matmul(dc.open("{tmp_path}/a.zarr"), dc.open("{tmp_path}/b.zarr"),
                                    engine="cupy", memory_budget="600KiB")
                assert any(n.startswith("distconv-matmul-sum") for n in product.dask.layers)
                dc.save(product, "{tmp_path}/ab.zarr", progress=False)
            print(json.dumps({{"info": info, "reports": reports, "contexts": cuda_contexts(),
                              "modules": sorted(m for m in ("numba.cuda", "tensorflow", "rmm")
                                                if m in sys.modules)}}))
    """)
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["contexts"] == {"primary": [], "current": False}
    assert result["modules"] == []
    from distconv.clusters.resources import gpu_count

    workers = result["info"]["workers"]
    assert len(workers) == gpu_count()  # CUDA_VISIBLE_DEVICES if set, else every device
    assert all(w["resources"] == {"GPU": 1} and w["threads"] == 1 for w in workers)
    for report in result["reports"].values():
        assert report["distconv-gpu-setup"]["gpu"] is True
        assert report["distconv-gpu-setup"]["cupy"].startswith("CuPy pool")
    data = zarr.open_array(str(tmp_path / "in.zarr"))[:].astype(np.float64)
    w = np.random.default_rng(1).standard_normal((7, 7))
    np.testing.assert_allclose(
        zarr.open_array(str(tmp_path / "out.zarr"))[:],
        ndimage.convolve(data, w),
        rtol=1e-4,
        atol=1e-4,
    )
    a, b = (zarr.open_array(str(tmp_path / name))[:] for name in ("a.zarr", "b.zarr"))
    np.testing.assert_allclose(
        zarr.open_array(str(tmp_path / "ab.zarr"))[:],
        a.astype(np.float64) @ b.astype(np.float64),
        rtol=1e-4,
    )


@pytest.mark.gpu
@pytest.mark.skipif(_gpu_count() == 0, reason="no CUDA device (NVML reports none)")
@pytest.mark.skipif(importlib.util.find_spec("cupy") is None, reason="cupy is needed")
def test_the_cuda_context_probe_sees_a_context(tmp_path):
    """The probe above can fail: after CuPy touches a device, it reports that device."""
    script = tmp_path / "probe.py"
    script.write_text(
        CUDA_CONTEXT_PROBE
        + "import json, cupy\nbefore = cuda_contexts()\ncupy.arange(3).sum()\n"
        + "print(json.dumps([before, cuda_contexts()]))\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    before, after = json.loads(done.stdout.strip().splitlines()[-1])
    assert before == {"primary": [], "current": False}
    assert after["current"] and after["primary"] == [0]
