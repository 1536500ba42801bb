"""Many hosts, one truth: workers that do not share the client's disk (tests/_hosts.py: each
"host" a ``dask worker`` in its own mount namespace with its own disk over the data folder).

A job reads and writes only through workers that proved they see its stores; where none does
it is refused before any work, in one line, with nothing written anywhere; a worker that joins
mid-job without the disk never runs a tile; an output is complete only when the client finds
every chunk; a missing chunk of a complete output is an error. Values are checked against
scipy.ndimage in float64, and every private disk is checked for stray files.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from distributed import Client
from scipy import ndimage

import distconv as dc
from tests._hosts import hosts_or_skip
from tests._images import distconv
from tests._s3 import ACCESS_KEY, SECRET_KEY, s3_environment
from tests.conftest import one_stderr_line

WEIGHTS = np.random.default_rng(2112).standard_normal((5, 5))


def _input(path: Path, shape=(256, 256), chunks=(32, 32)) -> np.ndarray:
    data = np.random.default_rng(sum(shape)).random(shape).astype(np.float32)
    zarr.create_array(str(path), data=data, chunks=chunks, overwrite=True)
    return data


def _expected(data: np.ndarray) -> np.ndarray:
    return ndimage.convolve(data.astype(np.float64), WEIGHTS)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("many-hosts")
    (root / "home").mkdir()
    np.save(root / "k.npy", WEIGHTS)  # outside the data folder: every worker sees it
    return root


@pytest.fixture(scope="module")
def blind(folders, s3):
    """Two workers, each on its own disk: neither sees the client's data folder."""
    env = s3_environment(folders / "home", endpoint=s3.endpoint)
    with hosts_or_skip(folders / "blind", folders / "blind-data") as hosts:
        hosts.add_worker("b1", own_disk=True, env=env)
        hosts.add_worker("b2", own_disk=True, env=env)
        hosts.wait_for_workers(2)
        yield hosts


@pytest.fixture(scope="module")
def mixed(folders):
    """One worker on the shared disk, one on its own."""
    with hosts_or_skip(folders / "mixed", folders / "mixed-data") as hosts:
        hosts.add_worker("near", own_disk=False)
        hosts.add_worker("far", own_disk=True)
        hosts.wait_for_workers(2)
        yield hosts


def _cli(folders, hosts, *args):
    env = s3_environment(folders / "home")
    return distconv(*args, "--cluster", hosts.address, env=env)


def test_local_input_no_worker_sees_is_refused_and_writes_nothing(folders, blind):
    data = blind.data
    _input(data / "in.zarr")
    result = _cli(folders, blind, "convolve", data / "in.zarr", folders / "k.npy",
                  "-o", data / "out.zarr")  # fmt: skip
    line = one_stderr_line(result.stderr, result.returncode, 2)
    assert f"no worker can see {data / 'in.zarr'}: 2 of 2 workers cannot see it" in line
    assert "filesystem the workers share" in line and "s3://" in line
    assert not (data / "out.zarr").exists()
    assert blind.stray_files() == {"b1": [], "b2": []}


def test_s3_input_local_output_only_the_client_sees_is_refused(folders, blind, s3):
    bucket = s3.new_bucket()
    data = _input(folders / "staged.zarr")
    s3.filesystem().put(str(folders / "staged.zarr"), f"{bucket}/in.zarr", recursive=True)
    out = blind.data / "from-s3.zarr"
    result = _cli(folders, blind, "convolve", f"s3://{bucket}/in.zarr", folders / "k.npy",
                  "-o", out, "--storage-option", f"endpoint_url={s3.endpoint}")  # fmt: skip
    line = one_stderr_line(result.stderr, result.returncode, 2)
    assert f"no worker can see {out}" in line and "a file the client wrote there" in line
    assert not out.exists()
    assert blind.stray_files() == {"b1": [], "b2": []}
    # The same job with the output on S3 too runs on both blind workers and equals scipy.
    result = _cli(folders, blind, "convolve", f"s3://{bucket}/in.zarr", folders / "k.npy",
                  "-o", f"s3://{bucket}/out.zarr",
                  "--storage-option", f"endpoint_url={s3.endpoint}")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "cannot see" not in result.stdout
    options = {"endpoint_url": s3.endpoint, "key": ACCESS_KEY, "secret": SECRET_KEY}
    written = dc.open(f"s3://{bucket}/out.zarr", storage_options=options).compute()
    np.testing.assert_allclose(written, _expected(data), atol=1e-4)
    assert blind.stray_files() == {"b1": [], "b2": []}


