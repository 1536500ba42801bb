"""``distconv apply`` / ``dc.apply``: a model over an image tile by tile equals the model on the
whole image (Keras files, SavedModels, Python functions; 2-D, 3-D, channels, OME-Zarr), the
model loads once per worker, bad models are one line and write nothing, resume is bit-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import textwrap
import time

import numpy as np
import pytest
import zarr

pytest.importorskip("tensorflow", reason="distconv apply runs Keras models on TensorFlow")

from conftest import one_stderr_line, start_distconv

import distconv as dc
from tests._images import distconv, read_with_ome_zarr, tree_digest, write_ome_image
from tests._models import unet, whole_image

RTOL = 1e-5  # float32 rounding, relative to the output's largest value


def assert_equal_to_whole(out, reference, rtol=RTOL):
    scale = float(np.abs(reference).max())
    assert out.shape == reference.shape
    np.testing.assert_allclose(out, reference, rtol=0, atol=rtol * scale)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """``.keras`` files and a SavedModel folder of small U-Nets, with the Keras objects."""
    folder = tmp_path_factory.mktemp("models")
    built = {
        "unet2": unet(2, 1, 2),
        "unet3": unet(3, 1, 1, seed=1),
        "rgb": unet(2, 3, 1, seed=2),
        "two_in": unet(2, 2, 3, seed=3),
    }
    paths = {}
    for name, model in built.items():
        paths[name] = folder / f"{name}.keras"
        model.save(paths[name])
    paths["saved"] = folder / "unet2_saved"
    built["unet2"].export(str(paths["saved"]), verbose=False)
    return built, paths


def random_store(path, shape, chunks, seed=0):
    data = np.random.default_rng(seed).random(shape).astype(np.float32)
    zarr.create_array(str(path), data=data, chunks=chunks)
    return data


@pytest.mark.parametrize(
    "shape, tile",
    [((256, 256), 64), ((200, 184), 64), ((200, 184), None)],
    ids=["multiple-of-chunks-tile64", "not-multiple-tile64", "not-multiple-default-tile"],
)
def test_keras_unet_tiled_equals_whole_image(models, tmp_path, shape, tile):
    built, paths = models
    image = random_store(tmp_path / "in.zarr", shape, (64, 64))
    out = dc.apply(paths["unet2"], tmp_path / "in.zarr", tile=tile).compute()
    reference = whole_image(built["unet2"], image[..., None])
    assert_equal_to_whole(out, reference)
    plan = dc.plan_apply(paths["unet2"], tmp_path / "in.zarr", tile=tile)
    assert plan.facts.stride == 4 and plan.facts.out_channels == 2
    assert all(h % 4 == 0 and h >= r for h, r in zip(plan.halo, plan.facts.receptive_field))
    if tile == 64:
        assert plan.batch > 1  # small tiles are batched into one call


def test_a_halo_too_small_is_measurably_different(models, tmp_path):
    built, paths = models
    image = random_store(tmp_path / "in.zarr", (256, 256), (64, 64))
    reference = whole_image(built["unet2"], image[..., None])
    out = dc.apply(paths["unet2"], tmp_path / "in.zarr", halo=0, tile=64).compute()
    assert np.abs(out - reference).max() > 1e-3 * np.abs(reference).max()


def test_a_savedmodel_folder_and_a_keras_object(models, tmp_path):
    built, paths = models
    image = random_store(tmp_path / "in.zarr", (192, 160), (64, 64))
    reference = whole_image(built["unet2"], image[..., None])
    assert_equal_to_whole(
        dc.apply(paths["saved"], tmp_path / "in.zarr", tile=64).compute(), reference
    )
    assert_equal_to_whole(dc.apply(built["unet2"], image, tile=64).compute(), reference)


def test_3d_unet_on_a_volume(models, tmp_path):
    built, paths = models
    volume = random_store(tmp_path / "vol.zarr", (40, 44, 36), (16, 16, 16))
    out = dc.apply(paths["unet3"], tmp_path / "vol.zarr", tile=16).compute()
    assert_equal_to_whole(out, whole_image(built["unet3"], volume[..., None]))


def test_channels_last_input(models, tmp_path):
    built, paths = models
    image = random_store(tmp_path / "rgb.zarr", (128, 96, 3), (64, 64, 3))
    out = dc.apply(paths["rgb"], tmp_path / "rgb.zarr", tile=32).compute()
    assert_equal_to_whole(out, whole_image(built["rgb"], image))


def test_ome_zarr_channels_first_with_axes_scale_and_provenance(models, tmp_path):
    """A czyx image, a 2-D model of 2 channels over y, x (z batched): the output is an OME-Zarr
    image with c first (3 channels), the input's axes and scale; provenance names the model."""
    built, paths = models
    cells = np.random.default_rng(5).random((2, 3, 88, 72)).astype(np.float32)
    write_ome_image(tmp_path / "cells.ome.zarr", cells, "0.5", chunks=(1, 1, 32, 32), levels=1)
    result = distconv(
        "apply", paths["two_in"], "cells.ome.zarr", "-o", "pred.ome.zarr", "--axes", "y,x",
        "--tile", "32", "--cluster", "threads", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "wrote pred.ome.zarr" in result.stdout and "model" in result.stdout
    levels, transforms, axes = read_with_ome_zarr(tmp_path / "pred.ome.zarr")
    assert [a["name"] for a in axes] == ["c", "z", "y", "x"]
    assert transforms == read_with_ome_zarr(tmp_path / "cells.ome.zarr")[1][:1]
    out = np.asarray(levels[0])
    expected = np.stack(
        [whole_image(built["two_in"], np.moveaxis(cells[:, z], 0, -1)) for z in range(3)]
    )  # (z, y, x, c)
    assert_equal_to_whole(out, np.moveaxis(expected, -1, 0))
    record = dc.info(tmp_path / "pred.ome.zarr")["provenance"]["steps"][-1]
    digest = hashlib.sha256(paths["two_in"].read_bytes()).hexdigest()
    assert record["operation"] == "apply" and record["model"]["sha256"] == digest
    assert record["model"]["signature"]["input"] == [None, None, None, 2]
    assert record["model"]["signature"]["output"] == [None, None, None, 3]
    assert record["parameters"]["halo"][0] >= record["parameters"]["receptive_field"][0]


TILE_FUNCTIONS = textwrap.dedent(
    """
    import os
    import threading

    import numpy as np
    from scipy import ndimage

    def smooth(tile):
        return ndimage.uniform_filter(tile.astype("float64"), 7, mode="nearest").astype("float32")

    def broken(tile):
        return np.where(tile > 2.0, tile, np.nan)  # NaN everywhere: the job fails, naming the block

    _calls = [0]
    _lock = threading.Lock()

    def gated(tile):
        # With DISTCONV_TEST_GATE=N, the (N+1)-th tile of the job's size never returns: the
        # job stops part-way until it is killed (the probe's sizes are other sizes).
        if os.environ.get("DISTCONV_TEST_GATE") and 20 < tile.shape[0] < 60:
            with _lock:
                _calls[0] += 1
                blocked = _calls[0] > int(os.environ["DISTCONV_TEST_GATE"])
            if blocked:
                threading.Event().wait()
        return smooth(tile)
    """
)


@pytest.fixture
def functions(tmp_path, monkeypatch):
    (tmp_path / "tilefns.py").write_text(TILE_FUNCTIONS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    sys.modules.pop("tilefns", None)
    return tmp_path


def test_module_function_on_numpy_measures_its_halo(functions, tmp_path):
    from scipy import ndimage

    image = random_store(tmp_path / "in.zarr", (150, 130), (32, 32))
    plan = dc.plan_apply("tilefns:smooth", tmp_path / "in.zarr")
    assert plan.facts.receptive_field == (3, 3) and plan.facts.stride == 1
    out = dc.apply("tilefns:smooth", tmp_path / "in.zarr", tile=32).compute()
    reference = ndimage.uniform_filter(image.astype("float64"), 7, mode="nearest")
    assert out.shape == image.shape + (1,)
    np.testing.assert_allclose(out[..., 0], reference, rtol=1e-6, atol=1e-6)


def test_non_finite_output_fails_the_job_naming_the_block(functions, tmp_path):
    random_store(tmp_path / "in.zarr", (64, 64), (32, 32))
    result = distconv(
        "apply", "tilefns:broken", "in.zarr", "-o", "out.zarr", "--halo", "0",
        "--cluster", "threads", cwd=tmp_path, env=dict(os.environ),
    )  # fmt: skip
    line = one_stderr_line(result.stderr, result.returncode, 1)
    assert "non-finite" in line and "block (" in line
    assert dc.info(tmp_path / "out.zarr")["complete"] is False


def test_resume_after_sigkill_is_bit_identical(functions, tmp_path):
    random_store(tmp_path / "in.zarr", (256, 256), (32, 32))
    args = ["apply", "tilefns:gated", "in.zarr", "--tile", "32", "--batch", "1"]
    args += ["--cluster", "threads", "-q"]
    reference = distconv(*args, "-o", "ref.zarr", cwd=tmp_path, env=dict(os.environ))
    assert reference.returncode == 0, reference.stderr
    process = start_distconv(
        [*args, "-o", "out.zarr"], tmp_path, env={"DISTCONV_TEST_GATE": "6"}
    )  # the gate holds the job part-way: the kill lands mid-job, whatever the machine's speed
    deadline = time.monotonic() + 120
    while len(list((tmp_path / "out.zarr" / "c").rglob("*"))) < 4:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no chunks written"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert dc.info(tmp_path / "out.zarr")["complete"] is False
    finished = distconv(*args, "-o", "out.zarr", "--resume", cwd=tmp_path, env=dict(os.environ))
    assert finished.returncode == 0, finished.stderr
    assert tree_digest(tmp_path / "out.zarr", chunks_only=True) == tree_digest(
        tmp_path / "ref.zarr", chunks_only=True
    )


def test_a_tcp_cluster_loads_the_model_once_per_worker(models, tmp_path):
    from distributed import Client, LocalCluster

    built, paths = models
    image = random_store(tmp_path / "in.zarr", (256, 192), (64, 64))
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True) as cluster:
        result = distconv(
            "apply", paths["unet2"], "in.zarr", "-o", "out.zarr", "--tile", "64",
            "--batch", "1", "--cluster", cluster.scheduler_address, cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        with Client(cluster) as client:
            loaded = client.run(
                lambda: len(__import__("distconv.kernels.models").kernels.models._LOADED)
            )
    assert list(loaded.values()) == [1]  # 12 tiles and the probe: one load
    out = zarr.open_array(str(tmp_path / "out.zarr"))[:]
    assert_equal_to_whole(out, whole_image(built["unet2"], image[..., None]))


def test_an_object_store_input(models, s3, tmp_path):
    from tests._s3 import s3_environment

    built, paths = models
    image = random_store(tmp_path / "in.zarr", (128, 128), (64, 64))
    bucket = s3.new_bucket()
    s3.filesystem().put(str(tmp_path / "in.zarr"), f"{bucket}/in.zarr", recursive=True)
    result = distconv(
        "apply", paths["unet2"], f"s3://{bucket}/in.zarr", "-o", "out.zarr", "--cluster",
        "threads", "--storage-option", f"endpoint_url={s3.endpoint}", cwd=tmp_path,
        env=s3_environment(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = zarr.open_array(str(tmp_path / "out.zarr"))[:]
    assert_equal_to_whole(out, whole_image(built["unet2"], image[..., None]))


def _fixed_size_model(path):
    import keras

    image = keras.Input((32, 32, 1))
    keras.Model(image, keras.layers.Conv2D(1, 3, padding="same")(image)).save(path)


@pytest.mark.parametrize(
    "case, words",
    [
        ("missing", "not found"),
        ("pickle", "is a pickle; distconv never unpickles"),
        ("corrupt", "is not a readable Keras file"),
        ("channels", "takes 3 input channel(s); the input has 1"),
        ("fixed", "is not fully convolutional: it takes only 32×32 images"),
        ("h5", "neither a .keras file nor a SavedModel folder"),
    ],
)
def test_bad_models_are_one_line_exit_2_and_write_nothing(models, tmp_path, case, words):
    import pickle

    _, paths = models
    random_store(tmp_path / "in.zarr", (64, 64), (32, 32))
    model = {
        "missing": tmp_path / "nothing.keras",
        "pickle": tmp_path / "model.pkl",
        "corrupt": tmp_path / "broken.keras",
        "channels": paths["rgb"],
        "fixed": tmp_path / "fixed.keras",
        "h5": tmp_path / "model.h5",
    }[case]
    if case == "pickle":
        model.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    elif case == "corrupt":
        model.write_bytes(paths["unet2"].read_bytes()[:500])
    elif case == "fixed":
        _fixed_size_model(model)
    elif case == "h5":
        model.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    before = tree_digest(tmp_path / "in.zarr")
    result = distconv(
        "apply", model, "in.zarr", "-o", "out.zarr", "--cluster", "threads", cwd=tmp_path
    )
    line = one_stderr_line(result.stderr, result.returncode, 2)
    assert words in line, line
    assert not (tmp_path / "out.zarr").exists()
    assert tree_digest(tmp_path / "in.zarr") == before


def test_dry_run_prints_the_plan_and_writes_nothing(models, tmp_path):
    _, paths = models
    random_store(tmp_path / "in.zarr", (256, 256), (64, 64))
    result = distconv("apply", paths["unet2"], "in.zarr", "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    plan = dc.plan_apply(paths["unet2"], tmp_path / "in.zarr")
    for words in (
        "receptive field: ±",
        "total stride 4",
        "halo:",
        "tile:",
        "batch:",
        "memory per task",
    ):
        assert words in result.stdout
    assert f"±{plan.facts.receptive_field[0]}×" in result.stdout
    assert not (tmp_path / "in.predicted.zarr").exists()
    json.dumps(plan.record)  # provenance-ready


def test_xarray_in_and_out(models):
    xr = pytest.importorskip("xarray")
    built, paths = models
    rng = np.random.default_rng(9)
    image = rng.random((96, 80)).astype(np.float32)
    labelled = xr.DataArray(
        image, dims=("y", "x"), coords={"y": np.linspace(0, 9.5, 96)}, name="cells"
    ).chunk(32)
    out = dc.apply(paths["unet2"], labelled, tile=32)
    assert isinstance(out, xr.DataArray) and out.dims == ("y", "x", "channel")
    np.testing.assert_array_equal(out.coords["y"], labelled.coords["y"])
    assert out.name == "cells" and out.attrs["distconv"]["applied"][-1]["operation"] == "apply"
    assert_equal_to_whole(out.values, whole_image(built["unet2"], image[..., None]))
    # channels first, by name: the model's channels replace them, in place
    stack = rng.random((2, 64, 48)).astype(np.float32)
    first = xr.DataArray(stack, dims=("c", "y", "x"))
    predicted = dc.apply(paths["two_in"], first, tile=32)
    assert predicted.dims == ("c", "y", "x") and predicted.shape == (3, 64, 48)
    expected = whole_image(built["two_in"], np.moveaxis(stack, 0, -1))
    assert_equal_to_whole(predicted.values, np.moveaxis(expected, -1, 0))
