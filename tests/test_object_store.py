"""Object stores for real: a moto S3 server on 127.0.0.1, s3fs as the client, the ``distconv``
command in its own process. The same job on a local path and on ``s3://`` writes identical
bytes; bad buckets, credentials and permissions are one line; secrets never show."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from scipy import ndimage

import distconv as dc
from distconv.stores import Location, parse_storage_options, public_options, redact
from tests._images import distconv, read_with_ome_zarr, validate_ngff, write_ome_image
from tests._s3 import (
    ACCESS_KEY,
    SECRET_KEY,
    local_bytes,
    object_bytes,
    s3_environment,
)


@pytest.fixture
def bucket(s3, tmp_path):
    """A new bucket holding ``in.zarr`` (random float32, 64² chunks) and ``cells.ome.zarr``
    (NGFF 0.5), both also kept on the local disk under ``tmp_path``."""
    name = s3.new_bucket()
    data = np.random.default_rng(31).random((200, 150)).astype(np.float32)
    zarr.create_array(str(tmp_path / "in.zarr"), data=data, chunks=(64, 64))
    cells = np.random.default_rng(32).random((2, 3, 90, 70)).astype(np.float32)
    write_ome_image(tmp_path / "cells.ome.zarr", cells, "0.5", chunks=(1, 3, 32, 32))
    fs = s3.filesystem()
    for store in ("in.zarr", "cells.ome.zarr"):
        fs.put(str(tmp_path / store), f"{name}/{store}", recursive=True)
    return name, data


def _api(s3) -> dict:
    """Storage options for this process (it has no credentials in its environment)."""
    return {"endpoint_url": s3.endpoint, "key": ACCESS_KEY, "secret": SECRET_KEY}


def _options(s3) -> list[str]:
    return ["--storage-option", f"endpoint_url={s3.endpoint}"]


def _run(s3, tmp_path, *args, credentials=True):
    env = s3_environment(tmp_path, credentials=credentials)
    return distconv(*args, "--cluster", "threads", "-q", env=env)


@pytest.mark.parametrize("store, extra", [("in.zarr", []), ("cells.ome.zarr", ["--pyramid", "3"])])
def test_the_same_job_on_disk_and_on_s3_writes_identical_bytes(s3, bucket, tmp_path, store, extra):
    name, _ = bucket
    local = _run(s3, tmp_path, "convolve", tmp_path / store, "box:size=3",
                 "-o", tmp_path / "out.zarr", *extra)  # fmt: skip
    assert local.returncode == 0, local.stderr
    remote = _run(s3, tmp_path, "convolve", f"s3://{name}/{store}", "box:size=3",
                  "-o", f"s3://{name}/out.zarr", *_options(s3), *extra)  # fmt: skip
    assert remote.returncode == 0, remote.stderr
    on_disk, on_s3 = (
        local_bytes(tmp_path / "out.zarr"),
        object_bytes(s3.filesystem(), f"{name}/out.zarr"),
    )
    assert len(on_disk) > 4 and on_disk == on_s3
    described = dc.info(f"s3://{name}/out.zarr", storage_options=_api(s3))
    assert described["complete"] is True
    assert described["provenance"]["inputs"][0].startswith(f"s3://{name}/{store}")
    if extra:
        group = zarr.open_group(Location.parse(f"s3://{name}/out.zarr").zarr_store(), mode="r")
        assert [group[str(k)].shape for k in range(3)] == [
            (2, 3, 90, 70),
            (2, 3, 45, 35),
            (2, 3, 23, 18),
        ]


def test_deconvolve_on_s3_with_a_pyramid_writes_what_it_writes_on_disk(s3, bucket, tmp_path):
    """``distconv deconvolve`` takes ``--storage-option`` and ``--pyramid`` like convolve: the
    same Richardson-Lucy job from and to S3 writes the bytes it writes on disk, and level 0
    equals scikit-image's."""
    restoration = pytest.importorskip("skimage.restoration")
    name, data = bucket
    job = ("gaussian:sigma=1.2", "--iterations", "6", "--no-clip", "--mode", "constant",
           "--halo", "exact", "--pyramid", "3")  # fmt: skip
    local = _run(s3, tmp_path, "deconvolve", tmp_path / "in.zarr", *job,
                 "-o", tmp_path / "dec.ome.zarr")  # fmt: skip
    assert local.returncode == 0, local.stderr
    remote = _run(s3, tmp_path, "deconvolve", f"s3://{name}/in.zarr", *job,
                  "-o", f"s3://{name}/dec.ome.zarr", *_options(s3))  # fmt: skip
    assert remote.returncode == 0, remote.stderr
    on_disk = local_bytes(tmp_path / "dec.ome.zarr")
    assert len(on_disk) > 4 and on_disk == object_bytes(s3.filesystem(), f"{name}/dec.ome.zarr")
    group = zarr.open_group(str(tmp_path / "dec.ome.zarr"), mode="r")
    assert [group[str(k)].shape for k in range(3)] == [(200, 150), (100, 75), (50, 38)]
    psf = dc.load_weights("gaussian:sigma=1.2", ndim=2)
    expected = restoration.richardson_lucy(data.astype(np.float64), psf, 6, clip=False)
    got = group["0"][:]
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_api_reads_and_writes_s3_and_resumes_a_partial_output(s3, bucket):
    name, data = bucket
    options = _api(s3)
    x = dc.open(f"s3://{name}/in.zarr", storage_options=options)
    assert x.chunks[0][0] == 64
    job = dc.correlate(x, np.ones((3, 5)) / 15, mode="wrap")
    url = f"s3://{name}/api.zarr"
    written = dc.save(job, url, storage_options=options, progress=False)
    expected = ndimage.correlate(data.astype(np.float64), np.ones((3, 5)) / 15, mode="wrap")
    np.testing.assert_allclose(written[:], expected, atol=1e-5)
    reference = object_bytes(s3.filesystem(), f"{name}/api.zarr")
    # Interrupted: 4 of 12 chunk objects gone and not complete (what a kill leaves on S3).
    fs = s3.filesystem()
    record = dict(written.attrs["distconv"], complete=False)
    written.attrs.update({"distconv": record})
    for key in sorted(reference)[::3]:
        fs.rm_file(f"{name}/api.zarr/{key}")
    described = dc.info(url, storage_options=options)
    assert (described["complete"], described["chunks_initialized"]) == (False, 8)
    with pytest.raises(dc.DistconvError, match="partial"):
        dc.open(url, storage_options=options)
    resumed = dc.save(job, url, resume=True, storage_options=options, progress=False)
    assert resumed.attrs["distconv"]["resumed"][-1]["chunks_already_written"] == 8
    assert object_bytes(s3.filesystem(), f"{name}/api.zarr") == reference
    assert dc.info(url)["complete"] is True  # the options given for the bucket are reused
    assert SECRET_KEY not in json.dumps(dict(resumed.attrs))


