"""Locations without a server: where outputs go by default, how stores relate, option parsing."""

from __future__ import annotations

import pytest

from distconv.cli._common import default_output, resume_command
from distconv.errors import DistconvError
from distconv.stores import Location, parse_storage_options, redact


@pytest.mark.parametrize(
    "given, expected",
    [
        ("big.zarr", "big.convolved.zarr"),
        ("data/big.zarr/raw/0", "data/big.raw-0.convolved.zarr"),
        ("cells.ome.zarr", "cells.convolved.ome.zarr"),
        ("cells.ome.tif", "cells.convolved.ome.zarr"),
        ("stack.tif", "stack.convolved.zarr"),
        ("s3://lab/images/cells.ome.zarr", "s3://lab/images/cells.convolved.ome.zarr"),
        ("gs://lab/big.zarr/raw/0", "gs://lab/big.raw-0.convolved.zarr"),
    ],
)
def test_default_outputs_sit_beside_the_input(given, expected):
    assert default_output(given, "convolved") == expected


def test_relations_between_locations(tmp_path):
    a = Location.parse("s3://Lab/x.zarr/")
    assert a.relation(Location.parse("s3://Lab/x.zarr")) == "same"
    assert Location.parse("s3a://Lab/x.zarr/0").relation(a) == "inside"
    assert Location.parse("s3://Lab").relation(a) == "contains"
    assert Location.parse("s3://Lab/x.zarr2").relation(a) is None
    assert Location.parse("gs://Lab/x.zarr").relation(a) is None
    assert Location.parse(tmp_path / "x.zarr").relation(a) is None
    local = Location.parse(tmp_path / "in.zarr")
    assert Location.parse(tmp_path / "in.zarr" / "." / "0").relation(local) == "inside"
    assert local.child("0").parent() == local
    assert Location.parse("s3://bucket").parent() is None


def test_storage_options_and_secrets_in_command_lines():
    options = parse_storage_options(["endpoint_url=http://127.0.0.1:9000", "secret=Zz9-secret"])
    assert options == {"endpoint_url": "http://127.0.0.1:9000", "secret": "Zz9-secret"}
    command = resume_command(["convolve", "s3://b/in.zarr", "k.npy", "--storage-option",
                              "secret=Zz9-secret", "--overwrite"])  # fmt: skip
    assert redact(command).endswith("--storage-option secret=*** --resume")
    with pytest.raises(DistconvError, match="KEY=VALUE"):
        parse_storage_options(["no-equals-sign"])
    with pytest.raises(DistconvError, match="unknown storage protocol"):
        Location.parse("nosuchproto://bucket/x.zarr").zarr_store()


_ABANDONED_READS = """
import asyncio, gc
from distconv.stores import quiet_abandoned_store_reads

quiet_abandoned_store_reads()
namespace = {}
for folder in ("zarr", "elsewhere"):  # a coroutine of zarr's, and anyone else's
    exec(compile("async def read():\\n    raise PermissionError('Forbidden')",
                 f"/site-packages/{folder}/store.py", "exec"), namespace)

    async def abandon(read=namespace["read"]):
        asyncio.ensure_future(read())  # its error is never retrieved
        await asyncio.sleep(0.01)

    asyncio.run(abandon())
    gc.collect()
"""


def test_errors_of_abandoned_zarr_reads_are_not_reported_after_the_one_line_error():
    """zarr.open on a denied store fails three metadata reads at once and raises one; asyncio
    would print the other two with their tracebacks, under the CLI's one-line error."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", _ABANDONED_READS], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Task exception was never retrieved") == 1
    assert "/elsewhere/store.py" in result.stderr and "/zarr/store.py" not in result.stderr
