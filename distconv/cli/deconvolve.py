"""``distconv deconvolve``: Richardson–Lucy or Wiener, parse, plan, call the public API, report.

Same conventions as the other commands (:mod:`distconv.cli._common`). The ``passes`` strategy
keeps its intermediate estimates in ``OUTPUT.scratch`` beside the output (for an ``s3://``...
output, in the working directory): kept after Ctrl-C or a failure for ``--resume``, replaced by
a new run, removed once the output is complete. Inputs and outputs take the options every
writing command has: ``--storage-option``, ``--level``, ``--chunks``/``--shards`` and
``--pyramid`` (an OME-Zarr image with levels written in the same pass).
"""

from __future__ import annotations

import os
import shutil
import time

import click

from distconv.cli._common import (
    JobOptions,
    default_output,
    engine_option,
    job_options,
    mode_option,
    output_option,
    resume_command,
    run_job,
)
from distconv.cli._summary import CommandState, summary_line
from distconv.errors import DistconvError, InputReadError

__all__ = ["deconvolve_command"]

METHODS = ("richardson-lucy", "wiener")


@click.command("deconvolve")
@click.argument("input", metavar="INPUT")
@click.argument("psf", metavar="PSF")
@output_option("INPUT.deconvolved.zarr beside it")
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default="richardson-lucy",
    show_default=True,
    help="Richardson-Lucy iterations, or one Wiener-Hunt filter.",
)
@click.option(
    "--iterations", type=int, default=None, help="Richardson-Lucy iterations (required for it)."
)
@click.option("--balance", type=float, default=None, help="Wiener regularisation weight.")
@click.option(
    "--clip/--no-clip",
    default=True,
    show_default=True,
    help="Clip the result to [-1, 1], as scikit-image does (--no-clip for data in counts).",
)
@click.option(
    "--filter-epsilon",
    type=float,
    default=None,
    help="Richardson-Lucy: the ratio is 0 where the blurred estimate is below this.",
)
@mode_option("How each blur extends the image past its edges (scipy.ndimage; constant = zeros).")
@click.option(
    "--halo",
    default="auto",
    show_default=True,
    help="exact | auto | pixels: exact results, the cheaper of exact and a smaller halo, "
    "or tiles with that halo.",
)
@engine_option("blur")
@click.option(
    "--memory-budget",
    default=None,
    help="Memory one task may use, e.g. 2GiB [default: half a worker's memory per thread].",
)
@job_options("input, PSF and parameters")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the plan (strategy, halo, tasks, memory, the smaller halo's measured "
    "difference); write nothing.",
)
def deconvolve_command(**arguments) -> None:
    """Deconvolve INPUT (a Zarr array) by the point spread function PSF, chunk by chunk, as
    scikit-image's richardson_lucy or wiener does, and write a Zarr array.

    \b
    Each Richardson-Lucy iteration widens what a pixel depends on by two PSF radii; --halo
    exact gives every pixel as if the image were in memory (tiles carrying that whole halo, or
    one pass per iteration through OUTPUT.scratch, whichever costs less); auto does too unless
    that costs over 1.5x tiles with a halo of four PSF radii (--dry-run shows the difference
    that makes, measured on your data).

    \b
    Examples:
      distconv deconvolve beads.zarr psf.npy -o restored.zarr --iterations 30 --no-clip
      distconv deconvolve stack.zarr gaussian:sigma=1,2,2 --iterations 20 --halo exact
      distconv deconvolve big.zarr psf.npy --iterations 50 --dry-run
      distconv deconvolve img.zarr gaussian:sigma=2 --method wiener --balance 0.05
      distconv deconvolve big.zarr psf.npy -o out.zarr --iterations 30 --resume
      distconv deconvolve s3://lab/stack.zarr psf.npy -o s3://lab/restored.ome.zarr \
          --iterations 30 --storage-option endpoint_url=http://minio:9000 --pyramid

    \b
    PSF is a .npy, .npz (one array), .txt or .csv file, or a named kernel such as
    gaussian:sigma=S (one sigma per axis: gaussian:sigma=1,2,2) or box:size=N.
    """
    run_job(_deconvolve_job, **arguments)


