"""``make gpu-wheels``: the folder of wheels a lent GPU machine needs to run ``make gpu-check``.

    python benchmarks/device_wheels.py --kind {h100,h200} [--out .whl] [--check]
                                       [--extra NAME ...] [--drop NAME ...]

The device machines (nvidia-h100-x1, nvidia-h200) have no network: what their image lacks must
travel with the working tree, as wheels, in a folder that ``.gitignore`` keeps out of git and the
``run`` call names in ``carry``. This script builds that folder here, where pip reaches PyPI, so
that a GPU session spends its minutes on the check, not on set-up:

1. it resolves, for CPython 3.12 on manylinux x86_64 (the device's Python), the whole dependency
   closure of distconv's runtime dependencies (pyproject.toml) plus ``numpy<2.5`` (the image's
   numpy 2.5 breaks numba-cuda 0.30), dask, distributed, zarr and numcodecs: one
   ``pip install --dry-run --report`` with ``--only-binary=:all: --python-version 3.12
   --implementation cp --platform manylinux...``, which reads metadata only;
2. it drops what the image already has (``IMAGE_PACKAGES``, copied from the device notes'
   KINDS.md, "Python packages already there", read 2026-11-17: the same 'cuda' image on both
   kinds, CuPy for CUDA 13 and numba-cuda included), except numpy, and never carries TensorFlow;
3. it downloads the rest with ``pip download --no-deps`` (one version of each package), removes
   any other wheel from the folder, checks every wheel's tags (cp312/abi3/py3, manylinux x86_64
   or any) and the size: the wheels and the repository (``git ls-files``) must fit the 64 MiB a
   ``run`` call carries, or it exits 2 with one line naming what to drop;
4. it writes ``<out>/INSTALL.sh`` (the line the device command sources first) and prints the
   ``run`` command and its ``carry`` list.

``--check`` resolves only: it prints what would be fetched and the total size (read from the
index's Content-Length), and downloads nothing. ``--extra dask-cuda`` adds a package (the
``cuda`` cluster's tests skip without it); ``--drop bokeh`` leaves one out.

On the device (a ``run`` call with ``carry: [".whl"]``)::

    . .whl/INSTALL.sh && python3 benchmarks/gpu_check.py --out $OUT/gpu-check

Run it with a recent pip (``make gpu-wheels KIND=h200 PYTHON=.venv/bin/python``): pip 23.2
resolved older zarr and numcodecs, 7 MiB more. pip evaluates markers with this Python's version,
so a backport for Python < 3.12 may travel needlessly; the closure check evaluates them for 3.12.
See docs/gpu.md for the steps and the sizes measured (2026-12-06: 18 wheels, 42.1 MiB, either
kind).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
CARRY_LIMIT = 64 * MIB  # what one `run` call carries: the working tree and the carried paths
PYTHON_VERSION = "3.12"
PYTHON_TAG = "cp312"
MAX_GLIBC = 39  # the image's Python is 3.12.3 (Ubuntu 24.04: glibc 2.39)
# pip matches a manylinux tag exactly: every one the device's glibc accepts is named.
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(MAX_GLIBC, 4, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]

# KINDS.md, "Python packages already there" (the 'cuda' image of nvidia-h100-x1 and nvidia-h200,
# read on a machine on 2026-11-17). Carried only when listed in FORCE_CARRY.
IMAGE_PACKAGES = frozenset(
    """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
    botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
    coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
    diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
    frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
    hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib
    jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator
    lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
    mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx
    ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
    nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
    nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
    nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
    opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
    pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf
    psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
    pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
    pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
    scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
    shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
    tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz
    torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers
    treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug
    wheel wrapt xarray xxhash yarl zipp""".split()
)
# Both kinds run the same image (KINDS.md: "The image is nvidia-h200's"): CuPy for CUDA 13
# (cupy-cuda13x, which the H100's driver 580 runs too) and numba-cuda are there on each, so
# neither kind carries CuPy. A kind whose image lacked them would list them here.
KIND_EXTRA: dict[str, list[str]] = {"h100": [], "h200": []}
# The image has numpy 2.5.2, which breaks numba-cuda 0.30: carried in the version asked for.
FORCE_CARRY = {"numpy": "numpy<2.5"}
# Also needed on the device beside pyproject's dependencies (zarr's codecs, named explicitly).
ALSO_NEEDED = ["dask", "distributed", "zarr", "numcodecs"]
NEVER_CARRY = ("tensorflow", "tf-", "tb-nightly", "keras")  # far too large for 64 MiB

WHEEL_RE = re.compile(
    r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-(?P<build>\d[^-]*))?"
    r"-(?P<python>[^-]+)-(?P<abi>[^-]+)-(?P<platform>[^-]+)\.whl$"
)


def normalize(name: str) -> str:
    """A distribution's name as PEP 503 compares it (``Typing_Extensions`` → typing-extensions)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The distribution named by a requirement string (``dask[array]>=2024.8`` → dask)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return normalize(match.group(1))


