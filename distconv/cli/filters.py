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
    layout_options,
    options,
    output_option,
    output_text,
    quiet_option,
    save_resumable,
    shards_argument,
    write_options,
)
from distconv.errors import DistconvError
from distconv.plan import METHODS, MODES, check_output_dtype, check_weights_fit


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
    out_chunks=None,
    out_shards=None,
    dry_run=False,
) -> None:
    import distconv as dc
    from distconv.clusters import parse_spec
    from distconv.io import check_output_path, planned_layout
    from distconv.provenance import source_paths

    parse_spec(cluster_spec)  # a bad spec fails before any work
    x = dc.open(input)
    axes_t = _int_list(axes, "--axes")
    origins = _int_list(origin, "--origin")
    origin_arg: Any = origins[0] if origins and len(origins) == 1 else origins
    w = dc.load_weights(weights, ndim=len(axes_t) if axes_t else x.ndim)
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
    shards = shards_argument(out_shards)
    layout = planned_layout(y, out_chunks, shards)  # a bad layout fails before any cluster
    if not dry_run:
        check_output_path(output, source_paths(y), overwrite, resume)  # before a cluster starts

    with command_cluster(
        cluster_spec, workers, threads_per_worker, quiet or dry_run, rmm_pool_size
    ):
        if dry_run:  # planned where it would run: the workers' threads and memory size tiles
            plan = dc.plan_convolve if operation == "convolve" else dc.plan_correlate
            described = plan(
                x,
                w,
                mode=mode,
                cval=cval,
                origin=origin_arg,
                axes=axes_t,
                method=method,
                engine=engine,
                dtype=dtype,
            ).describe()
            click.echo(f"{described}\n{output_text(output, layout, y.shape)}")
            return
        written, seconds = save_resumable(
            y,
            output,
            operation,
            overwrite=overwrite,
            resume=resume,
            quiet=quiet,
            chunks=out_chunks,
            shards=shards,
        )
    if not quiet:
        record = written.attrs["distconv"]["steps"][-1]
        pixels = float(x.size)
        click.echo(
            f"wrote {output}: {'×'.join(map(str, y.shape))} {y.dtype}, "
            f"{written.nchunks} chunks in {y.npartitions} tiles, method {record['method']}, "
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
    @click.option("--axes", help="Input axes the kernel filters, e.g. 1,2.")
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
        layout_options(),
        click.option(
            "--dry-run",
            is_flag=True,
            help="Print the plan (tiles, tasks, bytes decoded, halo, peak memory per task, "
            "method per tile, output chunks); write nothing.",
        ),
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
        out_chunks: str | None,
        out_shards: str | None,
        dry_run: bool,
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
            out_chunks,
            out_shards,
            dry_run,
        )

    command.__doc__ = (
        f"{operation.capitalize()} INPUT (a Zarr array, v2 or v3, or a path inside a group) "
        f"with WEIGHTS, chunk by chunk, as scipy.ndimage.{operation} does, and write a Zarr "
        f"array.\n{_EXAMPLES.format(op=operation)}"
    )
    return click.command(operation)(command)


convolve_command = _filter_command("convolve")
correlate_command = _filter_command("correlate")