def _deconvolve_job(job: JobOptions, **a) -> None:
    import distconv as dc
    from distconv.clusters import parse_spec
    from distconv.plan.deconvolution_checks import check_iterations, check_psf

    parse_spec(job.cluster_spec)  # a bad spec fails before any work
    rl = a["method"] == "richardson-lucy"
    if rl and a["iterations"] is None:
        raise DistconvError("richardson-lucy needs --iterations N")
    if not rl and a["balance"] is None:
        raise DistconvError("wiener needs --balance B (the regularisation weight, e.g. 0.05)")
    for option, given, applies in (
        ("--iterations", a["iterations"] is not None, rl),
        ("--filter-epsilon", a["filter_epsilon"] is not None, rl),
        ("--balance", a["balance"] is not None, not rl),
    ):
        if given and not applies:
            raise DistconvError(f"{option} does not apply to --method {a['method']}")
    x = job.open(a["input"])
    psf = dc.load_weights(a["psf"], ndim=x.ndim)
    check_psf(psf, x.shape)  # before any cluster starts
    if rl:
        check_iterations(a["iterations"])
    output = a["output"] or default_output(a["input"], "deconvolved")
    scratch = scratch_path(output)
    if not a["dry_run"]:
        job.check_output(output, [a["input"]])
        _check_scratch(scratch, a["input"])
    if a["clip"] and x.dtype.kind in "iu" and not job.quiet:
        click.echo(
            "note: --clip limits the result to [-1, 1] (scikit-image's default); "
            "use --no-clip for integer data in counts",
            err=True,
        )
    quiet = job.quiet or a["dry_run"]
    with job.cluster(quiet=quiet, work=(x, x)):
        plan = _plan(x, psf, a)
        if a["dry_run"]:
            click.echo(_dry_run(x, plan))
            return
        if rl:
            _check_image(x)  # one read before anything is written
        started = time.perf_counter()
        try:
            y = _graph(x, psf, plan, scratch, job, a)
            description = (
                f"iteration {plan.iterations}/{plan.iterations}"
                if plan.strategy == "passes"
                else f"{a['method']}"
                + (f", {plan.iterations} iterations per tile" if rl else f", {plan.strategy}")
            )
            job.save(y, output, "deconvolve", description=description)
            seconds = time.perf_counter() - started
        except InputReadError:
            shutil.rmtree(scratch, ignore_errors=True)  # bad input: nothing left behind
            raise
    shutil.rmtree(scratch, ignore_errors=True)
    if not job.quiet:
        halo = "exact" if plan.exact else f"halo {max(plan.halo)}"
        what = f"{plan.iterations} iterations" if rl else f"balance {plan.balance}"
        click.echo(
            summary_line(
                y.shape,
                y.dtype,
                f"{a['method']} {what}, strategy {plan.strategy} ({halo}), "
                f"engine {','.join(plan.engines_used())}",
                seconds=seconds,  # the passes before the last one count too
                tiles=plan.layout.tasks,
            )
        )


def _plan(x, psf, a: dict):
    from distconv.ops.deconvolve import plan_for

    common = {"clip": a["clip"], "mode": a["mode"], "halo": a["halo"]}
    if a["method"] == "richardson-lucy":
        specific = {"iterations": a["iterations"], "filter_epsilon": a["filter_epsilon"]}
    else:
        specific = {"balance": a["balance"]}
    return plan_for(
        x,
        psf,
        a["method"],
        engine=a["engine"],
        memory_budget=a["memory_budget"],
        **common,
        **specific,
    )


