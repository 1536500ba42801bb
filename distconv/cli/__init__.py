"""The ``distconv`` command: the click group, its commands and the console entry point.

Each command module defines its commands and imports only :mod:`distconv.cli._common` (shared
options, Ctrl-C and ``--resume``, one-line errors); this module adds them to the group. Every
user error is one line on stderr and exit code 2 (``--debug`` shows the traceback); Ctrl-C
exits 130.
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from distconv.cli import apply, bench, cluster, deconvolve, filters, info, linalg
from distconv.cli._common import run_command_line
from distconv.cli._summary import CommandState

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="distconv")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def cli(debug: bool) -> None:
    """Convolve, correlate, matmul and multiply Zarr arrays larger than memory on Dask.

    \b
    Quick start:
      distconv convolve big.zarr kernel.npy      # writes big.convolved.zarr
      distconv info big.convolved.zarr           # shape, chunks, provenance, complete?
      distconv engines                           # which engines run here
      distconv apply unet.keras big.zarr         # a trained model over the whole image
    """
    CommandState.debug = debug


for _command in (
    filters.convolve_command,
    filters.correlate_command,
    deconvolve.deconvolve_command,
    apply.apply_command,
    info.info_command,
    info.engines_command,
    linalg.matmul_command,
    linalg.multiply_command,
    cluster.cluster_group,
    bench.bench_group,
):
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: one-line errors, exit 2 for bad input, 130 for Ctrl-C.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after ``distconv`` (default: ``sys.argv[1:]``).
    """
    run_command_line(cli, argv)