def test_mixed_cluster_runs_on_the_workers_that_see(folders, mixed):
    data = _input(mixed.data / "in.zarr")
    out = mixed.data / "out.zarr"
    result = _cli(folders, mixed, "convolve", mixed.data / "in.zarr", folders / "k.npy",
                  "-o", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"1 of 2 workers: 1 cannot see {mixed.data / 'in.zarr'}" in result.stdout
    np.testing.assert_allclose(dc.open(out).compute(), _expected(data), atol=1e-4)
    workers = dc.info(out)["provenance"]["workers"]
    assert workers["probed"] == 2 and workers["admitted"] == 1
    assert mixed.stray_files() == {"far": []}


def test_a_missing_chunk_of_a_complete_output_is_an_error_not_zeros(folders, mixed):
    _input(mixed.data / "in.zarr")
    out = mixed.data / "gap.zarr"
    result = _cli(folders, mixed, "convolve", mixed.data / "in.zarr", folders / "k.npy",
                  "-o", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    os.remove(out / "c" / "3" / "5")
    with pytest.raises(dc.DistconvError, match=r"chunk c/3/5 is missing from a complete"):
        dc.open(out).compute(scheduler="threads")
    # A plain Zarr array keeps Zarr's meaning: a missing chunk is the fill value.
    os.remove(mixed.data / "in.zarr" / "c" / "3" / "5")
    assert not dc.open(mixed.data / "in.zarr").compute()[96:128, 160:192].any()


def test_cluster_info_check_says_who_sees_what(folders, mixed):
    _input(mixed.data / "in.zarr")
    result = _cli(folders, mixed, "cluster", "info", "--check", mixed.data / "in.zarr",
                  "--check", folders / "k.npy")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"check {mixed.data / 'in.zarr'}: 1 of 2 workers see it" in result.stdout
    assert "cannot: zarr.json not found" in result.stdout
    assert f"check {folders / 'k.npy'}: 2 of 2 workers see it" in result.stdout
    assert mixed.stray_files() == {"far": []}


def test_deconvolution_passes_scratch_only_on_workers_that_see_it(folders, mixed):
    from skimage import restoration

    from distconv.ops.deconvolve import plan_for, richardson_lucy_with_plan
    from distconv.ops.deconvolve_passes import open_scratch, run_passes

    data = _input(mixed.data / "rl.zarr", shape=(96, 80), chunks=(24, 40))
    psf = np.outer(np.hanning(7)[1:-1], np.hanning(7)[1:-1])
    psf /= psf.sum()
    with Client(mixed.address):
        x = dc.open(mixed.data / "rl.zarr")
        options = {"clip": False, "filter_epsilon": None, "mode": "constant", "halo": "exact"}
        plan = plan_for(x, psf, "richardson-lucy", iterations=5, strategy="passes", **options)
        assert plan.strategy == "passes"
        store = open_scratch(mixed.data / "rl.scratch", plan, x)
        assert run_passes(x, plan, store, progress=False) == 4
        y = richardson_lucy_with_plan(x, plan, psf, scratch=store)
        dc.save(y, mixed.data / "rl-out.zarr", progress=False)
    expected = restoration.richardson_lucy(data.astype(np.float64), psf, 5, clip=False)
    written = zarr.open_array(str(mixed.data / "rl-out.zarr"))[:]
    assert np.abs(written - expected).max() / np.abs(expected).max() < 1e-5
    assert mixed.stray_files() == {"far": []}


def test_a_worker_without_the_disk_joining_mid_job_never_runs_a_tile(folders, tmp_path):
    """The job's tiles wait on a gate while a blind worker joins; it would steal them without
    the check. Released, the job finishes on the shared worker alone, equal to scipy."""
    gate = tmp_path / "open"  # outside the data folder: every worker sees it

    def gated(block, gate=str(gate)):
        deadline = time.monotonic() + 120
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
        return block * 2.0

    with hosts_or_skip(tmp_path / "hosts", tmp_path / "data") as hosts:
        hosts.add_worker("near", own_disk=False)
        hosts.wait_for_workers(1)
        data = _input(hosts.data / "in.zarr", shape=(512, 512), chunks=(64, 64))
        out = hosts.data / "out.zarr"
        failures: list[BaseException] = []
        with Client(hosts.address) as client:
            y = dc.map_chunks(gated, dc.open(hosts.data / "in.zarr"), dtype=np.float32)

            def job() -> None:
                try:
                    dc.save(y, out, progress=False)
                except BaseException as exc:  # reported by the test thread
                    failures.append(exc)

            thread = threading.Thread(target=job)
            thread.start()
            deadline = time.monotonic() + 60
            while not client.processing() or not any(client.processing().values()):
                assert time.monotonic() < deadline and thread.is_alive(), failures
                time.sleep(0.05)
            hosts.add_worker("late", own_disk=True)
            hosts.wait_for_workers(2)
            time.sleep(3)  # the watcher looks twice a second: it has probed the newcomer
            gate.touch()
            thread.join(timeout=120)
        assert not failures, failures
        np.testing.assert_array_equal(dc.open(out).compute(), data * 2.0)
        workers = dc.info(out)["provenance"]["workers"]
        blind = {str(hosts.data / "in.zarr"): 1, str(out): 1}
        assert workers == {"probed": 2, "admitted": 1, "cannot_see": blind}
        assert hosts.stray_files() == {"late": []}
