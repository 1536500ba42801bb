"""``distconv convolve`` and ``distconv correlate``: parse, call the public API, report."""

from __future__ import annotations

from typing import Any

import click

from distconv.cli._common import (
    JobOptions,
    default_output,
    engine_option,
    job_options,
    mode_option,
    output_option,
    output_text,
    run_job,
)
from distconv.cli._summary import summary_line
from distconv.errors import DistconvError
from distconv.plan import (
    METHODS,
    check_output_dtype,
    check_weights_fit,
    compute_dtype_for,
)


def _axes_list(value: str | None) -> tuple[int | str, ...] | None:
    """``--axes 1,2`` → (1, 2); ``--axes y,x`` → ("y", "x") (names of an image's axes)."""
    if value is None:
        return None
    words = [v.strip() for v in value.split(",")]
    if not all(words):
        raise DistconvError(
            f"--axes must be axis numbers or names separated by commas, got {value!r}"
        )
    return tuple(int(w) if w.lstrip("-").isdigit() else w for w in words)


def _int_list(value: str | None, name: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise DistconvError(f"{name} must be integers separated by commas, got {value!r}") from None


def _filter_job(
    operation: str,
    job: JobOptions,
    *,
    input: str,
    weights: str,
    output: str | None,
    origin: str,
    axes: str | None,
    dtype: str | None,
    dry_run: bool,
    **filter_options: Any,
) -> None:
    """Parse, filter, write; ``filter_options``: ``mode``, ``cval``, ``method``, ``engine``."""
    import distconv as dc
    from distconv.axes import default_filter_ndim, resolve_axes
    from distconv.clusters import parse_spec
    from distconv.labelled import wrap
    from distconv.provenance import source_paths

    parse_spec(job.cluster_spec)  # a bad spec fails before any work
    x = job.open(input)
    labels = job.labels(input)  # an input xarray wrote: the output keeps its dims and coords
    axes_t = _axes_list(axes)
    origins = _int_list(origin, "--origin")
    origin_arg: Any = origins[0] if origins and len(origins) == 1 else origins
    w = dc.load_weights(weights, ndim=len(axes_t) if axes_t else default_filter_ndim(x))
    axes_t = resolve_axes(axes_t, x, w.ndim)  # names → numbers; a 2-D kernel → an image's y, x
    check_output_dtype(dtype)
    arguments = {"origin": origin_arg, "axes": axes_t, "dtype": dtype, **filter_options}
    output = output or default_output(
        input, "convolved" if operation == "convolve" else "correlated"
    )
    if dry_run:
        _dry_run(operation, job, x, w, arguments, output)
        return
    function = dc.convolve if operation == "convolve" else dc.correlate
    y = function(x, w, **arguments)
    check_weights_fit(w.shape, x.shape, axes_t)  # the API accepts these, as scipy.ndimage does
    out = y if labels is None else wrap(y, labels, {"operation": operation})
    written, _ = job.write(  # checked, then saved
        out, output, operation, source_paths(y), work=(x, y)
    )
    if not job.quiet:
        produced = written.attrs["distconv"]
        record = produced["steps"][-1]
        click.echo(
            summary_line(
                y.shape,
                y.dtype,
                f"method {record['method']}, engine {record['engine']}",
                lambda report: (
                    f"{report.rate(x.size) / 1e6:.1f} Mpx/s, "
                    f"{report.rate(x.nbytes) / 2**20:.0f} MiB/s read"
                ),
                notes=_clipped_note(produced, x.dtype),
            )
        )


def _dry_run(operation: str, job: JobOptions, x, w, arguments: dict, output: str) -> None:
    """Print the plan, made from arithmetic on the shapes: no graph is built (a job of 16.7
    million stored chunks plans in a fraction of a second; its graph takes far longer)."""
    import distconv as dc
    from distconv.provenance import layout_of

    plan = dc.plan_convolve if operation == "convolve" else dc.plan_correlate
    # The arguments are checked as the API checks them, before any cluster starts.
    checked = plan(x, w, **arguments)
    check_weights_fit(w.shape, x.shape, arguments["axes"])
    # The output keeps the stored layout the input recorded (as save finds it through the
    # result's graph); only an input without one (a TIFF, an in-memory array) needs the graph,
    # whose tiles then set the output's chunks.
    function = dc.convolve if operation == "convolve" else dc.correlate
    layout = job.layout(x if layout_of(x) is not None else function(x, w, **arguments))
    work = (x.nbytes, x.size * checked.correlation.out_dtype.itemsize)  # input and output
    resources = job.planned_resources(work)
    if resources is not None:  # threads, or the local cluster this job would start
        described = plan(x, w, resources=resources, **arguments).describe()
    else:
        with job.cluster(quiet=True, work=work):  # the workers' threads and memory size tiles
            described = plan(x, w, **arguments).describe()
    click.echo(f"{described}\n{output_text(output, layout, x.shape)}")


def _clipped_note(produced: dict, input_dtype) -> str:
    """``; 12 samples clipped ... (pass --dtype float32 to keep them)``, or nothing."""
    from distconv.save.clipping import describe_clipped

    clipped = produced.get("clipped")
    if not clipped or not clipped["samples"]:
        return ""
    keep = compute_dtype_for(input_dtype)
    return f"; {describe_clipped(clipped)} (pass --dtype {keep} to keep them)"


_EXAMPLES = """
\b
Examples:
  distconv {op} big.zarr kernel.npy
  distconv {op} big.zarr kernel.npy -o out.zarr --mode mirror --origin 1 --method fft
  distconv {op} big.zarr/raw/0 gaussian:sigma=4 -o smooth.zarr --axes 1,2
  distconv {op} big.zarr box:size=5 --cluster threads --quiet
  distconv {op} cells.ome.zarr gaussian:sigma=2 --level 1 --axes y,x --pyramid
  distconv {op} s3://bucket/big.zarr k.npy -o s3://bucket/out.zarr \\
      --storage-option endpoint_url=http://127.0.0.1:9000
  distconv {op} stack.ome.tif gaussian:sigma=1 -o smooth.ome.zarr
  distconv {op} big.zarr kernel.npy --dry-run        # the plan: tiles, tasks, bytes, memory
  distconv {op} big.zarr kernel.npy -o out.zarr --chunks 256,256 --shards 4096,4096

\b
Each task computes a tile of many stored chunks (sized for the cluster's threads and memory:
see --dry-run); the output is written in the input's stored chunks unless --chunks says.

\b
WEIGHTS is a .npy, .npz (one array), .txt or .csv file, or a named kernel:
  gaussian:sigma=S[,truncate=T]  box:size=N  sobel:axis=A  laplace
"""


def _filter_command(operation: str) -> click.Command:
    @click.argument("input", metavar="INPUT")
    @click.argument("weights", metavar="WEIGHTS")
    @output_option("INPUT.<op>.zarr beside it")
    @mode_option("How the input extends past its edges (scipy.ndimage).")
    @click.option(
        "--cval", type=float, default=0.0, show_default=True, help="Fill value for --mode constant."
    )
    @click.option(
        "--origin",
        default="0",
        show_default=True,
        help="Kernel origin shift: one integer or one per filtered axis (1,0).",
    )
    @click.option(
        "--axes",
        help="Input axes the kernel filters: numbers (1,2) or an image's axis names (y,x) "
        "[default: all; an image's last space axes for a smaller kernel].",
    )
    @click.option(
        "--method",
        type=click.Choice(list(METHODS)),
        default=None,
        help="direct | fft | separable | auto [default: config, auto].",
    )
    @engine_option("chunk")
    @click.option(
        "--dtype",
        help="Output dtype (e.g. float32, uint16, bool) [default: the input's, as "
        "scipy.ndimage]. Integers saturate; the summary counts clipped samples.",
    )
    @job_options("inputs, weights and parameters", rmm=True)
    @click.option(
        "--dry-run",
        is_flag=True,
        help="Print the plan (tiles, tasks, bytes decoded, halo, peak memory per task, "
        "method per tile, output chunks); write nothing.",
    )
    def command(**params: Any) -> None:
        run_job(_filter_job, operation, **params)

    command.__doc__ = (
        f"{operation.capitalize()} INPUT (a Zarr array, v2 or v3, or a path inside a group; an "
        "OME-Zarr image; a TIFF or OME-TIFF; local or an s3://, gs://... URL) with WEIGHTS, "
        f"chunk by chunk, as scipy.ndimage.{operation} does, and write a Zarr array (an "
        f"OME-Zarr image for an image input).\n{_EXAMPLES.format(op=operation)}"
    )
    return click.command(operation)(command)


convolve_command = _filter_command("convolve")
correlate_command = _filter_command("correlate")
