"""``distconv bench convolve|matmul|multiply``: time engines against the floor and the references.

Every check (one-line errors, exit 2) comes before anything is generated or written.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from distconv import kernels
from distconv.cli._common import cluster_options, quiet_option
from distconv.errors import DistconvError

_OPS = {
    "convolve": ("correlate_direct", "correlate_fft", "correlate_separable"),
    "matmul": ("matmul",),
    "multiply": ("multiply",),
}
_DEFAULT_ENGINES = {
    "convolve": "scipy,numba,tensorflow",
    "matmul": "scipy,tensorflow",
    "multiply": "scipy,numba,tensorflow",
}


def check_engines(benchmark: str, text: str | None) -> list[str]:
    """The engines to time: named ones must be installed, usable and able to do ``benchmark``.

    Without ``--engines``, every installed engine that can (GPU engines only with a device).
    """
    from distconv.clusters.resources import gpu_count

    if text is None:
        found = [e for e in _DEFAULT_ENGINES[benchmark].split(",") if kernels.is_installed(e)]
        if gpu_count():
            found += [
                e
                for e in kernels.GPU_ENGINES
                if kernels.is_installed(e)
                and any(op in kernels.ENGINES[e].ops for op in _OPS[benchmark])
            ]
        return found
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise DistconvError("--engines is empty; name at least one engine")
    for name in names:
        if name == "auto":  # what distconv picks by itself, per chunk and method
            continue
        if name not in kernels.ENGINES:
            raise DistconvError(
                f"unknown engine {name!r}; choose from: auto, {', '.join(kernels.engine_names())}"
            )
        if not kernels.is_installed(name):
            raise DistconvError(
                f"engine {name!r} is not installed here ({kernels.install_hint(name)})"
            )
        if not any(op in kernels.ENGINES[name].ops for op in _OPS[benchmark]):
            raise DistconvError(f"engine {name!r} cannot {benchmark}")
        if kernels.is_gpu_engine(name) and not gpu_count():
            raise DistconvError(f"engine {name!r} needs a CUDA device and none is visible")
    return list(dict.fromkeys(names))


def _positive_ints(text: str, option: str) -> list[int]:
    """``"3,9,31"`` → ``[3, 9, 31]``; ``option`` names the option in the error."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DistconvError(
            f"{option} must be integers separated by commas, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise DistconvError(f"{option} must be positive integers, got {text!r}")
    return values


def _run(
    benchmark: str,
    *,
    engines: str | None,
    no_references: bool,
    output_dir: str,
    cluster_spec: str | None,
    quiet: bool,
    kernels_text: str = "",
    chunks_text: str | None = None,
    **settings: Any,
) -> None:
    """Check every option, run the benchmark, write and print its results.

    ``settings`` go to :func:`distconv.bench.run` as they are: ``size``, ``chunk``, ``repeats``,
    ``workdir``, ``workers``, ``threads_per_worker`` and, for convolve, ``max_seconds``,
    ``ndim`` and ``dtype``; ``chunks_text`` (``--chunks``) goes as ``chunks``.
    """
    import os

    from distconv.clusters import parse_spec

    size, chunk, workdir = settings["size"], settings["chunk"], settings["workdir"]
    # Every check before any data is generated or any file written.
    engine_list = check_engines(benchmark, engines)
    if not engine_list:
        raise DistconvError(f"no engine installed here can {benchmark}")
    sizes = (
        _positive_ints(kernels_text, "--kernel-sizes/--kernels") if benchmark == "convolve" else []
    )
    if sizes and max(sizes) > size:
        raise DistconvError(f"kernel {max(sizes)} is larger than the image ({size})")
    chunk_list = _positive_ints(chunks_text, "--chunks") if chunks_text else None
    for side in chunk_list or ([chunk] if chunk is not None else []):
        if sizes and side < max(sizes) // 2:
            raise DistconvError(f"chunk {side} is thinner than the halo of a {max(sizes)} kernel")
    import numpy as np

    dtype = settings.get("dtype", "float32")
    try:
        if np.dtype(dtype).kind not in "iuf":
            raise TypeError
    except TypeError:
        raise DistconvError(f"--dtype must be an integer or float type, got {dtype!r}") from None
    parse_spec(cluster_spec)
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:  # the chart, written at the end
        raise DistconvError(
            "distconv bench draws its chart with matplotlib, which is not "
            "installed: pip install 'distconv[bench]'"
        )
    if workdir is not None and not os.path.isdir(workdir):
        raise DistconvError(f"--workdir {workdir}: no such directory")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise DistconvError(f"--output-dir {output_dir} exists and is not a directory")

    from distconv import bench

    result = bench.run(
        benchmark,
        engines=engine_list,
        kernels=sizes,
        chunks=chunk_list,
        cluster=cluster_spec or "local",
        references=not no_references,
        log=None if quiet else (lambda line: click.echo(line, err=True)),
        **settings,
    )
    result.setup["command"] = " ".join(["distconv", "bench", benchmark, *sys.argv[3:]])
    json_path, png_path = bench.write_outputs(result, output_dir)
    bench.print_table(result)
    click.echo(f"wrote {json_path} and {png_path}")


