"""Hostile and mistaken input: one line on stderr, exit 2, nothing written, inputs untouched.

Every case of the table runs the command's entry point (``distconv.cli.main``, what the
``distconv`` script calls) in this process, to stay fast; a few run the real script in a
subprocess as well. After each case the whole folder (inputs and any output) hashes as before.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import zarr
from conftest import distconv, one_stderr_line, tree_digest, write_zarr

import distconv as dc
from distconv.cli import main


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Inputs for every case, made once (the cases must leave them as they are)."""
    folder = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    data = rng.random((40, 30), dtype=np.float32)
    write_zarr(folder / "big.zarr", data, (16, 16))
    np.save(folder / "kernel.npy", rng.standard_normal((5, 3)))
    np.save(folder / "nan.npy", np.array([[1.0, np.nan], [0.0, 1.0]]))
    np.save(folder / "inf.npy", np.array([[1.0, np.inf], [0.0, 1.0]]))
    np.save(folder / "object.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with open(folder / "pickled.npy", "wb") as handle:
        pickle.dump({"weights": [1, 2, 3]}, handle)
    np.save(folder / "k3d.npy", rng.random((3, 3, 3)))
    np.save(folder / "huge.npy", rng.random((41, 3)))
    np.save(folder / "empty.npy", np.zeros((0, 3)))
    np.save(folder / "strings.npy", np.array([["a", "b"]]))
    np.save(folder / "image_object.npy", np.array([[None, 1]], dtype=object), allow_pickle=True)
    zarr.create_array(str(folder / "empty.zarr"), shape=(0, 5), chunks=(1, 5), dtype="f4")
    zarr.create_array(str(folder / "complex.zarr"), shape=(4, 4), chunks=(4, 4), dtype="c8")
    group = zarr.open_group(str(folder / "group.zarr"), mode="w")
    group.create_array("raw", shape=(4, 4), dtype="f4")[:] = 1.0
    write_zarr(folder / "corrupt.zarr", data, (16, 16))
    (folder / "corrupt.zarr" / "c" / "1" / "1").write_bytes(b"not a zstd frame at all")
    os.makedirs(folder / "plain_dir")
    (folder / "plain_dir" / "notes.txt").write_text("not zarr")
    os.makedirs(folder / "data")
    zarr.create_array(str(folder / "data" / "in.zarr"), shape=(8, 8), chunks=(4, 4), dtype="f4")[
        :
    ] = 1.0
    # An interrupted job that a different job must not "resume".
    dc.save(
        dc.convolve(dc.open(folder / "big.zarr"), np.ones((3, 3))),
        folder / "part.zarr",
        progress=False,
    )
    produced = zarr.open_array(str(folder / "part.zarr"), mode="r+")
    produced.attrs.update({"distconv": {**produced.attrs["distconv"], "complete": False}})
    zarr.create_array(str(folder / "done.zarr"), shape=(2,), dtype="f4")[:] = 1.0
    return folder


# (name, arguments after the command, words expected in the one line)
CASES = [
    ("missing input", ["nope.zarr", "kernel.npy"], "no such file"),
    ("missing weights", ["big.zarr", "nope.npy"], "no such weights file"),
    ("directory that is not zarr", ["plain_dir", "kernel.npy"], "not a readable zarr"),
    ("group, not an array", ["group.zarr", "kernel.npy"], "group.zarr/raw"),
    ("corrupt chunk in the input", ["corrupt.zarr", "kernel.npy"], "[16:32, 16:30] cannot be read"),
    ("pickled .npy weights", ["big.zarr", "pickled.npy"], "pickled"),
    ("object-dtype .npy weights", ["big.zarr", "object.npy"], "pickled or object"),
    ("object-dtype .npy input", ["image_object.npy", "kernel.npy"], "pickled or object"),
    ("nan weights", ["big.zarr", "nan.npy"], "nan or infinity"),
    ("inf weights", ["big.zarr", "inf.npy"], "nan or infinity"),
    ("weights larger than the image", ["big.zarr", "huge.npy"], "larger than the input"),
    ("empty weights", ["big.zarr", "empty.npy"], "empty"),
    ("string weights", ["big.zarr", "strings.npy"], "real numbers"),
    ("zero-size input", ["empty.zarr", "kernel.npy"], "empty"),
    ("ndim mismatch", ["big.zarr", "k3d.npy"], "pass axes"),
    ("axes count mismatch", ["big.zarr", "kernel.npy", "--axes", "0"], "name 1 axis"),
    ("axis out of range", ["big.zarr", "kernel.npy", "--axes", "0,5"], "out of range"),
    ("complex input", ["complex.zarr", "kernel.npy"], "complex"),
    ("string output dtype", ["big.zarr", "kernel.npy", "--dtype", "U3"], "not supported"),
    ("complex output dtype", ["big.zarr", "kernel.npy", "--dtype", "complex64"], "not supported"),
    ("unknown output dtype", ["big.zarr", "kernel.npy", "--dtype", "float7"], "dtype"),
    ("origin out of range", ["big.zarr", "kernel.npy", "--origin", "3"], "invalid origin"),
    ("origin not integers", ["big.zarr", "kernel.npy", "--origin", "1.5"], "integers"),
    ("origin count", ["big.zarr", "kernel.npy", "--origin", "0,0,0"], "3 value"),
    ("negative sigma", ["big.zarr", "gaussian:sigma=-1"], "positive"),
    ("unknown named kernel", ["big.zarr", "blur:size=3"], "named kernel"),
    ("code in a named kernel", ["big.zarr", "gaussian:sigma=__import__('os')"], "not a valid"),
    ("box of size 0", ["big.zarr", "box:size=0"], "at least 1"),
    ("output is the input", ["big.zarr", "kernel.npy", "-o", "big.zarr"], "is the input"),
    ("output inside the input", ["big.zarr", "kernel.npy", "-o", "big.zarr/sub"], "inside"),
    ("output contains the input", ["data/in.zarr", "kernel.npy", "-o", "data"], "contains"),
    ("output exists", ["big.zarr", "kernel.npy", "-o", "done.zarr"], "already exists"),
    (
        "overwrite a non-zarr folder",
        ["big.zarr", "kernel.npy", "-o", "plain_dir", "--overwrite"],
        "not a zarr store",
    ),
    (
        "overwrite and resume",
        ["big.zarr", "kernel.npy", "-o", "part.zarr", "--overwrite", "--resume"],
        "choose one",
    ),
    (
        "resume a different job",
        ["big.zarr", "kernel.npy", "-o", "part.zarr", "--resume"],
        "weights differ",
    ),
    ("unknown mode", ["big.zarr", "kernel.npy", "--mode", "bogus"], "reflect"),
    ("unknown method", ["big.zarr", "kernel.npy", "--method", "bogus"], "fft"),
    ("unknown engine", ["big.zarr", "kernel.npy", "--engine", "bogus"], "scipy"),
    ("unknown cluster", ["big.zarr", "kernel.npy", "--cluster", "moon"], "local, threads"),
    ("separable weights not rank 1", ["big.zarr", "kernel.npy", "--method", "separable"], "rank-1"),
    ("zero workers", ["big.zarr", "kernel.npy", "--workers", "0"], "--workers"),
]


def _args(name: str, args: list[str]) -> list[str]:
    extra = [] if "-o" in args else ["-o", f"out-{name.replace(' ', '-')}.zarr"]
    if "--cluster" not in args:
        extra += ["--cluster", "threads"]
    return [*args, *extra]


@pytest.mark.parametrize("name, args, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_one_line_exit_2_nothing_written(folder, monkeypatch, capsys, name, args, words):
    monkeypatch.chdir(folder)
    before = tree_digest(folder)
    with pytest.raises(SystemExit) as exited:
        main(["convolve", *_args(name, args)])
    captured = capsys.readouterr()
    line = one_stderr_line(captured.err, exited.value.code, 2)
    assert line.startswith("distconv: error: "), [line]
    assert words.lower() in line.lower(), line
    assert captured.out == ""
    assert tree_digest(folder) == before  # no output, no default output, inputs unchanged


def test_the_table_has_at_least_20_distinct_cases():
    assert len({name for name, _, _ in CASES}) == len(CASES) >= 20


@pytest.mark.parametrize(
    "name",
    [
        "corrupt chunk in the input",
        "pickled .npy weights",
        "output inside the input",
        "unknown engine",
    ],
)
def test_bad_input_through_the_real_command(folder, name):
    """The installed script in its own process: same line, same exit code, nothing written."""
    args = next(a for n, a, _ in CASES if n == name)
    words = next(w for n, _, w in CASES if n == name)
    before = tree_digest(folder)
    result = distconv("correlate", *_args(name, args), cwd=folder)
    line = one_stderr_line(result.stderr, result.returncode, 2)
    assert words.lower() in line.lower(), result.stderr
    assert tree_digest(folder) == before


class _Payload:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_weights_and_inputs_never_unpickle(tmp_path):
    marker = tmp_path / "unpickled"
    with open(tmp_path / "evil.npy", "wb") as handle:
        pickle.dump(_Payload(str(marker)), handle)
    np.save(
        tmp_path / "evil_object.npy",
        np.array([_Payload(str(marker))], dtype=object),
        allow_pickle=True,
    )
    np.savez(tmp_path / "evil.npz", w=np.array([_Payload(str(marker))], dtype=object))
    for name in ("evil.npy", "evil_object.npy", "evil.npz"):
        with pytest.raises(dc.DistconvError, match="pickle|object"):
            dc.load_weights(str(tmp_path / name))
    for name in ("evil.npy", "evil_object.npy"):
        with pytest.raises(dc.DistconvError, match="pickle|object"):
            dc.open(tmp_path / name)
    assert not marker.exists()


@pytest.mark.parametrize(
    "spec",
    [
        "gaussian:sigma=__import__('os').getpid()",
        "box:size=1+1",
        "sobel:axis=exec('1')",
        "laplace;rm",
        "gaussian:sigma=2,truncate=eval",
    ],
)
def test_named_kernels_are_parsed_never_evaluated(spec):
    with pytest.raises(dc.DistconvError):
        dc.load_weights(spec, ndim=2)


@pytest.mark.parametrize("dtype", ["complex64", np.complex128, "U3", object])
def test_the_api_refuses_the_output_dtypes_the_command_refuses(dtype):
    """One rule (plan.check_output_dtype) for ``--dtype`` and ``output=``: same message."""
    from distconv.plan import check_output_dtype

    x, w = np.ones((8, 6), dtype=np.float32), np.ones((3, 3))
    for function in (dc.convolve, dc.correlate):
        with pytest.raises(dc.DistconvError, match="is not supported; use a bool, integer or"):
            function(x, w, dtype)
    with pytest.raises(dc.DistconvError, match="is not supported; use a bool, integer or"):
        check_output_dtype(dtype)
    assert check_output_dtype(None) is None and check_output_dtype("uint16") == np.uint16
    assert check_output_dtype("bool") == np.bool_  # bool output: |value| >= 1, as scipy's


def test_weights_larger_than_the_input_is_one_named_rule():
    """The command's refusal is plan.check_weights_fit; the API keeps scipy.ndimage's answer
    (tests/test_conformance.py::test_kernel_larger_than_image)."""
    from distconv.plan import check_weights_fit

    with pytest.raises(dc.DistconvError, match=r"larger than the input on axis 0 \(41 > 40\)"):
        check_weights_fit((41, 3), (40, 30))
    with pytest.raises(dc.DistconvError, match="on axis -1 "):
        check_weights_fit((31,), (40, 30), axes=(-1,))
    check_weights_fit((5, 3), (40, 30))
    check_weights_fit((35,), (40, 30), axes=(0,))
    check_weights_fit((41, 3), (40, 30), axes=(0,))  # count mismatch: the planner's to report
