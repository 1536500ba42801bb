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
