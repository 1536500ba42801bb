"""``distconv apply``: a trained model (or ``module:function``) over an image of any size."""

from __future__ import annotations

from typing import Any

import click

from distconv.cli._common import (
    JobOptions,
    default_output,
    job_options,
    output_option,
    output_text,
    run_job,
)
from distconv.cli._summary import summary_line
from distconv.cli.filters import _axes_list, _int_list
from distconv.errors import DistconvError

_EXAMPLES = """
\b
Examples:
  distconv apply unet.keras slide.zarr -o mask.zarr
  distconv apply denoiser/ volume.ome.zarr -o clean.ome.zarr --cluster tcp://head:8786
  distconv apply unet.keras slide.zarr --dry-run      # receptive field, stride, halo, tiles
  distconv apply unet.keras slide.zarr -o mask.zarr --halo 32 --tile 512 --batch 4
  distconv apply mypkg.filters:denoise big.zarr -o out.zarr --engine numpy
  distconv apply seg.keras cells.ome.zarr --axes y,x --level 1 --pyramid

\b
MODEL is a .keras file (loaded in Keras' safe mode; pickles are refused), a TensorFlow
SavedModel folder, or module:function (a Python function of one tile; --engine says what it
receives). A model must be fully convolutional. The result equals the model run on the whole
image at once: tiles carry a halo as wide as the model's measured receptive field and start on
its total stride, and the image's true edges get no padding beyond the model's own.
"""


_HELP = (
    "Run MODEL over INPUT (a Zarr array, an OME-Zarr image, a TIFF; local or s3://...) tile by "
    "tile, equal to the model run on the whole image, and write a Zarr array (an OME-Zarr image "
    "for an image input).\n" + _EXAMPLES
)


def _apply_job(
    job: JobOptions,
    *,
    model: str,
    input: str,
    output: str | None,
    halo: str,
    batch: str,
    tile: str | None,
    axes: str | None,
    engine: str | None,
    dtype: str | None,
    dry_run: bool,
) -> None:
    import distconv as dc
    from distconv.clusters import parse_spec
    from distconv.provenance import source_paths

    parse_spec(job.cluster_spec)  # a bad spec fails before any work
    x = job.open(input)
    options: dict[str, Any] = {
        "halo": _halo_argument(halo),
        "batch": _batch_argument(batch),
        "tile": _int_list(tile, "--tile"),
        "axes": _axes_list(axes),
        "engine": engine,
        "dtype": dtype,
    }
    output = output or default_output(input, "predicted")
    if dry_run:
        plan = dc.plan_apply(model, x, **options)
        click.echo(plan.describe())
        y = dc.apply(model, x, **options)
        click.echo(output_text(output, job.layout(y), y.shape))
        return
    job.check_output(output, source_paths(x))
    with job.cluster(work=(x,)):  # the probe runs where the tiles will
        y = dc.apply(model, x, **options)
        job.layout(y)
        written, _ = job.save(y, output, "apply")
    if not job.quiet:
        record = written.attrs["distconv"]["steps"][-1]
        parameters = record["parameters"]
        details = (
            f"model {record['model']['name']}, halo {'×'.join(map(str, parameters['halo']))}, "
            f"tile {'×'.join(map(str, parameters['tile']))}, batch {parameters['batch']}"
        )
        click.echo(
            summary_line(
                y.shape,
                y.dtype,
                details,
                rates=lambda report: f"{report.rate(float(x.size)) / 1e6:.1f} Mpx/s",
            )
        )


def _halo_argument(text: str) -> Any:
    if text == "auto":
        return "auto"
    values = _int_list(text, "--halo")
    return values[0] if values and len(values) == 1 else values


def _batch_argument(text: str) -> Any:
    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise DistconvError(f"--batch must be auto or a positive integer, got {text!r}") from None


@click.command("apply", help=_HELP)
@click.argument("model", metavar="MODEL")
@click.argument("input", metavar="INPUT")
@output_option("INPUT.predicted.zarr beside it")
@click.option(
    "--halo",
    default="auto",
    show_default=True,
    help="Pixels each tile reads beyond its core: auto (the measured receptive field, rounded "
    "up to the stride), one integer, or one per space axis (16,32).",
)
@click.option(
    "--tile",
    default=None,
    help="Core of one model tile per space axis, a multiple of the stride [default: the "
    "stored chunks grouped to about 512 px (2-D) or 96 px (3-D)].",
)
@click.option(
    "--batch",
    default="auto",
    show_default=True,
    help="Tiles per model call: auto (small tiles batched up to ~512² px) or a number.",
)
@click.option(
    "--axes",
    help="The input's space axes: numbers (1,2) or names (y,x) [default: an image's space "
    "axes, else the last axes the model takes; a c axis, or a last extra axis, is channels].",
)
@click.option(
    "--engine",
    type=click.Choice(["numpy", "tensorflow", "cupy", "numba-cuda"]),
    default=None,
    help="What a module:function receives [default: numpy]; models run on TensorFlow.",
)
@click.option("--dtype", help="Output dtype [default: the model's].")
@job_options("model, input and parameters", rmm=True)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Probe the model and print receptive field, stride, halo, tile, batch, tasks and "
    "memory per task; write nothing.",
)
def apply_command(**params: Any) -> None:
    """Run MODEL over INPUT (a Zarr array, an OME-Zarr image, a TIFF; local or s3://...) tile
    by tile, equal to the model run on the whole image, and write a Zarr array (an OME-Zarr
    image for an image input)."""
    run_job(_apply_job, **params)
