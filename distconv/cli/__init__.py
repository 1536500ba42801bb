"""The ``distconv`` command: parse arguments, call the public API, report. Nothing else lives here.

Every user error is one line on stderr and exit code 2 (``--debug`` shows the traceback);
Ctrl-C exits 130.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sys
import threading
import time
from typing import Any, Sequence

import click

from distconv import kernels
from distconv.errors import DistconvError
from distconv.plan import METHODS, MODES, check_output_dtype, check_weights_fit

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def _int_list(value: str | None, name: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise DistconvError(f"{name} must be integers separated by commas, got {value!r}") \
            from None


def default_output(input_path: str, operation: str) -> str:
    """``big.zarr`` → ``big.convolved.zarr`` beside it; ``big.zarr/raw/0`` → ``big.raw-0...``."""
    path = os.path.normpath(input_path)
    parts = path.split(os.sep)
    for index, part in enumerate(parts):
        if part.endswith(".zarr"):
            stem = part[: -len(".zarr")]
            inner = "-".join(parts[index + 1:])
            name = f"{stem}.{inner}" if inner else stem
            return os.path.join(os.sep.join(parts[:index]) or "", f"{name}.{operation}.zarr")
    stem = os.path.splitext(path)[0]
    return f"{stem}.{operation}.zarr"


class _Context:
    debug = False
    # Set while a job writes its output: the command that finishes it after an interruption.
    resume_command: str | None = None
    argv: Sequence[str] = ()


@contextlib.contextmanager
def _workers_ignore_ctrl_c():
    """Start worker processes with SIGINT ignored (the disposition survives exec).

    A terminal's Ctrl-C reaches every process of the foreground group: workers would die
    mid-task with tracebacks of their own. Ignoring it there lets this process cancel the
    tasks and close the cluster in order. A Ctrl-C during these seconds of start-up is lost.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def resume_command(argv: Sequence[str]) -> str:
    """The command line that finishes an interrupted run: the same one, with --resume.

    ``--overwrite`` is dropped (it would start again); ``--resume`` is added once.
    """
    args = [a for a in argv if a not in ("--overwrite", "--resume")]
    return shlex.join(["distconv", *args, "--resume"])


def _run_filter(operation: str, input: str, weights: str, output: str | None, mode: str,
                cval: float, origin: str, axes: str | None, method: str, engine: str,
                dtype: str | None, overwrite: bool, resume: bool, cluster_spec: str | None,
                workers: int | None, threads_per_worker: int | None, quiet: bool,
                rmm_pool_size: str | None = None) -> None:
    try:
        _filter_job(operation, input, weights, output, mode, cval, origin, axes, method, engine,
                    dtype, overwrite, resume, cluster_spec, workers, threads_per_worker,
                    rmm_pool_size, quiet)
    except KeyboardInterrupt:
        # Raised past click as itself, click would print a blank line and turn it into Abort.
        raise _Interrupted() from None


class _Interrupted(Exception):
    """Ctrl-C inside a command (reported by :func:`main`, exit 130)."""


def _filter_job(operation, input, weights, output, mode, cval, origin, axes, method, engine,
                dtype, overwrite, resume, cluster_spec, workers, threads_per_worker,
                rmm_pool_size, quiet) -> None:
    import distconv as dc
    from distconv.clusters import cluster, parse_spec
    from distconv.io import check_output_path, source_paths

    parse_spec(cluster_spec)  # a bad spec fails before any work
    x = dc.open(input)
    axes_t = _int_list(axes, "--axes")
    origins = _int_list(origin, "--origin")
    origin_arg: Any = origins[0] if origins and len(origins) == 1 else origins
    w = dc.load_weights(weights, ndim=len(axes_t) if axes_t else x.ndim)
    check_output_dtype(dtype)
    function = dc.convolve if operation == "convolve" else dc.correlate
    y = function(x, w, mode=mode, cval=cval, origin=origin_arg, axes=axes_t, method=method,
                 engine=engine, dtype=dtype)
    check_weights_fit(w.shape, x.shape, axes_t)  # the API accepts these, as scipy.ndimage does
    output = output or default_output(input, "convolved" if operation == "convolve"
                                      else "correlated")
    check_output_path(output, source_paths(y), overwrite, resume)  # before any cluster starts

    with contextlib.ExitStack() as stack:
        with _workers_ignore_ctrl_c():
            stack.enter_context(cluster(cluster_spec, workers=workers,
                                        threads_per_worker=threads_per_worker,
                                        rmm_pool_size=rmm_pool_size, quiet=quiet))
        written, seconds = save_resumable(y, output, operation, overwrite=overwrite,
                                          resume=resume, quiet=quiet)
    if not quiet:
        record = written.attrs["distconv"]["steps"][-1]
        pixels = float(x.size)
        click.echo(
            f"wrote {output}: {'×'.join(map(str, y.shape))} {y.dtype}, "
            f"{y.npartitions} chunks, method {record['method']}, "
            f"engine {record['engine']}; {seconds:.2f} s, {pixels / seconds / 1e6:.1f} Mpx/s, "
            f"{x.nbytes / seconds / 2**20:.0f} MiB/s read"
        )