def _graph(x, psf, plan, scratch: str, job: JobOptions, a: dict):
    """The result's graph; for passes, every pass but the last is run here, with progress."""
    from distconv.ops.deconvolve import richardson_lucy_with_plan, wiener_with_plan
    from distconv.ops.deconvolve_passes import open_scratch, run_passes

    if plan.algorithm == "wiener":
        return wiener_with_plan(x, plan, psf)
    if plan.strategy != "passes":
        return richardson_lucy_with_plan(x, plan, psf)
    if not job.resume and os.path.lexists(scratch):
        shutil.rmtree(scratch)  # a new run starts again
    store = open_scratch(scratch, plan, x)
    argv = list(CommandState.argv)
    argv = argv[argv.index("deconvolve") :] if "deconvolve" in argv else ["deconvolve"]
    CommandState.resume_command = resume_command(argv)  # Ctrl-C during the passes
    run_passes(x, plan, store, progress=not job.quiet)
    return richardson_lucy_with_plan(x, plan, psf, scratch=store)


def _check_image(x) -> None:
    """Refuse an image with negative, NaN or infinite values, naming its first such chunk.

    The tasks check their tiles too, but by then other tasks are writing the output.
    """
    import dask
    import numpy as np

    from distconv.ops.deconvolve_blocks import check_image_values

    def summary(block):
        finite = np.isfinite(block)
        lowest = block[finite].min() if finite.any() else 0
        return np.array([[finite.all(), lowest]], dtype=np.float64).reshape(
            (1,) * block.ndim + (2,)
        )

    per_chunk = x.map_blocks(
        summary, chunks=(1,) * x.ndim + (2,), new_axis=x.ndim, dtype=np.float64
    )
    (table,) = dask.compute(per_chunk)
    bad = np.argwhere((table[..., 0] == 0) | (table[..., 1] < 0))
    if len(bad):
        index = tuple(int(i) for i in bad[0])
        starts = [int(sum(c[:i])) for c, i in zip(x.chunks, index)]
        region = tuple(slice(s, s + c[i]) for s, c, i in zip(starts, x.chunks, index))
        where = "[" + ", ".join(f"{r.start}:{r.stop}" for r in region) + "]"
        check_image_values(np.asarray(x[region]), where)


def scratch_path(output: str) -> str:
    """Where the ``passes`` strategy keeps its estimates: ``OUTPUT.scratch`` beside a local
    output; for an output URL (``s3://...``), ``NAME.scratch`` in the working directory, which
    every worker must see (a local or shared file system)."""
    from distconv.stores import is_url

    if is_url(output):
        return os.path.abspath(output.rstrip("/").rsplit("/", 1)[-1] + ".scratch")
    return os.path.abspath(output) + ".scratch"


def _check_scratch(scratch: str, input: str) -> None:
    """The scratch folder is distconv's (or absent), and neither is nor holds the input."""
    from pathlib import Path

    from distconv.ops.deconvolve_passes import JOB_FILE

    target, source = Path(scratch).resolve(), Path(input).resolve()
    if target == source or target in source.parents or source in target.parents:
        raise DistconvError(f"the scratch folder {scratch} would overlap the input {input}")
    if os.path.lexists(scratch) and not (
        os.path.isdir(scratch)
        and (not os.listdir(scratch) or os.path.exists(os.path.join(scratch, JOB_FILE)))
    ):
        raise DistconvError(
            f"{scratch} exists and is not a distconv scratch folder; move it or choose "
            "another output"
        )


def _dry_run(x, plan) -> str:
    from distconv.ops.deconvolve_measure import measure_halo_difference

    lines = [plan.describe()]
    if plan.algorithm == "wiener":
        lines.append(
            "  exact:             "
            + (
                "yes: one task, circular over the whole image (as scikit-image)"
                if plan.exact
                else "no: each tile is filtered with its halo (see docs/deconvolution.md)"
            )
        )
        return "\n".join(lines)
    if plan.exact:
        lines.append("  exact:             yes: every pixel as if the whole image were in memory")
        return "\n".join(lines)
    measured = measure_halo_difference(x, plan)
    if measured["measured"]:
        lines.append(
            f"  difference:        measured on {measured['sample']} of the input against the "
            f"exact result: max {measured['max_relative']:.2g} of the largest value, mean "
            f"{measured['mean_relative']:.2g} of the mean ({measured['seconds']:.1f} s)"
        )
    else:
        lines.append(
            f"  difference:        not measured ({measured['reason']}); "
            "see docs/deconvolution.md for measured values"
        )
    return "\n".join(lines)
