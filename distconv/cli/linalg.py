"""``distconv matmul`` and ``distconv multiply``: parse, call the public API, report.

Same conventions as :mod:`distconv.cli` (which registers these commands): one-line errors (exit
2), ``-o`` defaulting to a store beside the first input, nothing written without ``--overwrite``
when the output exists, and the output path checked before any cluster starts.
"""

from __future__ import annotations

import contextlib
import os

import click

from distconv import kernels

_COMMON_HELP = {
    "output": "Output Zarr path [default: A.<op>.zarr beside A].",
    "engine": "Engine computing each block [default: config, auto].",
    "overwrite": "Replace an existing output store.",
    "resume": "Finish an interrupted run into the same output: only chunks not yet written are "
              "computed (inputs and parameters must match).",
    "cluster": "local (default) | threads | tcp://HOST:PORT | tls://HOST:PORT.",
    "workers": "Worker processes (local).",
    "threads": "Threads per worker (local).",
    "quiet": "No progress bar, links or summary.",
}


def _common_options(command):
    """The options every distconv command that writes a store takes (cli.py's conventions)."""
    for option in reversed([
        click.option("-o", "--output", help=_COMMON_HELP["output"]),
        click.option("--engine", type=click.Choice(["auto", *kernels.engine_names()]),
                     default=None, help=_COMMON_HELP["engine"]),
        click.option("--overwrite", is_flag=True, help=_COMMON_HELP["overwrite"]),
        click.option("--resume", is_flag=True, help=_COMMON_HELP["resume"]),
        click.option("--cluster", "cluster_spec", default=None, help=_COMMON_HELP["cluster"]),
        click.option("--workers", type=click.IntRange(min=1), help=_COMMON_HELP["workers"]),
        click.option("--threads-per-worker", type=click.IntRange(min=1),
                     help=_COMMON_HELP["threads"]),
        click.option("-q", "--quiet", is_flag=True, help=_COMMON_HELP["quiet"]),
    ]):
        command = option(command)
    return command


@click.command("matmul")
@click.argument("a", metavar="A")
@click.argument("b", metavar="B")
@_common_options
@click.option("--memory-budget", default=None,
              help="Memory one task may use, e.g. 2GiB [default: half a worker's memory per "
                   "thread].")
@click.option("--dry-run", is_flag=True,
              help="Print the plan (blocks, tasks, bytes, peak memory, FLOPs); write nothing.")
def matmul_command(a: str, b: str, output: str | None, engine: str | None, overwrite: bool,
                   resume: bool, cluster_spec: str | None, workers: int | None,
                   threads_per_worker: int | None, quiet: bool, memory_budget: str | None,
                   dry_run: bool) -> None:
    """Matrix product A @ B of two Zarr arrays, as numpy.matmul (stacks and 1-D included).

    \b
    The contraction is planned against a per-task memory budget: the whole k axis in one panel
    when it fits (no partial sums), else k panels summed in a tree.

    \b
    Examples:
      distconv matmul a.zarr b.zarr -o c.zarr
      distconv matmul a.zarr b.zarr --dry-run                 # show the plan only
      distconv matmul a.zarr b.zarr -o c.zarr --engine tensorflow --memory-budget 2GiB
      distconv matmul stack.zarr/raw b.zarr --cluster threads --quiet
      distconv matmul a.zarr b.zarr -o c.zarr --resume        # finish an interrupted run
    """
    _interruptible(_matmul_job, a, b, output, engine, overwrite, resume, cluster_spec, workers,
                   threads_per_worker, quiet, memory_budget, dry_run)


def _matmul_job(a, b, output, engine, overwrite, resume, cluster_spec, workers,
                threads_per_worker, quiet, memory_budget, dry_run) -> None:
    import distconv as dc
    from distconv.ops.linalg import matmul_result_shape, plan_for

    x, y = dc.open(a), dc.open(b)
    matmul_result_shape(x.shape, y.shape)  # NumPy's error before any cluster starts
    output = output or _default_output(a, "matmul")
    if not dry_run:
        _check_output(output, [a, b], overwrite, resume)
    with _cluster(cluster_spec, workers, threads_per_worker, quiet or dry_run):
        if dry_run:  # planned where it would run: the workers' memory sets the budget
            click.echo(plan_for(x, y, engine=engine, memory_budget=memory_budget).describe())
            return
        product = dc.matmul(x, y, engine=engine, memory_budget=memory_budget)
        seconds = _save(product, output, overwrite, resume, quiet, "matmul")
    if not quiet:
        flops = 2 * int(product.size) * x.shape[-1]  # one multiply-add per k per element
        step = dc.info(output)["provenance"]["steps"][-1]
        click.echo(f"wrote {output}: {_shape(product.shape)} {product.dtype}, "
                   f"{product.npartitions} chunks, engine {step['engine']}, {step['method']}; "
                   f"{seconds:.2f} s, {flops / seconds / 1e9:.1f} GFLOP/s")