def save_resumable(y, output: str, operation: str, *, overwrite: bool, resume: bool,
                   quiet: bool):
    """``dc.save`` for a command: the command line goes into the provenance, and while the job
    runs an interruption's message names the exact ``--resume`` command.

    Returns
    -------
    (zarr.Array, float)
        The written array and the seconds the save took.
    """
    import distconv as dc

    argv = list(_Context.argv)
    argv = argv[argv.index(operation):] if operation in argv else [operation]
    start = time.perf_counter()
    _Context.resume_command = resume_command(argv)  # read by main() on Ctrl-C or failure
    written = dc.save(y, output, overwrite=overwrite, resume=resume, progress=not quiet,
                      description=operation,
                      attributes={"command": shlex.join(["distconv", *argv])})
    _Context.resume_command = None
    seconds = time.perf_counter() - start
    produced = written.attrs["distconv"]
    if not quiet and produced.get("resumed"):
        already = produced["resumed"][-1]["chunks_already_written"]
        click.echo(f"resumed {output}: {already} of {y.npartitions} chunks were already "
                   f"written, computed the other {y.npartitions - already}")
    return written, seconds

_EXAMPLES = """
\b
Examples:
  distconv {op} big.zarr kernel.npy
  distconv {op} big.zarr kernel.npy -o out.zarr --mode mirror --origin 1 --method fft
  distconv {op} big.zarr/raw/0 gaussian:sigma=4 -o smooth.zarr --axes 1,2
  distconv {op} big.zarr box:size=5 --cluster threads --quiet

\b
WEIGHTS is a .npy, .npz (one array), .txt or .csv file, or a named kernel:
  gaussian:sigma=S[,truncate=T]  box:size=N  sobel:axis=A  laplace
"""


