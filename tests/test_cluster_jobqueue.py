"""Cluster files: the YAML spec against the job scripts dask-jobqueue generates, and a real
single-node SLURM when one runs on this machine (skipped otherwise)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import DISTCONV, one_stderr_line, start_distconv
from distributed import Client
from scipy import ndimage

import distconv as dc
from distconv.clusters import parse_spec
from distconv.clusters.jobqueue import apply_bounds, build_cluster, load_spec
from distconv.clusters.routing import cluster_will_have_gpu_workers

pytest.importorskip("dask_jobqueue", reason="the jobqueue extra is not installed")


def write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def directives(script: str, prefix: str) -> list[str]:
    """The lines of a job script that start with ``prefix`` (``#SBATCH``, ``#PBS``...)."""
    return [line for line in script.splitlines() if line.startswith(prefix)]


SLURM = """\
    system: slurm
    cluster:
      cores: 16
      memory: 64GB
      processes: 4
      walltime: "02:00:00"
      queue: compute
      account: proj42
      job_extra_directives: ["--gres=gpu:1"]
      worker_extra_args: ["--resources", "GPU=1"]
    scale:
      jobs: 2
"""

PBS = """\
    system: pbs
    cluster:
      cores: 8
      memory: 32GB
      processes: 2
      walltime: "01:00:00"
      queue: workq
      account: proj42
      resource_spec: "select=1:ncpus=8:mem=32GB"
    adapt:
      minimum_jobs: 0
      maximum_jobs: 3
"""


def test_slurm_file_gives_the_expected_job_script(tmp_path):
    spec = load_spec(write(tmp_path, "slurm.yaml", SLURM))
    assert parse_spec(spec.path).kind == "jobqueue"
    assert (spec.system, spec.scale, spec.adapt) == ("slurm", {"jobs": 2}, None)
    with contextlib.closing(build_cluster(spec)) as cluster:
        script = cluster.job_script()
        with Client(cluster) as client:  # no worker yet: GPU work still waits for GPU=1 ones
            assert cluster_will_have_gpu_workers(client)
    assert directives(script, "#SBATCH") == [
        "#SBATCH -J dask-worker",
        "#SBATCH -p compute",
        "#SBATCH -A proj42",
        "#SBATCH -n 1",
        "#SBATCH --cpus-per-task=16",
        "#SBATCH --mem=60G",
        "#SBATCH -t 02:00:00",
        "#SBATCH --gres=gpu:1",
    ]
    command = script.strip().splitlines()[-1]
    # 4 workers of 16/4 threads and 64GB/4 each; GPU nodes declare the resource routing uses.
    for part in (
        "-m distributed.cli.dask_worker tcp://",
        "--nthreads 4",
        "--nworkers 4",
        "--memory-limit 14.90GiB",
        "--resources GPU=1",
    ):
        assert part in command, (part, command)


def test_pbs_file_gives_the_expected_job_script_and_adapt_bounds(tmp_path):
    spec = load_spec(write(tmp_path, "pbs.yaml", PBS))
    with contextlib.closing(build_cluster(spec)) as cluster:
        script = cluster.job_script()
        apply_bounds(cluster, spec)  # minimum 0 jobs: nothing is submitted
        with Client(cluster) as client:
            assert not cluster_will_have_gpu_workers(client)  # no --resources GPU=...
        assert (cluster._adaptive.minimum, cluster._adaptive.maximum) == (0, 6)  # 3 jobs x 2
        assert len(cluster.worker_spec) == 0
    assert directives(script, "#PBS") == [
        "#PBS -N dask-worker",
        "#PBS -q workq",
        "#PBS -A proj42",
        "#PBS -l select=1:ncpus=8:mem=32GB",
        "#PBS -l walltime=01:00:00",
    ]
    assert "--nthreads 4" in script and "--nworkers 2" in script


@pytest.mark.parametrize(
    "system,marker", [("sge", "#$ -l h_rt=00:30:00"), ("lsf", "#BSUB -W 00:30")]
)
def test_sge_and_lsf_files(tmp_path, system, marker):
    walltime = "00:30:00" if system == "sge" else "00:30"  # each system's own format
    path = write(
        tmp_path,
        f"{system}.yaml",
        f"""\
        system: {system}
        cluster: {{cores: 4, memory: 8GB, walltime: "{walltime}"}}
        adapt: {{maximum_jobs: 2}}
    """,
    )
    with contextlib.closing(build_cluster(load_spec(path))) as cluster:
        assert marker in cluster.job_script()


@pytest.mark.parametrize(
    "text,message",
    [
        ("system: torque\ncluster: {cores: 1}\nscale: {jobs: 1}\n", "system must be one of slurm"),
        ("system: slurm\ncluster: {cores: 1, memory: 1GB}\n", "exactly one of 'scale'"),
        (
            "system: slurm\ncluster: {cores: 1, memory: 1GB}\nscale: {jobs: 1}\n"
            "adapt: {maximum: 2}\n",
            "exactly one of 'scale'",
        ),
        (
            "system: slurm\ncluster: {cores: 1, memory: 1GB}\nscale: {nodes: 2}\n",
            "unknown scale key(s) nodes",
        ),
        (
            "system: slurm\ncluster: {cores: 1, memory: 1GB}\nadapt: {max: 2}\n",
            "unknown adapt key(s) max",
        ),
        ("system: slurm\nqueue: x\nscale: {jobs: 1}\n", "unknown key(s) queue"),
        (
            "system: slurm\ncluster: {cores: 1, memory: 1GB, color: red}\nscale: {jobs: 1}\n",
            "SLURMCluster rejects the 'cluster' arguments",
        ),
        ("system: [slurm\n", "is not valid YAML (line"),
    ],
)
def test_bad_cluster_files_are_one_line_errors(tmp_path, text, message):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(dc.DistconvError) as caught:
        with dc.cluster(path, quiet=True):
            pass
    assert message in str(caught.value) and "\n" not in str(caught.value)


def run_main(*args: str, capsys) -> tuple[int, str, str]:
    """The ``distconv`` entry point in this process: (exit code, stdout, stderr)."""
    from distconv.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_bad_cluster_file_on_the_cli(tmp_path, capsys):
    path = write(tmp_path, "bad.yaml", "system: slurm\ncluster: {cores: 1}\nadapt: {max: 2}\n")
    code, _, err = run_main("cluster", "info", "--cluster", path, capsys=capsys)
    assert code == 2, err
    assert err == (
        f"distconv: error: cluster file {path}: unknown adapt key(s) max; "
        "allowed: minimum_jobs, maximum_jobs, minimum, maximum, minimum_cores, "
        "maximum_cores, minimum_memory, maximum_memory, interval, wait_count, "
        "target_duration\n"
    )


def test_missing_cluster_file(tmp_path):
    with pytest.raises(dc.DistconvError, match="no such file"):
        parse_spec(str(tmp_path / "nope.yaml"))


def test_cluster_info_prints_the_job_script(tmp_path, capsys):
    path = write(tmp_path, "pbs.yaml", PBS)
    code, out, err = run_main("cluster", "info", "--cluster", path, "--json", capsys=capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["kind"] == "jobqueue" and info["system"] == "pbs"
    assert info["bounds"] == "adapt minimum_jobs=0 maximum_jobs=3"
    assert "#PBS -q workq" in info["job_script"] and info["workers"] == []


# --- a real single-node SLURM ---------------------------------------------------------------------


def _slurm_running() -> str | None:
    """None when a SLURM controller answers here, else why the test skips."""
    if shutil.which("slurmctld") is None or shutil.which("sbatch") is None:
        return "no slurmctld/sbatch on this machine (.ci/slurm.sh installs and starts one)"
    try:
        done = subprocess.run(
            ["sinfo", "-h", "-o", "%a %t"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo failed: {exc}"
    if done.returncode != 0 or not done.stdout.startswith("up"):
        return f"no SLURM controller answers (sinfo: {done.stderr.strip()[:80]})"
    return None


def slurm_file(folder: Path, job_name: str = "dask-worker") -> str:
    """Two single-core worker jobs (one worker each) of this Python, logs in ``folder``."""
    return write(
        folder,
        "slurm.yaml",
        f"""\
        system: slurm
        cluster:
          cores: 1
          memory: 1GB
          processes: 1
          walltime: "00:10:00"
          job_name: {job_name}
          python: {sys.executable}
          log_directory: {folder / "logs"}
          scheduler_options: {{host: 127.0.0.1}}
        scale:
          jobs: 2
    """,
    )


# A SLURM is started here by .ci/slurm.sh (Debian's slurmctld, slurmd and munge, as root, one
# node on loopback); without one these tests skip with the reason.
SLURM_SKIP = _slurm_running()
needs_slurm = pytest.mark.skipif(SLURM_SKIP is not None, reason=str(SLURM_SKIP))


@needs_slurm
def test_convolve_on_a_real_slurm(tmp_path):
    """Two single-core worker jobs submitted with sbatch run a convolve that equals SciPy's."""
    path = slurm_file(tmp_path)
    data = np.random.default_rng(4).random((200, 150))
    store = zarr.create_array(
        str(tmp_path / "in.zarr"), shape=data.shape, chunks=(50, 50), dtype=data.dtype
    )
    store[:] = data
    w = np.random.default_rng(5).standard_normal((5, 5))
    with dc.cluster(path, quiet=True) as client:
        client.wait_for_workers(2, timeout=120)
        jobs = subprocess.run(["squeue", "-h", "-o", "%j %T"], capture_output=True, text=True)
        assert jobs.stdout.count("dask-worker RUNNING") >= 2, jobs.stdout
        dc.save(
            dc.convolve(dc.open(tmp_path / "in.zarr"), w), tmp_path / "out.zarr", progress=False
        )
    np.testing.assert_allclose(
        zarr.open_array(str(tmp_path / "out.zarr"))[:], ndimage.convolve(data, w), atol=1e-10
    )


def _our_jobs(name: str) -> list[str]:
    """The ids of the SLURM jobs called ``name`` still queued or running."""
    done = subprocess.run(
        ["squeue", "-h", "--name", name, "-o", "%i"], capture_output=True, text=True, timeout=30
    )
    return done.stdout.split()


@needs_slurm
def test_cancelled_slurm_workers_end_the_job_and_the_resume_finishes(tmp_path):
    """``scancel`` every worker job mid-job: the command ends within the bounded wait (5 s
    here) with exit 1 and the one line naming --resume; the resume's new sbatch workers finish
    the output, equal to SciPy's."""
    name = f"distconv-lost-{os.getpid()}"  # scancel only this test's jobs
    size, chunk = 1024, 64  # 256 one-chunk tiles of 16 KiB: cancelled while most are to do
    total = (size // chunk) ** 2
    image = np.random.default_rng(6).random((size, size))
    zarr.create_array(
        str(tmp_path / "in.zarr"), shape=image.shape, chunks=(chunk, chunk), dtype=image.dtype
    )[:] = image
    w = np.random.default_rng(7).standard_normal((5, 5))
    np.save(tmp_path / "k.npy", w)
    args = ["convolve", "in.zarr", "k.npy", "-o", "out.zarr", "--engine", "scipy"]
    args += ["--cluster", slurm_file(tmp_path, name), "-q"]
    env = {"DASK_DISTCONV__TILE_SIZE": "16KiB", "DASK_DISTCONV__LOST_WORKERS_WAIT": "5"}
    output = tmp_path / "out.zarr"

    def written() -> int:
        return sum(len(files) for _, _, files in os.walk(output / "c"))

    job = start_distconv(args, tmp_path, env=env)
    try:
        deadline = time.monotonic() + 180  # two sbatch jobs start, their workers join
        while written() == 0:
            assert job.poll() is None, job.communicate()[1]
            assert time.monotonic() < deadline, "no chunk written in 180 s"
            time.sleep(0.01)
        subprocess.run(["scancel", "--name", name], check=True, timeout=30)
        _, stderr = job.communicate(timeout=180)
    finally:
        if job.poll() is None:
            job.kill()
        subprocess.run(["scancel", "--name", name], timeout=30, check=False)
    line = one_stderr_line(stderr, job.returncode, 1)
    # Both jobs' workers, or the first only when the other had not joined yet: all are lost.
    lost = ("all 2 workers were lost", "the only worker was lost")
    assert any(f"{words} while computing out.zarr;" in line for words in lost), line
    count = int(line.split(" chunks are written")[0].rsplit("; ", 1)[1].split(" of ")[0])
    assert 0 < count < total and f"{count} of {total} chunks are written" in line
    assert "the output is partial, not marked complete" in line
    command = line.split("; finish it with: ", 1)[1]
    assert shlex.split(command) == ["distconv", *args, "--resume"]
    assert zarr.open_array(str(output), mode="r").attrs["distconv"]["complete"] is False

    resumed = subprocess.run(
        [DISTCONV, *shlex.split(command)[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )
    assert resumed.returncode == 0, resumed.stderr
    assert not _our_jobs(name)  # the resume's cluster cancelled its own jobs on the way out
    out = zarr.open_array(str(output), mode="r")
    assert out.attrs["distconv"]["complete"] is True
    assert out.attrs["distconv"]["resumed"][-1]["chunks_already_written"] >= count
    np.testing.assert_allclose(out[:], ndimage.convolve(image, w), rtol=0, atol=1e-10)
