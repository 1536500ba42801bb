"""``distconv matmul`` and ``distconv multiply``: parse, call the public API, report.

Same conventions as the other commands (:mod:`distconv.cli._common`): ``-o`` defaulting to a
store beside the first input, nothing written without ``--overwrite`` when the output exists,
and the output path checked before any cluster starts.
"""

from __future__ import annotations

import os
from typing import Any

import click

from distconv.cli._common import (
    JobOptions,
    default_output,
    engine_option,
    job_options,
    options,
    output_option,
    run_job,
)
from distconv.cli._summary import summary_line

# The options of every command that writes a store, in the order --help lists them.
_common_options = options(
    output_option("A.<op>.zarr beside A"),
    engine_option("block"),
    job_options("inputs and parameters"),
)


@click.command("matmul")
@click.argument("a", metavar="A")
@click.argument("b", metavar="B")
@_common_options
@click.option(
    "--memory-budget",
    default=None,
    help="Memory one task may use, e.g. 2GiB [default: half a worker's memory per thread].",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the plan (blocks, tasks, bytes, peak memory, FLOPs); write nothing.",
)
def matmul_command(**params: Any) -> None:
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
    run_job(_matmul_job, **params)


def _matmul_job(
    job: JobOptions,
    a: str,
    b: str,
    output: str | None,
    engine: str | None,
    memory_budget: str | None,
    dry_run: bool,
) -> None:
    import distconv as dc
    from distconv.ops.matmul import plan_for
    from distconv.plan.matmul import matmul_result_shape
    from distconv.provenance import source_paths

    x, y = job.open(a), job.open(b)
    matmul_result_shape(x.shape, y.shape)  # NumPy's error before any cluster starts
    output = output or default_output(a, "matmul")
    if not dry_run:
        job.check_output(output, source_paths(x) + source_paths(y))
    work = (x, y, _matmul_result_bytes(x, y))
    with job.cluster(quiet=job.quiet or dry_run, work=work):
        if dry_run:  # planned where it would run: the workers' memory sets the budget
            click.echo(plan_for(x, y, engine=engine, memory_budget=memory_budget).describe())
            return
        product = dc.matmul(x, y, engine=engine, memory_budget=memory_budget)
        job.save(product, output, "matmul")
        # The blocks the plan computes (the result is rechunked to the stored chunks).
        blocks = plan_for(x, y, engine=engine, memory_budget=memory_budget).output_blocks
    if not job.quiet:
        flops = 2 * int(product.size) * x.shape[-1]  # one multiply-add per k per element
        step = dc.info(output, storage_options=job.storage_options)["provenance"]["steps"][-1]
        click.echo(
            summary_line(
                product.shape,
                product.dtype,
                f"engine {step['engine']}, {step['method']}",
                lambda report: f"{report.rate(flops) / 1e9:.1f} GFLOP/s",
                tiles=blocks,
            )
        )


@click.command("multiply")
@click.argument("a", metavar="A")
@click.argument("b", metavar="B")
@_common_options
def multiply_command(**params: Any) -> None:
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
    run_job(_multiply_job, **params)


def _multiply_job(job: JobOptions, a: str, b: str, output: str | None, engine: str | None) -> None:
    import distconv as dc
    from distconv.provenance import source_paths

    x = job.open(a)
    y = _number(b)
    if y is None:
        y = job.open(b)
    product = dc.multiply(x, y, engine=engine)  # NumPy's broadcasting error, before a cluster
    output = output or default_output(a, "multiply")
    work = (x, y, product) if hasattr(y, "nbytes") else (x, product)
    job.write(product, output, "multiply", source_paths(product), work=work)
    if not job.quiet:
        click.echo(
            summary_line(
                product.shape,
                product.dtype,
                "",
                lambda report: f"{report.rate(product.nbytes) / 2**20:.0f} MiB/s written",
            )
        )


def _matmul_result_bytes(x, y) -> int:
    """Bytes of ``x @ y`` (shape from NumPy's rule, dtype from NumPy's promotion)."""
    import numpy as np

    from distconv.plan.matmul import matmul_result_shape

    shape = matmul_result_shape(x.shape, y.shape)
    return int(np.prod(shape, dtype=np.int64)) * np.result_type(x.dtype, y.dtype).itemsize


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