def _filter_command(operation: str):
    @click.argument("input", metavar="INPUT")
    @click.argument("weights", metavar="WEIGHTS")
    @click.option("-o", "--output", help="Output Zarr path [default: INPUT.<op>.zarr beside it].")
    @click.option("--mode", type=click.Choice(list(MODES)), default="reflect", show_default=True,
                  help="How the input extends past its edges (scipy.ndimage).")
    @click.option("--cval", type=float, default=0.0, show_default=True,
                  help="Fill value for --mode constant.")
    @click.option("--origin", default="0", show_default=True,
                  help="Kernel origin shift: one integer or one per filtered axis (1,0).")
    @click.option("--axes", help="Input axes the kernel filters, e.g. 1,2.")
    @click.option("--method", type=click.Choice(list(METHODS)), default=None,
                  help="direct | fft | separable | auto [default: config, auto].")
    @click.option("--engine", type=click.Choice(["auto", *kernels.engine_names()]), default=None,
                  help="Engine computing each chunk [default: config, auto].")
    @click.option("--dtype", help="Output dtype (e.g. float32, uint16) [default: float].")
    @click.option("--overwrite", is_flag=True, help="Replace an existing output store.")
    @click.option("--resume", is_flag=True,
                  help="Finish an interrupted run into the same output: only chunks not yet "
                       "written are computed (inputs, weights and parameters must match).")
    @click.option("--cluster", "cluster_spec", default=None,
                  help="local (default) | threads | cuda | tcp://HOST:PORT | tls://HOST:PORT "
                  "| PATH.yaml (dask-jobqueue).")
    @click.option("--workers", type=click.IntRange(min=1), help="Worker processes (local).")
    @click.option("--threads-per-worker", type=click.IntRange(min=1),
                  help="Threads per worker (local).")
    @click.option("--rmm-pool-size", help="RMM pool per GPU worker (--cluster cuda), e.g. 24GB.")
    @click.option("-q", "--quiet", is_flag=True, help="No progress bar, links or summary.")
    def command(**kwargs):
        _run_filter(operation, **kwargs)

    command.__doc__ = (
        f"{operation.capitalize()} INPUT (a Zarr array, v2 or v3, or a path inside a group) "
        f"with WEIGHTS, chunk by chunk, as scipy.ndimage.{operation} does, and write a Zarr "
        f"array.\n{_EXAMPLES.format(op=operation)}"
    )
    return command


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
    """
    _Context.debug = debug


cli.command("convolve")(_filter_command("convolve"))
cli.command("correlate")(_filter_command("correlate"))


@cli.command("info")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info_command(path: str, as_json: bool) -> None:
    """Describe a Zarr array: shape, dtype, chunks, codecs, bytes, provenance, completeness.

    \b
    Example:
      distconv info out.zarr
    """
    import distconv as dc

    description = dc.info(path)
    if as_json:
        click.echo(json.dumps(description, indent=2, default=str))
        return
    for key in ("path", "zarr_format", "shape", "dtype", "chunks", "shards", "codecs"):
        if description[key] is not None:
            click.echo(f"{key + ':':14}{_fmt(description[key])}")
    click.echo(f"{'bytes:':14}{description['nbytes']:,} ({description['nbytes_stored']:,} stored)")
    produced = description["provenance"]
    if produced is None:
        click.echo(f"{'provenance:':14}none (not written by distconv)")
        return
    if description["complete"]:
        click.echo(f"{'status:':14}complete")
    else:
        click.echo(f"{'status:':14}partial: {description['chunks_initialized']:,} of "
                   f"{description['chunks_total']:,} chunks written")
    for step in produced.get("steps", []):
        params = ", ".join(f"{k}={v}" for k, v in step.get("parameters", {}).items())
        click.echo(f"{'operation:':14}{step.get('operation')} ({params}); method "
                   f"{step.get('method')}, engine {step.get('engine')}")
        if "weights_sha256" in step:
            click.echo(f"{'weights:':14}{step.get('weights_shape')} "
                       f"sha256 {step['weights_sha256'][:16]}…")
    for key in ("inputs", "command", "version", "created", "finished"):
        if key in produced:
            click.echo(f"{key + ':':14}{_fmt(produced[key])}")


def _fmt(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) if value and isinstance(value[0], str) else \
            "×".join(map(str, value)) if all(isinstance(v, int) for v in value) else str(value)
    return str(value)


@cli.command("engines")
def engines_command() -> None:
    """List engines: installed?, usable here?, device, version, operations.

    \b
    Example:
      distconv engines
      DASK_DISTCONV__ENGINE=numba python my_analysis.py   # choose one by config
    """
    from rich.console import Console
    from rich.table import Table

    table = Table("engine", "installed", "usable here", "device", "ops", "pip extra")
    for name, spec in kernels.ENGINES.items():
        installed = kernels.is_installed(name)
        usable, device = False, spec.device.upper()
        if installed:
            try:
                module = kernels.get_engine(name)
                check = getattr(module, "usable", None)
                usable, reason = check() if check else (True, "")
                device = getattr(module, "device_info", lambda: spec.device)()
                if not usable:
                    device = reason
            except Exception as exc:  # an engine whose import fails is reported, not fatal
                device = f"import failed: {str(exc).splitlines()[0][:60]}"
        table.add_row(name, "yes" if installed else "no", "yes" if usable else "no", device,
                      ", ".join(op.replace("correlate_", "") for op in spec.ops),
                      f"distconv[{spec.extra}]" if spec.extra else "(core)")
    Console().print(table)


def _register_linalg_commands() -> None:
    """matmul and multiply live in cli_linalg.py (their own module, same conventions)."""
    from distconv.cli.linalg import matmul_command, multiply_command

    cli.add_command(matmul_command, "matmul")
    cli.add_command(multiply_command, "multiply")


_register_linalg_commands()
__import__("distconv.cli.cluster", fromlist=["register"]).register(cli)  # distconv cluster info
cli.add_command(__import__("distconv.cli.bench", fromlist=["bench_group"]).bench_group,
                "bench")  # distconv bench


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: one-line errors, exit 2 for bad input, 130 for Ctrl-C."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    _Context.argv, _Context.resume_command = args, None
    try:
        cli.main(args=args, prog_name="distconv", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt, _Interrupted):
        _interrupted()
    except click.ClickException as exc:
        if debug:
            raise
        _fail(exc.format_message(), EXIT_USAGE)
    except DistconvError as exc:
        if debug:
            raise
        _fail(str(exc), getattr(exc, "exit_code", EXIT_USAGE))
    except Exception as exc:  # unexpected: still one line unless --debug
        if debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _fail(f"{type(exc).__name__}: {message} (rerun with --debug for the traceback)",
              EXIT_FAILED)


def _interrupted() -> None:
    """Ctrl-C: the workers' tasks were cancelled on the way out (progress.compute_blocks)."""
    if _Context.resume_command:
        _fail(f"interrupted; the output is partial, not marked complete; finish it with: "
              f"{_Context.resume_command}", EXIT_INTERRUPTED)
    _fail("interrupted; no output was marked complete", EXIT_INTERRUPTED)


def _fail(message: str, code: int) -> None:
    click.echo(f"distconv: error: {' '.join(message.split())}", err=True)
    sys.exit(code)