def parse_wheel_name(filename: str) -> dict[str, str] | None:
    """The fields of a wheel's file name, or None when it is not one."""
    match = WHEEL_RE.match(Path(filename).name)
    return match.groupdict() if match else None


def _version_key(version: str) -> tuple:
    """A rough sort key for versions: numeric parts compared as numbers (newest last)."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (-1, 0, part)
        for part in re.split(r"[.+!-]", version)
    )


def platform_ok(platform: str, max_glibc: int = MAX_GLIBC) -> bool:
    """Whether a wheel platform tag (possibly compressed, ``a.b``) runs on manylinux x86_64."""
    for tag in platform.split("."):
        if tag == "any":
            return True
        if tag in ("manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64"):
            return True
        match = re.fullmatch(r"manylinux_2_(\d+)_x86_64", tag)
        if match and int(match.group(1)) <= max_glibc:
            return True
    return False


def python_abi_ok(python: str, abi: str) -> bool:
    """Whether the python/abi tags load in CPython 3.12: cp312, abi3 from cp3x ≤ 12, or py3."""
    pythons = python.split(".")
    abis = abi.split(".")
    if PYTHON_TAG in pythons and (PYTHON_TAG in abis or "abi3" in abis or "none" in abis):
        return True
    for tag in pythons:
        match = re.fullmatch(r"cp3(\d+)", tag)
        if match and int(match.group(1)) <= 12 and "abi3" in abis:
            return True
    return "none" in abis and any(tag in ("py3", "py312") for tag in pythons)


def wheel_ok(filename: str) -> bool:
    """Whether a wheel installs on the device: CPython 3.12, manylinux x86_64 (or pure Python)."""
    fields = parse_wheel_name(filename)
    return bool(
        fields
        and python_abi_ok(fields["python"], fields["abi"])
        and platform_ok(fields["platform"])
    )


def one_per_package(filenames: list[str]) -> tuple[list[str], list[str]]:
    """Keep the newest wheel of each package: (kept, dropped). Two versions of one package in
    the folder stop the whole install on the device."""
    best: dict[str, str] = {}
    for filename in filenames:
        fields = parse_wheel_name(filename)
        if fields is None:
            continue
        name = normalize(fields["name"])
        if name not in best or _version_key(fields["version"]) > _version_key(
            parse_wheel_name(best[name])["version"]
        ):
            best[name] = filename
    kept = sorted(best.values())
    return kept, sorted(set(filenames) - set(kept))


def image_has(name: str, kind: str) -> bool:
    """Whether the image of ``kind`` already holds the package (and it need not travel)."""
    name = normalize(name)
    if name in FORCE_CARRY:
        return False
    return name in IMAGE_PACKAGES


def never_carry(name: str) -> bool:
    name = normalize(name)
    return any(name == prefix or name.startswith(prefix) for prefix in NEVER_CARRY)


def budget_message(sizes: dict[str, int], repo_bytes: int, limit: int = CARRY_LIMIT) -> str | None:
    """None when the wheels (``{package: bytes}``) and the repository fit ``limit``; otherwise
    the one line to print: how far over, and the largest packages to drop."""
    total = sum(sizes.values())
    budget = limit - repo_bytes
    if total <= budget:
        return None
    over = total - budget
    suggestions, freed = [], 0
    for name, size in sorted(sizes.items(), key=lambda item: -item[1]):
        if name in FORCE_CARRY:
            continue
        suggestions.append(f"{name} ({size / MIB:.1f} MiB)")
        freed += size
        if freed >= over:
            break
    return (
        f"over budget: wheels {total / MIB:.1f} MiB + repository {repo_bytes / MIB:.1f} MiB > "
        f"{limit / MIB:.0f} MiB by {over / MIB:.1f} MiB; drop (--drop NAME) "
        + ", ".join(suggestions)
    )


def pyproject_dependencies(path: Path = ROOT / "pyproject.toml") -> list[str]:
    """``[project] dependencies`` of pyproject.toml (tomllib where there is one)."""
    text = path.read_text()
    try:
        import tomllib

        return list(tomllib.loads(text)["project"]["dependencies"])
    except ImportError:  # Python 3.10: the list is simple enough to read directly
        block = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", text, re.S | re.M).group(1)
        return re.findall(r'"([^"]+)"', re.sub(r"#.*", "", block))


def top_requirements(kind: str, extra: list[str], drop: list[str]) -> list[str]:
    """What the resolution starts from: pyproject's dependencies, numpy<2.5, the extras."""
    dropped = {normalize(name) for name in drop}
    requirements: dict[str, str] = {}
    for requirement in (
        pyproject_dependencies() + ALSO_NEEDED + KIND_EXTRA[kind] + list(FORCE_CARRY.values())
    ):
        name = requirement_name(requirement)
        if name in dropped or never_carry(name):
            continue
        if name in requirements and name in FORCE_CARRY:
            requirements[name] = f"{requirements[name]},{FORCE_CARRY[name].removeprefix(name)}"
        elif name not in requirements:
            requirements[name] = requirement
    for requirement in extra:  # asked for by name: kept even when the image has it
        requirements[requirement_name(requirement)] = requirement
    return list(requirements.values())


