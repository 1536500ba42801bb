"""The summary line each writing command prints tells the truth about the store it wrote.

Every command runs in this process through ``distconv.cli.main`` on a random Zarr store, and
the numbers in its line are checked against the output itself (its stored chunks counted by
zarr), against ``--dry-run``'s plan (the tiles), and, after ``--resume``, against the chunks
that were missing (a partial output made deterministically: a complete one with chunk objects
removed and ``complete`` set back to false, as an interrupted job leaves it).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import zarr

from distconv.cli import main

pytestmark = pytest.mark.filterwarnings("ignore")

THREADS = ("--cluster", "threads")
SHAPE, CHUNKS = (512, 512), (64, 64)


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    """A folder holding ``a.zarr`` (512×512 float32 in 64 stored chunks) and a 5×5 kernel."""
    rng = np.random.default_rng(11)
    array = zarr.create_array(str(tmp_path / "a.zarr"), shape=SHAPE, chunks=CHUNKS, dtype="float32")
    array[:] = rng.random(SHAPE, dtype=np.float32) + 0.1
    np.save(tmp_path / "kernel.npy", rng.random((5, 5)))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(capsys, *argv: str) -> str:
    """``distconv ARGV`` in this process; its stdout (the exit status must be 0)."""
    try:
        main(list(argv))
    except SystemExit as exc:
        assert exc.code in (0, None), capsys.readouterr().err
    return capsys.readouterr().out


def summary(out: str) -> str:
    (line,) = [line for line in out.splitlines() if line.startswith("wrote ")]
    return line


def chunks_and_tiles(line: str) -> tuple[int, int]:
    found = re.search(r", ([\d,]+) chunks? in ([\d,]+) tiles?", line)
    assert found, line
    return int(found[1].replace(",", "")), int(found[2].replace(",", ""))


def planned_tasks(capsys, *argv: str) -> int:
    """The tasks ``--dry-run`` plans for the same command."""
    found = re.search(r"tasks:\s+([\d,]+)", run(capsys, *argv, "--dry-run"))
    assert found
    return int(found[1].replace(",", ""))


def stored_chunks(path) -> int:
    return zarr.open_array(str(path), mode="r").nchunks


def make_partial(path, keys: list[str]) -> int:
    """What an interrupted job leaves: ``keys``'s chunk objects missing, ``complete`` false.
    Returns the chunks still written, counted by zarr."""
    array = zarr.open_array(str(path), mode="r+")
    array.attrs.update({"distconv": {**array.attrs["distconv"], "complete": False}})
    for key in keys:
        (path / "c" / key).unlink()
    return zarr.open_array(str(path), mode="r").nchunks_initialized


def test_convolve_counts_the_outputs_stored_chunks_and_its_tiles(folder, capsys):
    job = ("convolve", "a.zarr", "kernel.npy", "-o", "c.zarr", *THREADS)
    tasks = planned_tasks(capsys, *job)
    line = summary(run(capsys, *job))
    assert chunks_and_tiles(line) == (stored_chunks(folder / "c.zarr"), tasks)
    assert stored_chunks(folder / "c.zarr") == 64 and tasks < 64  # a tile holds many chunks
    assert "computed now" not in line and line.endswith("; on threads")


def test_multiply_counts_the_outputs_stored_chunks_not_its_tasks(folder, capsys):
    line = summary(run(capsys, "multiply", "a.zarr", "0.5", "-o", "half.zarr", *THREADS))
    chunks, tiles = chunks_and_tiles(line)
    assert chunks == stored_chunks(folder / "half.zarr") == 64
    assert tiles <= chunks
    assert line.endswith("; on threads")


def test_deconvolve_says_where_it_ran_as_convolve_does(folder, capsys):
    job = ("deconvolve", "a.zarr", "kernel.npy", "-o", "d.zarr", "--iterations", "2")
    job += ("--no-clip", *THREADS)
    tasks = planned_tasks(capsys, *job)
    line = summary(run(capsys, *job))
    assert chunks_and_tiles(line) == (stored_chunks(folder / "d.zarr"), tasks)
    assert line.endswith("; on threads")
    convolved = summary(run(capsys, "convolve", "a.zarr", "kernel.npy", "-o", "c.zarr", *THREADS))
    assert line.rpartition("; on ")[2] == convolved.rpartition("; on ")[2]


def test_matmul_counts_stored_chunks_and_the_blocks_it_computed(folder, capsys):
    job = ("matmul", "a.zarr", "a.zarr", "-o", "m.zarr", *THREADS)
    blocks = re.search(r"([\d,]+) block\(s\) computed", run(capsys, *job, "--dry-run"))
    line = summary(run(capsys, *job))
    assert chunks_and_tiles(line) == (stored_chunks(folder / "m.zarr"), int(blocks[1]))
    assert line.endswith("; on threads")


def _rate_bounds(amount: float, seconds: float) -> tuple[float, float]:
    """The rates a line could print for ``amount`` in ``seconds`` printed to 0.01 s."""
    return amount / (seconds + 0.005), amount / max(seconds - 0.005, 1e-9)


@pytest.mark.parametrize("removed", [16, 48])
def test_resume_counts_and_times_only_the_chunks_computed_now(folder, capsys, removed):
    job = ("convolve", "a.zarr", "kernel.npy", "-o", "c.zarr", *THREADS)
    run(capsys, *job)
    keys = [f"{i}/{j}" for i in range(8) for j in range(8)][:removed]
    already = make_partial(folder / "c.zarr", keys)
    total = stored_chunks(folder / "c.zarr")
    assert already == total - removed

    line = summary(run(capsys, *job, "--resume"))
    assert f"; {removed} of {total} chunks computed now, {already} were already written; " in line
    assert chunks_and_tiles(line)[0] == total
    found = re.search(r"; ([\d.]+) s, ([\d.]+) Mpx/s, (\d+) MiB/s read", line)
    assert found, line
    seconds, mpx = float(found[1]), float(found[2])
    computed = removed * CHUNKS[0] * CHUNKS[1]  # equal chunks: pixels computed now
    low, high = _rate_bounds(computed / 1e6, seconds)
    assert low - 0.05 <= mpx <= high + 0.05, line
    whole = np.prod(SHAPE) / 1e6 / seconds  # what the line said before: the whole image
    assert abs(mpx - whole) > 0.05 or whole < 0.1, line
    assert zarr.open_array(str(folder / "c.zarr")).attrs["distconv"]["complete"] is True


def test_resume_of_multiply_names_the_chunks_computed_now(folder, capsys):
    job = ("multiply", "a.zarr", "0.5", "-o", "half.zarr", *THREADS)
    run(capsys, *job)
    already = make_partial(folder / "half.zarr", ["0/0", "7/7", "3/4"])
    line = summary(run(capsys, *job, "--resume"))
    total = stored_chunks(folder / "half.zarr")
    assert f"3 of {total} chunks computed now, {already} were already written" in line
    expected = np.asarray(zarr.open_array(str(folder / "a.zarr"))[:]) * np.float32(0.5)
    np.testing.assert_array_equal(zarr.open_array(str(folder / "half.zarr"))[:], expected)


def test_engines_leaves_the_environment_and_stderr_quiet(capfd, monkeypatch):
    """``distconv engines`` imports each engine once with TensorFlow's INFO log off for the
    import and the device probe, and leaves this process's environment as it found it."""
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    import os

    # TensorFlow's own import sets variables of its own (TF2_BEHAVIOR...): imported first,
    # as tests/test_process_state.py does, so only what the command does is compared.
    pytest.importorskip("tensorflow")
    capfd.readouterr()  # what that import logged is not the command's
    before = dict(os.environ)
    try:
        main(["engines"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    assert dict(os.environ) == before
    out, err = capfd.readouterr()
    assert "scipy" in out
    assert not [line for line in err.splitlines() if re.match(r"I\d{4} ", line)], err