def test_an_ome_zarr_image_on_s3_keeps_its_metadata(s3, bucket, tmp_path):
    name, _ = bucket
    result = _run(s3, tmp_path, "convolve", f"s3://{name}/cells.ome.zarr", "box:size=3",
                  "--level", "1", "--axes", "y,x", *_options(s3))  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = f"s3://{name}/cells.convolved.ome.zarr"  # the default output, beside the input
    s3.filesystem().get(
        f"{name}/cells.convolved.ome.zarr", str(tmp_path / "back.ome.zarr"), recursive=True
    )
    assert [a.unit for a in validate_ngff(tmp_path / "back.ome.zarr", "0.5").axes][1:] == [
        "micrometer"
    ] * 3
    levels, transforms, _ = read_with_ome_zarr(tmp_path / "back.ome.zarr")
    assert transforms[0] == read_with_ome_zarr(tmp_path / "cells.ome.zarr")[1][1]
    level = zarr.open_group(str(tmp_path / "cells.ome.zarr"), mode="r")["s1"][:]
    weights = dc.load_weights("box:size=3", ndim=2)[None, None]
    np.testing.assert_allclose(
        levels[0], ndimage.convolve(level.astype(np.float64), weights), atol=1e-5
    )
    assert dc.info(out, storage_options=_api(s3))["image"]["axes"] == list("czyx")


