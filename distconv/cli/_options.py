"""The options ``distconv`` commands share (click decorators) and how some are read back."""

from __future__ import annotations

from collections.abc import Callable

import click

from distconv import kernels
from distconv.clusters import SPEC_FORMS

CLUSTER_HELP = (
    f"Where the work runs: {SPEC_FORMS} [default: config, auto: threads in this process "
    f"for jobs under 1 GiB of input and output, else local]."
)


def options(*decorators: Callable) -> Callable:
    """Apply click option decorators in the order given (the order ``--help`` lists them)."""

    def apply(command: Callable) -> Callable:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


def output_option(default: str) -> Callable:
    """``-o/--output``; ``default`` describes the store written without it."""
    return click.option("-o", "--output", help=f"Output Zarr path [default: {default}].")


def engine_option(unit: str = "chunk") -> Callable:
    """``--engine``: auto or any engine distconv knows (installed or not: the error says how)."""
    return click.option(
        "--engine",
        type=click.Choice(["auto", *kernels.engine_names()]),
        default=None,
        help=f"Engine computing each {unit} [default: config, auto].",
    )


def mode_option(help: str) -> Callable:
    """``--mode``: how the input extends past its edges (scipy.ndimage's modes)."""
    from distconv.plan import MODES

    return click.option(
        "--mode", type=click.Choice(list(MODES)), default="reflect", show_default=True, help=help
    )


def write_options(must_match: str) -> Callable:
    """``--overwrite`` and ``--resume``; ``must_match`` names what a resumed run must repeat."""
    return options(
        click.option("--overwrite", is_flag=True, help="Replace an existing output store."),
        click.option(
            "--resume",
            is_flag=True,
            help="Finish an interrupted run into the same output: only chunks not yet "
            f"written are computed ({must_match} must match).",
        ),
    )


def layout_options() -> Callable:
    """``--chunks`` and ``--shards``: the output's stored layout (default: the input's)."""
    return options(
        click.option(
            "--chunks",
            "out_chunks",
            default=None,
            help="Output chunk shape, e.g. 512,512 or 512 for every axis "
            "[default: the input's stored chunks].",
        ),
        click.option(
            "--shards",
            "out_shards",
            default=None,
            help="Output shard shape (Zarr v3; whole multiples of the chunks), e.g. 4096,4096, "
            "or 'none' [default: the input's shards, if any].",
        ),
    )


def shards_argument(text: str | None):
    """``--shards`` for :func:`distconv.save`: None (as the input), False ('none'), or sizes."""
    if text is not None and text.strip().lower() in ("none", "no", "false", "0"):
        return False
    return text


def output_text(output: str, layout, shape) -> str:
    """The ``--dry-run`` line about the output: its chunks, shards and writers."""
    from distconv.save.layout import count_units

    units = count_units(shape, layout)
    chunks = "×".join(map(str, layout.chunks))
    shards = f", shards {'×'.join(map(str, layout.shards))}" if layout.shards else ""
    return (
        f"  output:            {output}: chunks {chunks}{shards}; {units} "
        f"{layout.unit_name}(s), each written whole by exactly one task"
    )


def cluster_options(*, rmm: bool = False) -> Callable:
    """``--cluster`` (every form of :data:`distconv.clusters.SPEC_FORMS`) and its sizing."""
    decorators = [
        click.option("--cluster", "cluster_spec", default=None, help=CLUSTER_HELP),
        click.option(
            "--workers", type=click.IntRange(min=1), help="Worker processes (local, cuda)."
        ),
        click.option(
            "--threads-per-worker",
            type=click.IntRange(min=1),
            help="Threads per worker (local, cuda).",
        ),
    ]
    if rmm:
        decorators.append(
            click.option(
                "--rmm-pool-size",
                default=None,
                help="RMM pool per GPU worker (--cluster cuda), e.g. 24GB.",
            )
        )
    return options(*decorators)


def store_options() -> Callable:
    """``--level`` (of an OME-Zarr image or a pyramidal TIFF) and ``--storage-option``."""
    return options(
        click.option(
            "--level",
            type=click.IntRange(min=0),
            default=None,
            help="Level of an OME-Zarr image or pyramidal TIFF to read [default: 0, the "
            "highest resolution].",
        ),
        click.option(
            "--storage-option",
            "storage_option",
            multiple=True,
            metavar="KEY=VALUE",
            help="fsspec option for s3://, gs://... URLs, e.g. endpoint_url=http://host:9000 "
            "(repeatable). Credentials come from the environment or profiles.",
        ),
    )


def pyramid_options() -> Callable:
    """``--pyramid [N]``, ``--pyramid-method`` and ``--pyramid-axes``: multiscale levels written
    in the same pass."""
    return options(
        click.option(
            "--pyramid",
            metavar="[N]",
            type=click.IntRange(min=2),
            is_flag=False,
            flag_value=4,
            default=None,
            help="Write an OME-Zarr image with N levels (4 without N), each downsampled 2x "
            "from the one above in the same pass.",
        ),
        click.option(
            "--pyramid-method",
            type=click.Choice(["mean", "nearest"]),
            default="mean",
            show_default=True,
            help="Downsampling: mean (images) or nearest (labels).",
        ),
        click.option(
            "--pyramid-axes",
            metavar="NAMES",
            default=None,
            callback=lambda _ctx, _param, text: _comma_names(text),
            help="Axes halved per level, by name, e.g. z,y,x [default: the space axes but z].",
        ),
    )


def _comma_names(text: str | None) -> tuple[str, ...] | None:
    """``z,y,x`` as ``("z", "y", "x")`` (None stays None)."""
    return None if text is None else tuple(n.strip() for n in text.split(",") if n.strip())


def quiet_option(help: str = "No progress bar, links or summary.") -> Callable:
    """``-q/--quiet``."""
    return click.option("-q", "--quiet", is_flag=True, help=help)


def job_options(must_match: str, *, rmm: bool = False) -> Callable:
    """What every command that writes a store ends with: :func:`write_options`,
    :func:`layout_options`, :func:`store_options`, :func:`pyramid_options`,
    :func:`cluster_options` and :func:`quiet_option` (read back as :class:`JobOptions`)."""
    return options(
        write_options(must_match),
        layout_options(),
        store_options(),
        pyramid_options(),
        cluster_options(rmm=rmm),
        quiet_option(),
    )
