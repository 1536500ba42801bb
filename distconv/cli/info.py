"""``distconv info`` and ``distconv engines``: describe a store, list the engines."""

from __future__ import annotations

import json

import click

from distconv import kernels
from distconv.clipping import describe_clipped


@click.command("info")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info_command(path: str, as_json: bool) -> None:
    """Describe a Zarr array: shape, dtype, chunks, codecs, bytes, provenance, completeness.

    \b
    Example:
      distconv info out.zarr
    """
    import distconv as dc

    description = dc.info(path)
    if as_json:
        click.echo(json.dumps(description, indent=2, default=str))
        return
    for key in ("path", "zarr_format", "shape", "dtype", "chunks", "shards", "codecs"):
        if description[key] is not None:
            click.echo(f"{key + ':':14}{_fmt(description[key])}")
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
    """List engines: installed?, usable here?, device, version, operations.

    \b
    Example:
      distconv engines
      DASK_DISTCONV__ENGINE=numba python my_analysis.py   # choose one by config
    """
    from rich.console import Console
    from rich.table import Table

    table = Table("engine", "installed", "usable here", "device", "ops", "pip extra")
    for name, spec in kernels.ENGINES.items():
        installed = kernels.is_installed(name)
        usable, device = False, spec.device.upper()
        if installed:
            try:
                module = kernels.get_engine(name)
                describe_device = getattr(module, "device_info", None)
                usable = True
                device = describe_device() if describe_device else spec.device
            except Exception as exc:  # an engine whose import fails is reported, not fatal
                device = f"import failed: {str(exc).splitlines()[0][:60]}"
        table.add_row(
            name,
            "yes" if installed else "no",
            "yes" if usable else "no",
            device,
            ", ".join(op.replace("correlate_", "") for op in spec.ops),
            f"distconv[{spec.extra}]" if spec.extra else "(core)",
        )
    Console().print(table)