@click.command("multiply")
@click.argument("a", metavar="A")
@click.argument("b", metavar="B")
@_common_options
def multiply_command(a: str, b: str, output: str | None, engine: str | None, overwrite: bool,
                     resume: bool, cluster_spec: str | None, workers: int | None,
                     threads_per_worker: int | None, quiet: bool) -> None:
    """Element-wise product of a Zarr array A and a Zarr array or number B, as numpy.multiply.

    \b
    Shapes broadcast as in NumPy; a number B keeps A's dtype where NumPy would (float32 A times
    0.5 stays float32, int16 A times 3 stays int16).

    \b
    Examples:
      distconv multiply a.zarr b.zarr -o m.zarr
      distconv multiply a.zarr 0.5 -o half.zarr
      distconv multiply volume.zarr mask.zarr --cluster threads --quiet
      distconv multiply a.zarr b.zarr -o m.zarr --resume      # finish an interrupted run
    """
    _interruptible(_multiply_job, a, b, output, engine, overwrite, resume, cluster_spec, workers,
                   threads_per_worker, quiet)


def _multiply_job(a, b, output, engine, overwrite, resume, cluster_spec, workers,
                  threads_per_worker, quiet) -> None:
    import distconv as dc

    x = dc.open(a)
    y = _number(b)
    if y is None:
        y = dc.open(b)
    product = dc.multiply(x, y, engine=engine)  # NumPy's broadcasting error, before a cluster
    output = output or _default_output(a, "multiply")
    _check_output(output, [a] + ([] if isinstance(y, (int, float)) else [b]), overwrite, resume)
    with _cluster(cluster_spec, workers, threads_per_worker, quiet):
        seconds = _save(product, output, overwrite, resume, quiet, "multiply")
    if not quiet:
        click.echo(f"wrote {output}: {_shape(product.shape)} {product.dtype}, "
                   f"{product.npartitions} chunks; {seconds:.2f} s, "
                   f"{product.nbytes / seconds / 2**20:.0f} MiB/s written")


def _number(text: str) -> int | float | None:
    """``"3"`` → 3, ``"0.5"``/``"1e-3"``/``"nan"`` → float; None for anything else (a path).

    An existing path always wins, so a store called ``2`` is still a store.
    """
    if os.path.exists(text):
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            continue
    return None


def _default_output(input_path: str, operation: str) -> str:
    # Imported when called: cli.py imports this module while it is itself being imported.
    from distconv.cli import default_output

    return default_output(input_path, operation)


def _check_output(output: str, inputs: list[str], overwrite: bool, resume: bool) -> None:
    from distconv.io import check_output_path

    check_output_path(output, inputs, overwrite, resume)


def _interruptible(job, *args) -> None:
    """Run a command's job; Ctrl-C becomes cli.py's interruption (exit 130, --resume hint)."""
    from distconv.cli import _Interrupted

    try:
        job(*args)
    except KeyboardInterrupt:
        # Raised past click as itself, click would print a blank line and turn it into Abort.
        raise _Interrupted() from None


@contextlib.contextmanager
def _cluster(cluster_spec, workers, threads_per_worker, quiet):
    """The cluster, its workers started with Ctrl-C ignored as cli.py starts them."""
    from distconv.cli import _workers_ignore_ctrl_c
    from distconv.clusters import cluster

    with contextlib.ExitStack() as stack:
        with _workers_ignore_ctrl_c():
            stack.enter_context(cluster(cluster_spec, workers=workers,
                                        threads_per_worker=threads_per_worker, quiet=quiet))
        yield


def _save(product, output: str, overwrite: bool, resume: bool, quiet: bool,
          operation: str) -> float:
    """Save with provenance; while it runs, an interruption names the command that resumes."""
    from distconv.cli import save_resumable

    return save_resumable(product, output, operation, overwrite=overwrite, resume=resume,
                          quiet=quiet)[1]


def _shape(shape) -> str:
    return "×".join(map(str, shape)) if len(shape) else "scalar"