def _count_option(name: str, minimum: int, default: int | None, help: str) -> Callable:
    """An integer option of at least ``minimum``; ``--help`` shows its default, if any."""
    return click.option(
        name,
        type=click.IntRange(min=minimum),
        default=default,
        show_default=default is not None,
        help=help,
    )


def _bench_command(benchmark: str) -> click.Command:
    options = [
        _count_option("--size", 8, 8192, "Side of the square float32 input(s)."),
        click.option(
            "--engines",
            default=None,
            help=f"Comma list [default: installed of {_DEFAULT_ENGINES[benchmark]}].",
        ),
        _count_option(
            "--chunk", 4, None, "Zarr chunk side [default: 2048 convolve, 1024 matmul/multiply]."
        ),
        _count_option(
            "--repeats", 1, 3, "Timed runs per contender after one warm-up (median reported)."
        ),
        click.option(
            "--no-references",
            is_flag=True,
            help="Skip dask-image / dask.array / in-memory SciPy and NumPy.",
        ),
        click.option(
            "--output-dir",
            default="distconv-bench",
            show_default=True,
            help=f"Where bench-{benchmark}.json and bench-{benchmark}.png go.",
        ),
        click.option(
            "--workdir",
            default=None,
            help="Scratch directory for the generated Zarr data [default: temp].",
        ),
        cluster_options(),
        quiet_option("No per-run lines while timing."),
    ]
    if benchmark == "convolve":
        options += [
            click.option(
                "--kernel-sizes",
                "--kernels",
                "kernels_text",
                default="3,9,31,127",
                show_default=True,
                help="Sides of the square weights, comma separated.",
            ),
            click.option(
                "--chunks",
                "chunks_text",
                default=None,
                help="Chunk sides to store the same data in, one after the other, e.g. "
                "256,512,1024,2048 (64,128 for --ndim 3) [default: --chunk].",
            ),
            click.option(
                "--ndim",
                type=click.IntRange(2, 3),
                default=2,
                show_default=True,
                help="2: a size² image; 3: a size³ volume with cubic kernels.",
            ),
            click.option(
                "--dtype",
                default="float32",
                show_default=True,
                help="Stored dtype of the input (e.g. uint16); distconv writes float32.",
            ),
            click.option(
                "--max-seconds",
                type=click.FloatRange(min=0),
                default=30.0,
                show_default=True,
                help="List a cell as skipped when its estimated time is longer.",
            ),
        ]

    def command(**kwargs) -> None:
        _run(benchmark, **kwargs)

    for option in reversed(options):
        command = option(command)
    command.__doc__ = _DOCS[benchmark]
    return click.command(benchmark)(command)


_DOCS = {
    "convolve": """Time Zarr → Zarr convolution per engine and kernel size.

    \b
    Random seeded size² (--ndim 3: size³) data is written to Zarr in each of --chunks; per
    chunking the copies run first (the best copy: large tiles written into the stored chunks,
    the floor; dask's from_zarr → to_zarr; distconv's identity pass), then per kernel distconv
    with each engine, dask-image on the stored chunks and in-memory SciPy, in turn (warm-up,
    median of --repeats). Prints seconds, Mpx/s, × best copy, × reference; writes JSON and a
    PNG chart.

    \b
    Examples:
      distconv bench convolve --size 8192 --kernel-sizes 3,9,31,127 --engines scipy,numba,tensorflow
      distconv bench convolve --size 16384 --chunks 256,512,1024,2048 --kernel-sizes 5
      distconv bench convolve --ndim 3 --size 512 --chunks 64,128 --dtype uint16 --kernel-sizes 5
      distconv bench convolve --size 1024 --kernel-sizes 3,31 --repeats 1 --output-dir /tmp/b
    """,
    "matmul": """Time Zarr → Zarr matmul per engine vs in-memory BLAS and dask.array.

    \b
    Examples:
      distconv bench matmul --size 8192 --engines scipy,tensorflow
    """,
    "multiply": """Time Zarr → Zarr element-wise multiply per engine vs the copy floor and dask.

    \b
    Examples:
      distconv bench multiply --size 8192 --engines scipy,numba
    """,
}


