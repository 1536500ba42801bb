"""``distconv info`` and ``distconv engines``: describe a store, list the engines."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

import click

from distconv import kernels
from distconv.cli._common import store_options
from distconv.save.clipping import describe_clipped


@click.command("info")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@store_options()
def info_command(
    path: str, as_json: bool, level: int | None, storage_option: tuple[str, ...]
) -> None:
    """Describe a Zarr array, an OME-Zarr image or a TIFF: shape, dtype, chunks, codecs, bytes,
    axes and levels, provenance, completeness.

    \b
    Examples:
      distconv info out.zarr
      distconv info cells.ome.zarr --level 2
      distconv info s3://bucket/out.zarr --storage-option endpoint_url=http://127.0.0.1:9000
    """
    import distconv as dc
    from distconv.stores import parse_storage_options

    storage = parse_storage_options(storage_option) or None
    description = dc.info(path, level=level, storage_options=storage)
    if as_json:
        click.echo(json.dumps(description, indent=2, default=str))
        return
    for key in ("path", "format", "zarr_format", "shape", "dtype", "chunks", "shards", "codecs"):
        if description.get(key) is not None:
            click.echo(f"{key + ':':14}{_fmt(description[key])}")
    _echo_image(description.get("image"))
    if "nbytes_stored" not in description:  # a TIFF: no distconv provenance
        click.echo(f"{'bytes:':14}{description['nbytes']:,}")
        return
    click.echo(f"{'bytes:':14}{description['nbytes']:,} ({description['nbytes_stored']:,} stored)")
    produced = description["provenance"]
    if produced is None:
        click.echo(f"{'provenance:':14}none (not written by distconv)")
        return
    if description["complete"]:
        click.echo(f"{'status:':14}complete")
    else:
        click.echo(
            f"{'status:':14}partial: {description['chunks_initialized']:,} of "
            f"{description['chunks_total']:,} chunks written"
        )
    for step in produced.get("steps", []):
        params = ", ".join(f"{k}={v}" for k, v in step.get("parameters", {}).items())
        click.echo(
            f"{'operation:':14}{step.get('operation')} ({params}); method "
            f"{step.get('method')}, engine {step.get('engine')}"
        )
        if "weights_sha256" in step:
            click.echo(
                f"{'weights:':14}{step.get('weights_shape')} sha256 {step['weights_sha256'][:16]}…"
            )
    clipped = describe_clipped(produced.get("clipped"))
    if clipped:
        click.echo(f"{'clipped:':14}{clipped}")
    for key in ("inputs", "command", "version", "created", "finished"):
        if key in produced:
            click.echo(f"{key + ':':14}{_fmt(produced[key])}")


def _echo_image(image) -> None:
    """Axes (with units) and levels of an OME-Zarr image or a TIFF."""
    if not image:
        return
    axes = [f"{a} ({u})" if u else str(a) for a, u in zip(image["axes"], image["units"])]
    kind = f"OME-Zarr {image['ngff']}" if image.get("ngff") else "TIFF"
    click.echo(f"{'image:':14}{kind}, level {image['level']} of {len(image['levels'])}")
    click.echo(f"{'axes:':14}{', '.join(axes)}")
    for index, level in enumerate(image["levels"]):
        shape = _fmt(level["shape"]) if level["shape"] else "missing"
        scale = f", scale {_fmt(level['scale'])}" if level.get("scale") else ""
        click.echo(f"{f'level {index}:':14}{level['path']}: {shape}{scale}")


def _fmt(value) -> str:
    if isinstance(value, (list, tuple)):
        return (
            ", ".join(map(str, value))
            if value and isinstance(value[0], str)
            else "×".join(map(str, value))
            if all(isinstance(v, int) for v in value)
            else str(value)
        )
    return str(value)


@click.command("engines")
def engines_command() -> None:
    """List engines: installed?, usable here?, device, operations, pip extra; then what each
    usable engine runs on here (versions, CPU or GPUs).

    \b
    Example:
      distconv engines
      DASK_DISTCONV__ENGINE=numba python my_analysis.py   # choose one by config
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    found = {name: _probe_here(name) for name in kernels.ENGINES if kernels.is_installed(name)}

    # Short cells in the table (it fits 80 columns); each engine's long description of its
    # device (versions, CPU, GPUs) goes below it, where lines wrap as text.
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for header in ("engine", "installed", "usable", "device"):
        table.add_column(header, no_wrap=True)
    table.add_column("ops", ratio=1)
    table.add_column("pip extra", no_wrap=True)
    details = []
    for name, spec in kernels.ENGINES.items():
        usable, detail = found.get(name, (False, None))
        if detail:
            details.append((name, detail))
        table.add_row(
            name,
            "yes" if name in found else "no",
            "yes" if usable else "no",
            spec.device.upper(),
            ", ".join(op.replace("correlate_", "") for op in spec.ops),
            # Text, not a markup string: rich would take "[tensorflow]" for a style tag.
            Text(f"distconv[{spec.extra}]" if spec.extra else "(core)"),
        )
    console = Console()
    console.print(table)
    for name, detail in details:
        console.print(f"{name}: {detail}", highlight=False, markup=False)


def _probe_here(name: str) -> tuple[bool, str | None]:
    """(usable, device description) of an engine, imported in this process (once: the
    registry caches it) with TensorFlow's C++ log quiet for the import and the device probe."""
    try:
        with _quiet_tensorflow_log():
            module = kernels.get_engine(name)
            usable = bool(getattr(module, "usable", lambda: True)())
            describe_device = getattr(module, "device_info", None)
            return usable, describe_device() if describe_device else None
    except Exception as exc:  # an engine whose import fails is reported, not fatal
        return False, f"import failed: {str(exc).splitlines()[0][:200]}"


@contextlib.contextmanager
def _quiet_tensorflow_log() -> Iterator[None]:
    """``TF_CPP_MIN_LOG_LEVEL=1`` (INFO off) while an engine is imported and its device
    probed, unless the caller set a level; the environment is put back as it was found.

    The engine module sets it for TensorFlow's import only; listing GPUs afterwards
    (``device_info``) starts parts of TensorFlow's runtime that log again without it.
    """
    added = "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    if added:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "1"
    try:
        yield
    finally:
        if added:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