def target_options() -> list[str]:
    options = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
    for platform in PLATFORMS:
        options += ["--platform", platform]
    return options


def pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]


def resolve(requirements: list[str]) -> list[dict]:
    """pip's resolution of the whole closure for the device's Python (metadata only):
    ``[{name, version, url, requires}]``, one per package."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp, "report.json")
        command = pip(
            "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
            "--target", str(Path(tmp, "target")), *target_options(), *requirements,
        )  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"pip could not resolve {' '.join(requirements)}:\n{done.stderr.strip()}")
        installs = json.loads(report.read_text())["install"]
    return [
        {
            "name": normalize(item["metadata"]["name"]),
            "version": item["metadata"]["version"],
            "url": item["download_info"]["url"],
            "requires": item["metadata"].get("requires_dist", []),
        }
        for item in installs
    ]


def remote_size(url: str) -> int:
    """Content-Length of a wheel on the index (0 when the server does not say)."""
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.headers.get("Content-Length") or 0)
    except OSError:
        return 0


def repository_bytes() -> int:
    """The bytes of the files git tracks: what travels with every ``run`` call."""
    done = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    total = 0
    for name in done.stdout.decode().split("\0"):
        path = ROOT / name
        if name and path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def install_line(out: str) -> str:
    return (
        "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
        f"--target /tmp/site {out}/*.whl && export PYTHONPATH=/tmp/site:$PWD"
    )


def run_command(out: str) -> str:
    """The ``run`` tool's command: install the wheels, then the GPU check into $OUT."""
    return (
        f". {out}/INSTALL.sh || exit 1; nvidia-smi -L; "
        "PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT/gpu-check"
    )


MARKER_ENV = {
    "python_version": PYTHON_VERSION,
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "implementation_version": "3.12.3",
    "platform_python_implementation": "CPython",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "sys_platform": "linux",
    "os_name": "posix",
}