def test_secrets_never_appear_in_provenance_output_or_errors(s3, bucket, tmp_path):
    name, _ = bucket
    secret_args = [
        "--storage-option",
        f"key={ACCESS_KEY}",
        "--storage-option",
        f"secret={SECRET_KEY}",
    ]
    args = ["convolve", f"s3://{name}/in.zarr", "box:size=3", "-o", f"s3://{name}/s.zarr",
            *_options(s3), *secret_args]  # fmt: skip
    env = s3_environment(tmp_path, credentials=False)
    first = distconv(*args, "--cluster", "threads", env=env)
    assert first.returncode == 0, first.stderr
    again = distconv(*args, "--cluster", "threads", env=env)  # exists: an error line
    assert again.returncode == 2 and "already exists" in again.stderr
    info = distconv("info", f"s3://{name}/s.zarr", *_options(s3), *secret_args, env=env)
    assert info.returncode == 0 and "***" in info.stdout  # the recorded command, blanked
    stored = b"".join(
        s3.filesystem().cat_file(p)
        for p in s3.filesystem().find(f"{name}/s.zarr")
        if p.endswith(".json")
    )
    with_env = distconv(*args[:-4], "--cluster", "threads", env=s3_environment(tmp_path))
    assert with_env.returncode == 2
    for text in (
        first.stdout,
        first.stderr,
        again.stderr,
        info.stdout,
        stored.decode(),
        with_env.stderr,
    ):
        assert SECRET_KEY not in text and ACCESS_KEY not in text


def test_redaction_rules():
    parse_storage_options(["secret=s3cr3t-value", "endpoint_url=http://h:9000", "anon=false"])
    assert redact("failed with s3cr3t-value inside") == "failed with *** inside"
    assert redact("s3://user:pa55word@host/b/x.zarr") == "s3://user:***@host/b/x.zarr"
    assert "sig=***" in redact("https://acct.blob.core.windows.net/c/x.zarr?sv=1&sig=abcd1234")
    options = {"key": "k-1234", "endpoint_url": "http://h", "client_kwargs": {"token": "t0k3n"}}
    assert public_options(options) == {
        "key": "***",
        "endpoint_url": "http://h",
        "client_kwargs": {"token": "***"},
    }
    assert parse_storage_options(["anon=true", "retries=3"]) == {"anon": True, "retries": 3}


@pytest.mark.parametrize(
    "case, words",
    [
        ("output is the input", "is the input"),
        ("output inside the input", "is inside the input"),
        ("output contains the input", "contains the input"),
        ("output exists", "already exists"),
        ("unknown input bucket", "no such bucket"),
        ("unknown output bucket", "no such bucket"),
        ("no input", "no such Zarr array or group"),
        ("level out of range", "--level 5 is out of range"),
        ("group without multiscales", "without OME-Zarr multiscales"),
        ("axis the image lacks", "no axis 't'"),
        ("no credentials to read", "no credentials to read"),
        ("no credentials to write", "no credentials to write"),
        ("unreachable endpoint", "cannot reach the store"),
    ],
)
def test_bad_object_store_inputs_are_one_line_and_write_nothing(s3, bucket, tmp_path, case, words):
    name, _ = bucket
    src, dst = f"s3://{name}/in.zarr", f"s3://{name}/new.zarr"
    s3.filesystem().put(str(tmp_path / "in.zarr"), f"{name}/taken.zarr", recursive=True)
    zarr.create_group(
        Location.parse(f"s3://{name}/plain-group.zarr", _api(s3)).zarr_store(read_only=False)
    )
    args = {
        "output is the input": [src, "-o", src],
        "output inside the input": [src, "-o", f"{src}/inner"],
        "output contains the input": [src, "-o", f"s3://{name}"],
        "output exists": [src, "-o", f"s3://{name}/taken.zarr"],
        "unknown input bucket": ["s3://no-such-bucket/in.zarr"],
        "unknown output bucket": [src, "-o", "s3://no-such-bucket/out.zarr"],
        "no input": [f"s3://{name}/missing.zarr"],
        "level out of range": [f"s3://{name}/cells.ome.zarr", "--level", "5"],
        "group without multiscales": [f"s3://{name}/plain-group.zarr"],
        "axis the image lacks": [f"s3://{name}/cells.ome.zarr", "--axes", "t,x"],
        "no credentials to read": [src],
        "no credentials to write": [str(tmp_path / "in.zarr"), "-o", dst],
        "unreachable endpoint": [src, "--storage-option", "endpoint_url=http://127.0.0.1:1"],
    }[case]
    before = object_bytes(s3.filesystem(), name)
    command = ["convolve", args[0], "box:size=3", *_options(s3), *args[1:]]  # later options win
    result = _run(s3, tmp_path, *command, credentials="credentials" not in case)
    assert result.returncode == 2, result.stderr
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert object_bytes(s3.filesystem(), name) == before


