"""What every ``distconv`` command shares: options, Ctrl-C and ``--resume``, one-line errors.

Every user error is one line on stderr and exit code 2 (``--debug`` shows the traceback);
Ctrl-C exits 130 and, while an output is being written, names the command that finishes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import click

from distconv.cli._options import (  # noqa: F401 - the options live there, used from here
    CLUSTER_HELP,
    cluster_options,
    engine_option,
    job_options,
    layout_options,
    mode_option,
    options,
    output_option,
    output_text,
    pyramid_options,
    quiet_option,
    shards_argument,
    store_options,
    write_options,
)
from distconv.cli._summary import CommandState, SaveReport
from distconv.errors import DistconvError, JobFailed
from distconv.labelled import is_labelled
from distconv.stores import quiet_abandoned_store_reads, redact

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


class Interrupted(Exception):
    """Ctrl-C inside a command (reported by :func:`run_command_line`, exit 130)."""


# Outputs ---------------------------------------------------------------------------------------


def default_output(input_path: str, operation: str) -> str:
    """The store a command writes without ``-o``: beside its (first) input.

    Parameters
    ----------
    input_path : str
        The input: a path (possibly inside a Zarr group), a TIFF, or a URL.
    operation : str
        The word that goes into the name (``convolved``, ``matmul``...).

    Returns
    -------
    str
        ``big.zarr`` → ``big.convolved.zarr`` beside it; ``big.zarr/raw/0`` →
        ``big.raw-0.convolved.zarr``; ``img.ome.zarr`` and ``img.ome.tif`` →
        ``img.convolved.ome.zarr``; ``s3://b/big.zarr`` → ``s3://b/big.convolved.zarr``.
    """
    from distconv.stores import is_url

    if is_url(input_path):
        head, _, rest = input_path.partition("://")
        bucket, _, key = rest.partition("/")
        inner = default_output(key.strip("/") or "input", operation).replace(os.sep, "/")
        return f"{head}://{bucket}/{inner}"
    path = os.path.normpath(input_path)
    parts = path.split(os.sep)
    for index, part in enumerate(parts):
        if part.endswith(".zarr"):
            stem = part[: -len(".zarr")]
            ome = stem.endswith(".ome")
            stem = stem[: -len(".ome")] if ome else stem
            inner = "-".join(parts[index + 1 :])
            name = f"{stem}.{inner}" if inner else stem
            suffix = "ome.zarr" if ome and not inner else "zarr"
            return os.path.join(os.sep.join(parts[:index]) or "", f"{name}.{operation}.{suffix}")
    stem, extension = os.path.splitext(path)
    if extension.lower() in (".tif", ".tiff") and stem.lower().endswith(".ome"):
        return f"{stem[: -len('.ome')]}.{operation}.ome.zarr"
    return f"{stem}.{operation}.zarr"


def resume_command(argv: Sequence[str]) -> str:
    """The command line that finishes an interrupted run: the same one, with --resume.

    ``--overwrite`` is dropped (it would start again); ``--resume`` is added once.
    """
    args = [a for a in argv if a not in ("--overwrite", "--resume")]
    return shlex.join(["distconv", *args, "--resume"])


def save_resumable(
    y,
    output: str,
    operation: str,
    *,
    overwrite: bool,
    resume: bool,
    quiet: bool,
    chunks=None,
    shards=None,
    description: str | None = None,
    **save_options: Any,
) -> tuple[Any, float]:
    """``dc.save`` for a command: the command line goes into the provenance, and while the job
    runs an interruption's message names the exact ``--resume`` command (secrets blanked;
    ``chunks`` and ``shards`` as :func:`distconv.save` takes them; ``description`` labels the
    progress bar; default: the operation).

    ``save_options`` go to :func:`distconv.save` (``storage_options``, ``pyramid``...).

    What it wrote is left in ``CommandState.saved`` (a :class:`SaveReport`) for
    :func:`summary_line`.

    Returns
    -------
    (zarr.Array, float)
        The written array and the seconds the save took.
    """
    import distconv as dc

    argv = list(CommandState.argv)
    argv = argv[argv.index(operation) :] if operation in argv else [operation]
    start = time.perf_counter()
    CommandState.resume_command = redact(resume_command(argv))  # read on Ctrl-C or failure
    written = dc.save(
        y,
        output,
        overwrite=overwrite,
        resume=resume,
        chunks=chunks,
        shards=shards,
        progress=not quiet,
        description=description or operation,
        attributes={"command": redact(shlex.join(["distconv", *argv]))},
        **save_options,
    )
    CommandState.resume_command = None
    seconds = time.perf_counter() - start
    produced = written.attrs["distconv"]
    left_out = workers_left_out(produced.get("workers"))
    if left_out and CommandState.ran_on:
        CommandState.ran_on = f"{CommandState.ran_on.split(',')[0]}, {left_out}"
    # A resumed output's last record is this run's: a new output starts a new record.
    last = produced["resumed"][-1] if resume and produced.get("resumed") else {}
    CommandState.saved = SaveReport(
        output=output,
        chunks=int(written.nchunks),
        tiles=int((y.data if is_labelled(y) else y).npartitions),  # a DataArray: its values
        seconds=seconds,
        unit=last.get("unit", "chunk"),
        units_total=int(last.get("chunks_total", 0)),
        units_already=int(last.get("chunks_already_written", 0)),
    )
    return written, seconds


def workers_left_out(record: dict[str, Any] | None) -> str | None:
    """``3 of 5 workers: 2 cannot see /data/in.zarr`` from an output's ``workers`` record
    (:mod:`distconv.save.sight`), or None when every worker probed could run the job."""
    if not record or not record.get("cannot_see"):
        return None
    blind = ", ".join(f"{n} cannot see {path}" for path, n in record["cannot_see"].items())
    return f"{record['admitted']} of {record['probed']} workers: {blind}"


# Ctrl-C ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def workers_ignore_ctrl_c() -> Iterator[None]:
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


@contextlib.contextmanager
def command_cluster(
    cluster_spec: str | None,
    workers: int | None,
    threads_per_worker: int | None,
    quiet: bool,
    rmm_pool_size: str | None = None,
    work: Any = None,
) -> Iterator[str]:
    """The cluster a command's job runs on, its workers started with Ctrl-C ignored.

    ``work`` (the job's input and output arrays, or their bytes) lets the default ``auto``
    choose threads or a local cluster. Yields the few words the summary line ends with: where
    the job ran (``threads (auto: 1.0 MiB < 1.00 GiB)``, ``local, 2 workers``).
    Worker logs stay out of the terminal unless ``--debug``.
    """
    from distconv.clusters import cluster, resolve

    parsed, choice = resolve(cluster_spec, work, sized=bool(workers or threads_per_worker))
    spec = parsed.address or parsed.path or parsed.kind
    with contextlib.ExitStack() as stack:
        with workers_ignore_ctrl_c():
            client = stack.enter_context(
                cluster(
                    spec,
                    workers=workers,
                    threads_per_worker=threads_per_worker,
                    rmm_pool_size=rmm_pool_size,
                    quiet=quiet,
                    worker_logs=CommandState.debug,
                )
            )
        # Recorded here, the one place every command's cluster starts, for summary_line.
        CommandState.ran_on = where_it_ran(spec, client, choice)
        yield CommandState.ran_on


def where_it_ran(spec: str, client: Any, choice: Any = None) -> str:
    """``threads``, ``local, 2 workers``, ``tcp://host:8786, 3 workers``, plus ``auto``'s reason."""
    words = spec
    if client is not None:
        from distconv.clusters.resources import scheduler_info

        count = len(scheduler_info(client).get("workers", {}))
        words += f", {count} worker{'s' if count != 1 else ''}"
    if choice is not None:
        words += f" (auto: {choice.reason})"
    return words


@dataclasses.dataclass(frozen=True)
class JobOptions:
    """The values of :func:`job_options`: how a command's job writes its output, where it runs."""

    overwrite: bool
    resume: bool
    cluster_spec: str | None
    workers: int | None
    threads_per_worker: int | None
    quiet: bool
    rmm_pool_size: str | None = None
    out_chunks: str | None = None
    out_shards: str | None = None
    # store_options and pyramid_options: how inputs open, how the output is saved
    level: int | None = None
    storage_option: tuple[str, ...] = ()
    pyramid: int | None = None
    pyramid_method: str = "mean"
    pyramid_axes: tuple[str, ...] | None = None  # parsed by its option

    @property
    def storage_options(self) -> dict[str, Any] | None:
        """``--storage-option KEY=VALUE`` as fsspec's options (None without any)."""
        from distconv.stores import parse_storage_options

        return parse_storage_options(self.storage_option) or None

    def open(self, path: str) -> Any:
        """``dc.open`` an input at ``--level`` with ``--storage-option``."""
        import distconv as dc

        return dc.open(path, level=self.level, storage_options=self.storage_options)

    def labels(self, path: str) -> Any:
        """The dims, coords, name and attrs of an input xarray wrote (a group of one data
        variable), for the output to keep (:func:`distconv.labelled.wrap`); else None."""
        from distconv.io import open as open_array
        from distconv.labelled import store_labels

        return store_labels(open_array, path, self.storage_options, level=self.level)

    def planned_resources(self, work: Any = None) -> Any:
        """What a job's tiles are planned for when it would run on threads or on a local
        cluster it starts (known without starting it: a dry run), else None (a running
        cluster must be asked)."""
        from distconv.clusters import resolve
        from distconv.clusters.resources import detect_resources, planned_resources

        sized = bool(self.workers or self.threads_per_worker)
        parsed, _ = resolve(self.cluster_spec, work, sized=sized)
        if parsed.kind == "threads":
            return detect_resources()
        if parsed.kind == "local":
            return planned_resources(self.workers, self.threads_per_worker)
        return None

    def cluster(
        self, quiet: bool | None = None, work: Any = None
    ) -> contextlib.AbstractContextManager[str]:
        """:func:`command_cluster` for these options (``quiet`` overrides ``--quiet``); ``work``
        (the job's input and output arrays) sizes the default ``auto``."""
        quiet = self.quiet if quiet is None else quiet
        return command_cluster(
            self.cluster_spec,
            self.workers,
            self.threads_per_worker,
            quiet,
            self.rmm_pool_size,
            work=work,
        )

    def save(
        self, y, output: str, operation: str, description: str | None = None
    ) -> tuple[Any, float]:
        """:func:`save_resumable` with these options: the written array and the seconds
        (``description`` labels the progress bar; default: the operation)."""
        names = ("overwrite", "resume", "quiet", "pyramid", "pyramid_method")
        passed = {name: getattr(self, name) for name in names}
        return save_resumable(
            y,
            output,
            operation,
            chunks=self.out_chunks,
            shards=shards_argument(self.out_shards),
            storage_options=self.storage_options,
            description=description,
            pyramid_axes=self.pyramid_axes,
            **passed,
        )

    def layout(self, y):
        """The layout ``y`` would be written with (``--chunks``, ``--shards``); a bad one fails
        here, before any cluster starts."""
        from distconv.save.layout import planned_layout

        return planned_layout(y, self.out_chunks, shards_argument(self.out_shards))

    def check_output(self, output: str, sources: Sequence[str]) -> None:
        """Refuse an ``output`` that is one of ``sources`` or in the way (before any cluster)."""
        from distconv.save.steps import check_output_path

        if self.pyramid_axes is not None and self.pyramid is None:
            raise DistconvError("--pyramid-axes needs --pyramid")

        check_output_path(
            output, sources, self.overwrite, self.resume, storage_options=self.storage_options
        )

    def write(
        self, y, output: str, operation: str, sources: Sequence[str], work: Any = None
    ) -> tuple[Any, float]:
        """:meth:`check_output` and :meth:`layout`, then :meth:`save` ``y`` on the command's
        cluster.

        ``work``: the job's input and output arrays, for ``auto`` (default: ``y`` alone).
        Where the job ran is left in ``CommandState.ran_on`` for the summary line.
        """
        self.check_output(output, sources)
        self.layout(y.data if is_labelled(y) else y)  # a DataArray: laid out as its values
        with self.cluster(work=(y,) if work is None else work):
            return self.save(y, output, operation)


def interruptible(job: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    """Run a command's job; Ctrl-C becomes :class:`Interrupted` (exit 130, --resume hint).

    :func:`run_job` calls it for commands built on :class:`JobOptions`; ``distconv
    deconvolve`` (cli/deconvolve.py) calls it directly.
    """
    try:
        job(*args, **kwargs)
    except KeyboardInterrupt:
        # Raised past click as itself, click would print a blank line and turn it into Abort.
        raise Interrupted() from None


def run_job(job: Callable[..., None], *args: Any, **params: Any) -> None:
    """Run a command's job as ``job(*args, settings, **rest)``: ``params`` are the command's
    keyword arguments, ``settings`` the :class:`JobOptions` among them, ``rest`` the others.

    Ctrl-C becomes :class:`Interrupted` (exit 130, with the ``--resume`` hint).
    """
    names = [field.name for field in dataclasses.fields(JobOptions)]
    settings = JobOptions(**{name: params.pop(name) for name in names if name in params})
    interruptible(job, *args, settings, **params)


# The command line ------------------------------------------------------------------------------


def run_command_line(group: click.Group, argv: Sequence[str] | None) -> None:
    """Run ``group`` as the ``distconv`` program: one-line errors, exit 2 for bad input, 130 for
    Ctrl-C, 1 for anything unexpected (``--debug`` raises instead).

    Parameters
    ----------
    group : click.Group
        The ``distconv`` group.
    argv : sequence of str, optional
        The arguments after the program name (default: ``sys.argv[1:]``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    # One line on stderr, even when a store is unreachable. Run as the program (no argv: the
    # console script, python -m), the quieting stays for the process's life, exit included; an
    # in-process call with its own argv leaves the caller's hook and logging as it found them.
    undo = [quiet_abandoned_store_reads(), _quiet_client_warnings()] if not debug else []
    try:
        _run_group(group, args, debug)
    finally:
        if argv is not None:
            for step in undo:
                step()


def _quiet_client_warnings() -> Callable[[], None]:
    """Keep the Dask client's warnings off stderr; return what takes the filter back.

    When a worker dies under a result the client warns ("Couldn't gather 1 keys, rescheduling");
    the job reports lost workers itself, in its one line (``--debug`` shows both). A filter, not
    a level: importing distributed sets its loggers' levels from its config, later.
    """
    logger = logging.getLogger("distributed.client")
    logger.addFilter(_errors_only)
    return lambda: logger.removeFilter(_errors_only)


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def _run_group(group: click.Group, args: list[str], debug: bool) -> None:
    CommandState.argv, CommandState.resume_command, CommandState.ran_on = args, None, None
    CommandState.saved = None
    try:
        group.main(args=args, prog_name="distconv", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt, Interrupted):
        _interrupted()
    except click.ClickException as exc:
        if debug:
            raise
        _fail(exc.format_message(), EXIT_USAGE)
    except DistconvError as exc:
        if debug:
            raise
        _fail(_failure_message(exc), getattr(exc, "exit_code", EXIT_USAGE))
    except Exception as exc:  # unexpected: still one line unless --debug
        if debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _fail(
            f"{type(exc).__name__}: {message} (rerun with --debug for the traceback)", EXIT_FAILED
        )


def _interrupted() -> None:
    """Ctrl-C: the workers' tasks were cancelled on the way out (executor.compute_blocks)."""
    if CommandState.resume_command:
        _fail(
            f"interrupted; the output is partial, not marked complete; finish it with: "
            f"{CommandState.resume_command}",
            EXIT_INTERRUPTED,
        )
    _fail("interrupted; no output was marked complete", EXIT_INTERRUPTED)


def _failure_message(exc: DistconvError) -> str:
    """A failed job's message ends with the command that finishes its partial output (known
    while an output is being written), unless the message already names it."""
    message = str(exc).strip()
    command = CommandState.resume_command
    if isinstance(exc, JobFailed) and command and command not in message:
        message = f"{message.rstrip('.')}; finish it with: {command}"
    return message


def _fail(message: str, code: int) -> None:
    click.echo(f"distconv: error: {redact(' '.join(message.split()))}", err=True)
    sys.exit(code)