@click.group("bench")
def bench_group() -> None:
    """Benchmark engines on this machine: convolve, matmul, multiply, apply (table, JSON, PNG)."""


for _name in _DEFAULT_ENGINES:
    bench_group.add_command(_bench_command(_name))


@click.command("apply")
@_count_option("--size", 16, 2048, "Side of the square float32 input image.")
@_count_option("--chunk", 8, 256, "Zarr chunk side of the stored image.")
@click.option(
    "--repeats",
    "--repeat",
    "repeats",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Timed runs per contender after one warm-up (median reported).",
)
@click.option(
    "--no-memory",
    is_flag=True,
    help="Skip the peak-memory runs (a child process each, and one at twice the side).",
)
@click.option(
    "--output-dir",
    default="distconv-bench",
    show_default=True,
    help="Where bench-apply.json and bench-apply.png go.",
)
@click.option(
    "--workdir", default=None, help="Scratch directory for the Zarr data and model [default: temp]."
)
@cluster_options()
@quiet_option("No per-run lines while timing.")
def apply_bench(
    size: int,
    chunk: int,
    repeats: int,
    no_memory: bool,
    output_dir: str,
    workdir: str | None,
    cluster_spec: str | None,
    workers: int | None,
    threads_per_worker: int | None,
    quiet: bool,
) -> None:
    """Time distconv apply (a Keras U-Net, Zarr → Zarr) vs whole-image predict and map_overlap.

    \b
    A seeded random size² float32 image in chunk² Zarr chunks and a small U-Net (stride 4, 1
    channel in, 2 out, saved as .keras): the model's own predict on the whole image in memory
    (the floor; the Zarr read is not timed), dc.save(dc.apply(model, store)) Zarr → Zarr, and
    dask.array overlap + predict per chunk (distconv's halo) → to_zarr (the reference), in
    turn (warm-up, median of --repeats). Each output's max relative difference to whole-image
    predict, and each one's peak memory in a child process (distconv apply also at twice the
    side). Prints the table; writes JSON and a PNG chart.

    \b
    Examples:
      distconv bench apply                        # 2048² in 256² chunks, threaded scheduler
      distconv bench apply --size 4096 --chunk 512 --repeats 2
      distconv bench apply --size 128 --chunk 64 --repeats 1 --output-dir /tmp/b
    """
    import importlib.util
    import os

    from distconv.clusters import parse_spec

    if chunk > size:
        raise DistconvError(f"--chunk {chunk} is larger than the image ({size})")
    if size % 4 or chunk % 4:
        raise DistconvError("--size and --chunk must be multiples of 4 (the U-Net's stride)")
    parse_spec(cluster_spec)
    for module, extra in (("tensorflow", "tensorflow"), ("matplotlib", "bench")):
        if importlib.util.find_spec(module) is None:
            raise DistconvError(
                f"distconv bench apply needs {module}, which is not installed: "
                f"pip install 'distconv[{extra}]'"
            )
    if workdir is not None and not os.path.isdir(workdir):
        raise DistconvError(f"--workdir {workdir}: no such directory")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise DistconvError(f"--output-dir {output_dir} exists and is not a directory")

    from distconv import bench
    from distconv.bench import apply as apply_module

    result = apply_module.run(
        size,
        chunk,
        repeats=repeats,
        cluster=cluster_spec or "threads",
        workers=workers,
        threads_per_worker=threads_per_worker,
        workdir=workdir,
        memory=not no_memory,
        log=None if quiet else (lambda line: click.echo(line, err=True)),
    )
    result.setup["command"] = " ".join(["distconv", "bench", "apply", *sys.argv[3:]])
    json_path, png_path = bench.write_outputs(result, output_dir)
    bench.print_table(result)
    click.echo(f"wrote {json_path} and {png_path}")


bench_group.add_command(apply_bench)