def test_access_denied_is_one_line_and_writes_nothing(s3, bucket, tmp_path):
    """moto checks every request against IAM once asked to: a read-only user may read the
    input but not write the output; a user with no S3 rights may not read."""
    name, _ = bucket
    # AWS authorises HeadObject as s3:GetObject and a listing as s3:ListBucket; moto 5.2.6
    # checks the operation's own name instead, so the reader is granted both spellings.
    reading = ["s3:GetObject", "s3:ListBucket"]
    reading += ["s3:HeadObject", "s3:HeadBucket", "s3:ListObjectsV2", "s3:ListObjects"]
    reader = s3.iam_user("reader", reading)
    nobody = s3.iam_user("nobody", ["iam:GetUser"])
    before = object_bytes(s3.filesystem(), name)
    env = s3_environment(tmp_path, credentials=False)
    results, denied = {}, {}
    s3.enforce_iam(True)
    try:
        for user, (key, secret) in (("reader", reader), ("nobody", nobody)):
            with s3.denials() as denied[user]:
                results[user] = distconv(
                    "convolve", f"s3://{name}/in.zarr", "box:size=3", "-o",
                    f"s3://{name}/o.zarr", *_options(s3), "--storage-option", f"key={key}",
                    "--storage-option", f"secret={secret}", "--cluster", "threads", env=env,
                )  # fmt: skip
    finally:
        s3.enforce_iam(False)
    assert results["reader"].returncode == 2
    assert "cannot create output: access denied to write" in results["reader"].stderr, denied

    assert not any("in.zarr" in line for line in denied["reader"]), denied
    assert any("PUT /" in line and "/o.zarr/" in line for line in denied["reader"]), denied
    assert results["nobody"].returncode == 2
    assert "access denied to read" in results["nobody"].stderr
    for result in results.values():
        assert len(result.stderr.strip().splitlines()) == 1
        assert reader[1] not in result.stderr and nobody[1] not in result.stderr
    assert object_bytes(s3.filesystem(), name) == before


def test_a_tiff_on_s3_is_read_lazily(s3, bucket, tmp_path):
    import tifffile

    name, _ = bucket
    stack = np.random.default_rng(33).integers(0, 999, (4, 130, 90), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack, tile=(32, 32))
    s3.filesystem().put_file(str(tmp_path / "stack.tif"), f"{name}/stack.tif")
    x = dc.open(f"s3://{name}/stack.tif", storage_options=_api(s3))
    assert x.shape == stack.shape
    got = dc.correlate(x, np.ones((3, 3)), axes=("y", "x"), mode="constant").compute()
    expected = ndimage.correlate(stack.astype(np.float64), np.ones((1, 3, 3)), mode="constant")
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_matmul_and_multiply_read_their_panels_from_s3(s3, bucket, tmp_path):
    name, data = bucket
    options = _api(s3)
    b = np.random.default_rng(34).random((150, 40)).astype(np.float32)
    zarr.create_array(str(tmp_path / "b.zarr"), data=b, chunks=(50, 40))
    s3.filesystem().put(str(tmp_path / "b.zarr"), f"{name}/b.zarr", recursive=True)
    a_s3 = dc.open(f"s3://{name}/in.zarr", storage_options=options)
    b_s3 = dc.open(f"s3://{name}/b.zarr", storage_options=options)
    product = dc.save(dc.matmul(a_s3, b_s3), f"s3://{name}/ab.zarr", progress=False)
    np.testing.assert_allclose(product[:], data.astype(np.float64) @ b, rtol=1e-5)
    assert product.attrs["distconv"]["inputs"] == [f"s3://{name}/in.zarr", f"s3://{name}/b.zarr"]
    result = _run(s3, tmp_path, "multiply", f"s3://{name}/cells.ome.zarr", "0.5",
                  "-o", f"s3://{name}/half.ome.zarr", "--pyramid", "2", *_options(s3))  # fmt: skip
    assert result.returncode == 0, result.stderr
    half = dc.open(f"s3://{name}/half.ome.zarr", storage_options=options)
    cells = zarr.open_group(str(tmp_path / "cells.ome.zarr"), mode="r")["s0"][:]
    np.testing.assert_array_equal(half.compute(), cells * np.float32(0.5))
    image = dc.info(f"s3://{name}/half.ome.zarr", storage_options=options)["image"]
    assert [level["shape"] for level in image["levels"]] == [[2, 3, 90, 70], [2, 3, 45, 35]]
