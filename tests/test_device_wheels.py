"""benchmarks/device_wheels.py: which wheels may travel to a lent GPU machine, one version of
each, the size budget's message, and the closure check. No network, except the last test,
which resolves against the index and skips when it cannot be reached."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "device_wheels", ROOT / "benchmarks" / "device_wheels.py"
)
device_wheels = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(device_wheels)
MIB = device_wheels.MIB


@pytest.mark.parametrize(
    "filename",
    [
        "numpy-2.4.6-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
        "tornado-6.6.1-cp311-abi3-manylinux1_x86_64.manylinux_2_28_x86_64.manylinux_2_5_x86_64.whl",
        "zict-3.0.0-py2.py3-none-any.whl",
        "dask-2026.8.0-py3-none-any.whl",
        "google_crc32c-1.9.0-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
        "foo-1.0-1-cp312-cp312-manylinux_2_39_x86_64.whl",  # a build tag
    ],
)
def test_wheels_for_the_device(filename):
    assert device_wheels.wheel_ok(filename)


@pytest.mark.parametrize(
    "filename",
    [
        "numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.whl",  # another Python
        "numpy-2.4.6-cp312-cp312-manylinux_2_27_aarch64.whl",  # another processor
        "numpy-2.4.6-cp312-cp312-musllinux_1_2_x86_64.whl",  # another C library
        "numpy-2.4.6-cp312-cp312-macosx_14_0_x86_64.whl",
        "numpy-2.4.6-cp312-cp312-win_amd64.whl",
        "foo-1.0-cp312-cp312-manylinux_2_40_x86_64.whl",  # newer glibc than the image's
        "foo-1.0-cp313-abi3-manylinux_2_17_x86_64.whl",  # abi3 from a later Python
        "foo-1.0-py2-none-any.whl",
        "foo-1.0.tar.gz",
    ],
)
def test_wheels_not_for_the_device(filename):
    assert not device_wheels.wheel_ok(filename)


def test_one_version_per_package():
    kept, dropped = device_wheels.one_per_package(
        [
            "numpy-2.4.6-cp312-cp312-manylinux_2_27_x86_64.whl",
            "numpy-2.10.0-cp312-cp312-manylinux_2_27_x86_64.whl",
            "Typing_Extensions-4.16.0-py3-none-any.whl",
            "typing_extensions-4.9.0-py3-none-any.whl",
            "zarr-3.4.2-py3-none-any.whl",
        ]
    )
    assert kept == [
        "Typing_Extensions-4.16.0-py3-none-any.whl",
        "numpy-2.10.0-cp312-cp312-manylinux_2_27_x86_64.whl",
        "zarr-3.4.2-py3-none-any.whl",
    ]
    assert len(dropped) == 2


def test_budget_message():
    sizes = {"numpy": 16 * MIB, "ducc0": 15 * MIB, "bokeh": 7 * MIB, "dask": 2 * MIB}
    assert device_wheels.budget_message(sizes, repo_bytes=2 * MIB) is None
    message = device_wheels.budget_message(sizes, repo_bytes=2 * MIB, limit=30 * MIB)
    assert "\n" not in message
    assert message.startswith("over budget: wheels 40.0 MiB + repository 2.0 MiB > 30 MiB")
    # numpy must travel (the image's 2.5 breaks numba-cuda): the largest of the others first
    assert "drop (--drop NAME) ducc0 (15.0 MiB)" in message
    assert "numpy (" not in message and "dask" not in message


def test_image_and_never_carried():
    assert device_wheels.image_has("scipy", "h200")
    assert device_wheels.image_has("Typing_Extensions", "h100")
    assert not device_wheels.image_has("numpy", "h200")  # the image's numpy 2.5 is replaced
    assert not device_wheels.image_has("dask", "h100")
    assert device_wheels.never_carry("tensorflow-cpu")
    assert not device_wheels.never_carry("tornado")


def test_top_requirements():
    top = device_wheels.top_requirements("h200", extra=["dask-cuda"], drop=["bokeh"])
    names = [device_wheels.requirement_name(requirement) for requirement in top]
    assert len(names) == len(set(names))
    assert {"zarr", "dask", "distributed", "numcodecs", "dask-cuda"} <= set(names)
    assert "bokeh" not in names
    numpy = next(requirement for requirement in top if requirement.startswith("numpy"))
    assert numpy.endswith(",<2.5")


def test_missing_requirements():
    requires = {
        "dask": ["toolz>=0.12", 'numpy>=1.24; extra == "array"', 'pandas; extra == "dataframe"'],
        "zarr": ["numcodecs[crc32c]>=0.14", 'importlib_metadata; python_version < "3.12"'],
        "numcodecs": ['crc32c>=2.7; extra == "crc32c"'],
    }
    image = frozenset({"toolz"})
    # numpy through dask[array], crc32c through numcodecs[crc32c]; not pandas, not the backport
    assert device_wheels.missing_requirements(requires, ["dask[array]", "zarr"], image) == [
        "crc32c",
        "numpy",
    ]
    requires["numpy"] = []
    requires["crc32c"] = []
    assert device_wheels.missing_requirements(requires, ["dask[array]", "zarr"], image) == []


def test_install_and_run_lines():
    install = device_wheels.install_line(".whl")
    assert install.startswith("python3 -m pip install -q --no-index --no-deps")
    assert install.endswith("--target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD")
    command = device_wheels.run_command(".whl")
    assert (
        command.startswith(". .whl/INSTALL.sh") and "gpu_check.py --out $OUT/gpu-check" in command
    )
    assert len(command) <= 2000


def _index_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _index_reachable(), reason="needs the package index (network)")
def test_check_resolves(capsys):
    """--check resolves the closure for the device and fits the budget (nothing downloaded)."""
    assert device_wheels.main(["--kind", "h200", "--check"]) == 0
    printed = capsys.readouterr().out
    assert "numpy 2.4." in printed and "zarr" in printed and "distributed" in printed
    listing = printed.split("not carried):", 1)[1].split("\n", 1)[1]  # the wheels to fetch
    assert "scipy" in printed.split("not carried):", 1)[1].split("\n", 1)[0]
    assert "scipy" not in listing and "tensorflow" not in listing
