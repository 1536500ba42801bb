"""``distconv info`` and ``distconv engines``: describe a store, list the engines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

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

    # TensorFlow's probe starts first, in its own process, and runs while the others are
    # probed here (its import is most of this command's time).
    apart = {
        name: TensorFlowProbe()
        for name in _PROBED_APART
        if name not in sys.modules and kernels.is_installed(name)
    }
    found = {
        name: _probe_here(name)
        for name in kernels.ENGINES
        if name not in apart and kernels.is_installed(name)
    }
    found.update((name, probe.result()) for name, probe in apart.items())

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


# Engines probed in a child process unless this process already imported them: TensorFlow's
# import takes seconds and its C++ runtime logs on stderr (the child's stderr is kept, shown
# with --debug), and an import that crashes (an unsupported CPU) takes only the child down.
_PROBED_APART = ("tensorflow",)
PROBE_TIMEOUT = 300.0  # seconds; a first import from a cold disk can take a minute

# What kernels/tensorflow.py's device_info reports, from a fresh process: the device TF
# computes on and its intra-op threads (its compiled functions are none in a fresh process).
_TENSORFLOW_PROBE = """
import json, os
import tensorflow as tf
gpus = tf.config.get_visible_devices("GPU")
threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count() or 1
print(json.dumps({"version": tf.__version__, "gpus": [g.name for g in gpus], "threads": threads}))
"""


def _probe_here(name: str) -> tuple[bool, str | None]:
    """(usable, device description) of an engine imported in this process."""
    try:
        module = kernels.get_engine(name)
        usable = bool(getattr(module, "usable", lambda: True)())
        describe_device = getattr(module, "device_info", None)
        return usable, describe_device() if describe_device else None
    except Exception as exc:  # an engine whose import fails is reported, not fatal
        return False, f"import failed: {str(exc).splitlines()[0][:200]}"


class TensorFlowProbe:
    """TensorFlow imported in a child process, started at construction.

    The child's environment gets ``TF_CPP_MIN_LOG_LEVEL=2`` unless the caller set one (this
    process's environment is left as it was); its stderr, TensorFlow's start-up log among it,
    is captured and shown only with ``--debug``.
    """

    def __init__(self) -> None:
        from distconv.cli._common import CommandState

        self.debug = CommandState.debug
        env = {"TF_CPP_MIN_LOG_LEVEL": "2", **os.environ}
        self.process = subprocess.Popen(
            [sys.executable, "-c", _TENSORFLOW_PROBE],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def result(self, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str | None]:
        """(usable, device description), as :func:`_probe_here` gives them."""
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            return False, f"import failed: no answer from TensorFlow in {timeout:.0f} s"
        if self.debug and err.strip():
            click.echo(err.rstrip(), err=True)
        code = self.process.returncode
        if code != 0:
            lines = [line for line in err.strip().splitlines() if line.strip()]
            why = lines[-1][:200] if lines else f"exit status {code}"
            if code < 0:
                why = f"the import crashed ({signal.Signals(-code).name})"
            return False, f"import failed: {why}"
        found = json.loads(out.strip().splitlines()[-1])
        gpus = found["gpus"]
        where = f"GPU {gpus[0]}" if gpus else "CPU"
        return True, (
            f"{where} (TensorFlow {found['version']}, {found['threads']} intra-op threads)"
        )