def wheel_requirements(path: Path) -> list[str]:
    """The Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(path) as wheel:
        name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = wheel.read(name).decode("utf-8", "replace")
    return [
        line.split(":", 1)[1].strip()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:")
    ]


def missing_requirements(
    requires: dict[str, list[str]], top: list[str], image: frozenset[str] = IMAGE_PACKAGES
) -> list[str]:
    """What the carried packages (``{name: Requires-Dist lines}``) need on the device that is
    neither carried nor in the image: the closure is complete when this is empty. Markers are
    evaluated for CPython 3.12 on Linux x86_64, extras followed from ``top`` down."""
    from pip._vendor.packaging.requirements import Requirement  # pip's own, not a dependency

    missing, seen = set(), set()
    todo = [Requirement(line) for line in top]
    while todo:
        requirement = todo.pop()
        name = normalize(requirement.name)
        for extra in ["", *sorted(requirement.extras)]:
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            if name not in requires:
                if name not in image:
                    missing.add(name)
                continue
            for line in requires[name]:
                needed = Requirement(line)
                if needed.marker and not needed.marker.evaluate({**MARKER_ENV, "extra": extra}):
                    continue
                if not needed.marker and extra:
                    continue  # the base requirements, followed under extra ""
                todo.append(needed)
    return sorted(missing)


def download(selected: list[dict], out: Path) -> dict[str, int]:
    """Fetch the selected wheels into ``out`` (no dependencies: the closure is resolved) and
    remove every other wheel there. Returns ``{package: bytes}``."""
    out.mkdir(parents=True, exist_ok=True)
    pins = [f"{item['name']}=={item['version']}" for item in selected]
    command = pip("download", "--no-deps", "--quiet", "-d", str(out), *target_options(), *pins)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"pip download failed:\n{done.stderr.strip()}")
    wanted = {(item["name"], item["version"]) for item in selected}
    sizes: dict[str, int] = {}
    for path in sorted(out.glob("*.whl")):
        fields = parse_wheel_name(path.name)
        key = (normalize(fields["name"]), fields["version"]) if fields else None
        if key not in wanted:
            path.unlink()  # a stale wheel from an earlier run: two versions stop the install
            continue
        sizes[key[0]] = path.stat().st_size
    missing = sorted({name for name, _ in wanted} - set(sizes))
    if missing:
        sys.exit(f"pip download did not fetch: {', '.join(missing)}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=sorted(KIND_EXTRA), required=True)
    parser.add_argument("--out", default=".whl", help="the folder, relative to the repository")
    parser.add_argument("--check", action="store_true", help="resolve only; download nothing")
    parser.add_argument("--extra", action="append", default=[], help="also carry this package")
    parser.add_argument("--drop", action="append", default=[], help="leave this package out")
    args = parser.parse_args(argv)

    requirements = top_requirements(args.kind, args.extra, args.drop)
    pip_version = subprocess.run(pip("--version"), capture_output=True, text=True).stdout.split()
    print(
        f"resolving for cp312 manylinux x86_64 ({args.kind}, pip {pip_version[1]}): "
        + " ".join(requirements)
    )
    resolved = resolve(requirements)
    dropped = {normalize(name) for name in args.drop}
    asked = {requirement_name(requirement) for requirement in args.extra}
    selected, in_image = [], []
    for item in resolved:
        name = item["name"]
        if never_carry(name) or name in dropped:
            continue
        if image_has(name, args.kind) and name not in asked:
            in_image.append(f"{name} {item['version']}")
            continue
        if not wheel_ok(item["url"].rsplit("/", 1)[-1]):
            sys.exit(f"{name} {item['version']}: no cp312 manylinux x86_64 wheel ({item['url']})")
        selected.append(item)
    print(f"in the image already ({len(in_image)}, not carried): {', '.join(sorted(in_image))}")

    out = (ROOT / args.out).resolve()
    if args.check:
        sizes = {item["name"]: remote_size(item["url"]) for item in selected}
    else:
        sizes = download(selected, out)
        names = sorted(path.name for path in out.glob("*.whl"))
        kept, twice = one_per_package(names)
        bad = [name for name in names if not wheel_ok(name)]
        if twice or bad:
            sys.exit(f"{out}: two versions of {twice} or wheels not for the device: {bad}")
        requires = {
            normalize(parse_wheel_name(name)["name"]): wheel_requirements(out / name)
            for name in names
        }
        carried_top = [r for r in requirements if not image_has(requirement_name(r), args.kind)]
        missing = missing_requirements(requires, carried_top)
        if missing:
            sys.exit(f"the closure is not complete: {', '.join(missing)} neither carried nor there")
        print(f"closure complete: every requirement of the {len(names)} wheels is carried or there")
    versions = {item["name"]: item["version"] for item in selected}
    for name in sorted(sizes, key=lambda name: -sizes[name]):
        print(f"  {sizes[name] / MIB:7.2f} MiB  {name} {versions[name]}")
    repo = repository_bytes()
    total = sum(sizes.values())
    print(
        f"{len(sizes)} wheels, {total / MIB:.1f} MiB; repository {repo / MIB:.1f} MiB; "
        f"together {(total + repo) / MIB:.1f} of {CARRY_LIMIT / MIB:.0f} MiB"
    )
    message = budget_message(sizes, repo)
    if message:
        print(message, file=sys.stderr)
        return 2
    if args.check:
        return 0

    relative = os.path.relpath(out, ROOT)
    (out / "INSTALL.sh").write_text(
        "# Sourced first by the device command: installs the carried wheels (no network there).\n"
        + install_line(relative)
        + "\n"
    )
    command = run_command(relative)
    assert len(command) <= 2000
    print(f"\nrun the check with the device tool's run, carry: [{json.dumps(relative)}]")
    print(f"command: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
