"""``distconv convolve`` and ``distconv correlate``: parse, call the public API, report."""

from __future__ import annotations

from typing import Any

import click

from distconv.cli._common import (
    cluster_options,
    command_cluster,
    default_output,
    engine_option,
    interruptible,
    options,
    output_option,
    pyramid_options,
    quiet_option,
    save_resumable,
    store_options,
    write_options,
)
from distconv.errors import DistconvError
from distconv.plan import METHODS, MODES, check_output_dtype, check_weights_fit


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
    operation,
    input,
    weights,
    output,
    mode,
    cval,
    origin,
    axes,
    method,
    engine,
    dtype,
    overwrite,
    resume,
    cluster_spec,
    workers,
    threads_per_worker,
    rmm_pool_size,
    quiet,
    level,
    storage_option,
    pyramid,
    pyramid_method,
) -> None:
    import distconv as dc
    from distconv.axes import default_filter_ndim, resolve_axes
    from distconv.clusters import parse_spec
    from distconv.io import check_output_path
    from distconv.provenance import source_paths
    from distconv.stores import parse_storage_options

    parse_spec(cluster_spec)  # a bad spec fails before any work
    storage = parse_storage_options(storage_option) or None
    x = dc.open(input, level=level, storage_options=storage)
    axes_t = _axes_list(axes)
    origins = _int_list(origin, "--origin")
    origin_arg: Any = origins[0] if origins and len(origins) == 1 else origins
    w = dc.load_weights(weights, ndim=len(axes_t) if axes_t else default_filter_ndim(x))
    axes_t = resolve_axes(axes_t, x, w.ndim)  # names → numbers; a 2-D kernel → an image's y, x
    check_output_dtype(dtype)
    function = dc.convolve if operation == "convolve" else dc.correlate
    y = function(
        x,
        w,
        mode=mode,
        cval=cval,
        origin=origin_arg,
        axes=axes_t,
        method=method,
        engine=engine,
        dtype=dtype,
    )
    check_weights_fit(w.shape, x.shape, axes_t)  # the API accepts these, as scipy.ndimage does
    output = output or default_output(
        input, "convolved" if operation == "convolve" else "correlated"
    )
    # before any cluster starts
    check_output_path(output, source_paths(y), overwrite, resume, storage_options=storage)

    with command_cluster(cluster_spec, workers, threads_per_worker, quiet, rmm_pool_size):
        written, seconds = save_resumable(
            y,
            output,
            operation,
            overwrite=overwrite,
            resume=resume,
            quiet=quiet,
            storage_options=storage,
            pyramid=pyramid,
            pyramid_method=pyramid_method,
        )
    if not quiet:
        record = written.attrs["distconv"]["steps"][-1]
        pixels = float(x.size)
        click.echo(
            f"wrote {output}: {'×'.join(map(str, y.shape))} {y.dtype}, "
            f"{y.npartitions} chunks, method {record['method']}, "
            f"engine {record['engine']}; {seconds:.2f} s, {pixels / seconds / 1e6:.1f} Mpx/s, "
            f"{x.nbytes / seconds / 2**20:.0f} MiB/s read"
        )


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

\b
WEIGHTS is a .npy, .npz (one array), .txt or .csv file, or a named kernel:
  gaussian:sigma=S[,truncate=T]  box:size=N  sobel:axis=A  laplace
"""


def _filter_command(operation: str) -> click.Command:
    @click.argument("input", metavar="INPUT")
    @click.argument("weights", metavar="WEIGHTS")
    @output_option("INPUT.<op>.zarr beside it")
    @click.option(
        "--mode",
        type=click.Choice(list(MODES)),
        default="reflect",
        show_default=True,
        help="How the input extends past its edges (scipy.ndimage).",
    )
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
    @click.option("--dtype", help="Output dtype (e.g. float32, uint16) [default: float].")
    @options(
        write_options("inputs, weights and parameters"),
        store_options(),
        pyramid_options(),
        cluster_options(rmm=True),
        quiet_option(),
    )
    def command(
        input: str,
        weights: str,
        output: str | None,
        mode: str,
        cval: float,
        origin: str,
        axes: str | None,
        method: str | None,
        engine: str | None,
        dtype: str | None,
        overwrite: bool,
        resume: bool,
        level: int | None,
        storage_option: tuple[str, ...],
        pyramid: int | None,
        pyramid_method: str,
        cluster_spec: str | None,
        workers: int | None,
        threads_per_worker: int | None,
        rmm_pool_size: str | None,
        quiet: bool,
    ) -> None:
        interruptible(
            _filter_job,
            operation,
            input,
            weights,
            output,
            mode,
            cval,
            origin,
            axes,
            method,
            engine,
            dtype,
            overwrite,
            resume,
            cluster_spec,
            workers,
            threads_per_worker,
            rmm_pool_size,
            quiet,
            level,
            storage_option,
            pyramid,
            pyramid_method,
        )

    command.__doc__ = (
        f"{operation.capitalize()} INPUT (a Zarr array, v2 or v3, or a path inside a group; an "
        "OME-Zarr image; a TIFF or OME-TIFF; local or an s3://, gs://... URL) with WEIGHTS, "
        f"chunk by chunk, as scipy.ndimage.{operation} does, and write a Zarr array (an "
        f"OME-Zarr image for an image input).\n{_EXAMPLES.format(op=operation)}"
    )
    return click.command(operation)(command)


convolve_command = _filter_command("convolve")
correlate_command = _filter_command("correlate")
