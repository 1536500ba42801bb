"""Run a graph of per-block tasks with a progress bar, on a Dask client or on local threads."""

from __future__ import annotations

import builtins
import io
import sys
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import dask
import dask.array as da
import dask.system
import numpy as np
from dask.callbacks import Callback
from dask.threaded import get as threaded_get

from distconv.clusters.resources import current_client, scheduler_info
from distconv.config import get_default
from distconv.errors import WorkersLost
from distconv.ops._blas import restore_blas_threads


def compute_blocks(
    blocks: da.Array,
    *,
    description: str = "computing",
    progress: bool | None = None,
    skip: Collection[tuple[int, ...]] = (),
    results: list | None = None,
    resources: dict[str, float] | None = None,
    watchers: Sequence[Callable[[Any], BaseException | None]] = (),
) -> int:
    """Compute the blocks of ``blocks`` (one small marker per block), showing progress.

    Each block is its own future on a distributed client, so a failure names its block and the
    others are cancelled (as on Ctrl-C); on local threads a scheduler callback counts finished
    blocks.

    Parameters
    ----------
    blocks : dask.array.Array
        One marker per block; computing a marker does the block's work (e.g. writes it).
    description : str
        Label of the progress bar.
    progress : bool, optional
        Show a bar on a terminal (default from config ``distconv.progress``).
    skip : collection of tuple of int
        Block indices not to compute (already done: a resumed job); only the inputs the other
        blocks need are read.
    results : list, optional
        Receives the value of each computed marker (in no particular order), e.g. the number
        of samples a writer clipped in its block.
    resources : dict, optional
        Resources every task of the job requires on a distributed client (the workers proved
        to see its stores, :mod:`distconv.save.sight`), besides a GPU engine's.
    watchers : sequence of callable, optional
        Called with the client about twice a second while a distributed job runs (admit
        workers that joined, notice lost ones); one that returns an exception stops the job
        with it. A :class:`LostWorkers` watcher is always added after them.

    Returns
    -------
    int
        How many blocks were computed.

    Raises
    ------
    WorkersLost
        On a distributed client: every worker that could run the job was lost and none came
        back within ``distconv.lost_workers_wait`` seconds.
    """
    show = get_default("progress") if progress is None else progress
    # A bar in a log file is noise (the summary line stays): a terminal or a notebook only.
    show = show and ProgressBar.where() is not None
    grid = blocks.to_delayed()
    skip = set(skip)
    pieces = [grid[index] for index in np.ndindex(*grid.shape) if index not in skip]
    if not pieces:
        return 0
    with ProgressBar(description, len(pieces), show) as advance:
        client = current_client()
        if client is None:
            values = _compute_on_threads(pieces, _BlockCounter(blocks.name, advance))
            if results is not None:
                results.extend(values)
            return len(pieces)
        from distributed import as_completed

        from distconv.clusters.routing import submit_resources

        # GPU-engine work goes to workers with a GPU resource; given at submission, it
        # survives graph fusion (see clusters/routing.py).
        required = {**(submit_resources(blocks, client) or {}), **(resources or {})}
        futures = client.compute(pieces, resources=required or None)
        # After the others: a worker that joined is admitted (sight) before it is counted.
        watch = _Watch(client, [*watchers, LostWorkers(required)], futures)
        try:
            with watch:
                for future in as_completed(futures):
                    value = future.result()  # raises the task's own exception
                    if results is not None:
                        results.append(value)
                    advance()
        except BaseException as exc:  # a failed block or Ctrl-C: stop the rest on the workers
            client.cancel(futures)
            if not isinstance(exc, KeyboardInterrupt):
                _wait_for_running_blocks(client, blocks.name)
            if watch.failure is not None:  # a watcher stopped the job: its reason, not the
                raise watch.failure from None  # cancellation it caused
            raise
        return len(pieces)


class _Watch:
    """Calls the watchers from a thread of its own while the job's futures are awaited; the
    first exception one returns is kept and the job's futures cancelled (which ends the wait)."""

    interval = 0.5

    def __init__(self, client, watchers, futures):
        self.client, self.watchers, self.futures = client, list(watchers), futures
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self):
        if self.watchers:
            self._thread = threading.Thread(target=self._run, name="distconv-watch", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for watcher in self.watchers:
                try:
                    failure = watcher(self.client)
                except Exception:  # a watcher that cannot look now looks again later
                    failure = None
                if failure is not None and not self._stop.is_set():
                    self.failure = failure
                    self.client.cancel(self.futures)
                    return

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)  # a watcher waiting on a worker that hangs
        return False


class LostWorkers:
    """A watcher (:func:`compute_blocks`) that stops a job once no worker that may run it is left
    and none comes back within ``wait`` seconds.

    A worker may run the job when it holds every resource the job's tasks require (the sight
    resource of the workers proven to see the stores, a GPU); without any, every worker may.
    When all are lost, distributed keeps the tasks waiting for a worker forever: a cluster that
    brings workers back (a jobqueue cluster resubmitting, a new worker passing sight's probe)
    lets the job go on; one that does not would leave the command waiting silently. Nothing is
    counted before the first such worker is seen: a batch queue may take long to start one.

    Parameters
    ----------
    required : dict, optional
        Resource name → amount every task of the job requires.
    wait : float, optional
        Seconds (default: config ``distconv.lost_workers_wait``).
    """

    def __init__(self, required: dict[str, float] | None = None, wait: float | None = None):
        self.required = dict(required or {})
        self.wait = float(get_default("lost_workers_wait") if wait is None else wait)
        self.seen: set[str] = set()  # addresses of the workers that could run the job
        self.since: float | None = None  # when the last of them was found gone

    def may_run(self, info: dict[str, Any]) -> bool:
        """Whether a worker (the scheduler's record of it) may run the job's tasks."""
        held = info.get("resources") or {}
        return all(held.get(name, 0) >= amount for name, amount in self.required.items())

    def __call__(self, client) -> WorkersLost | None:
        workers = scheduler_info(client).get("workers", {})
        able = {address for address, info in workers.items() if self.may_run(info)}
        if able or not self.seen:
            self.seen |= able
            self.since = None
            return None
        now = time.monotonic()
        if self.since is None:
            self.since = now
        if now - self.since < self.wait:
            return None
        count = len(self.seen)
        lost = f"all {count} workers" if count > 1 else "the only worker"
        return WorkersLost(
            f"{lost} that could run the job {'were' if count > 1 else 'was'} lost and none "
            f"came back in {self.wait:g} s",
            workers=count,
            waited=now - self.since,
        )


# A worker's states for a task whose function is still running, cancelled or not.
_RUNNING = ("executing", "long-running", "cancelled", "resumed")


def _wait_for_running_blocks(client, layer_name: str, timeout: float = 120.0) -> None:
    """Return once no worker still runs a block of ``layer_name`` (or after ``timeout``).

    Distributed cannot stop a task's function once it runs: a cancelled block still writes
    its chunks, and one that lands after the error has reached the caller recreates an output
    the caller has just removed (bad input leaves nothing behind). A block's task may be fused
    with the layers before it; its key then ends with the block layer's name.
    """

    def running(dask_worker, name=layer_name) -> int:
        tasks = dask_worker.state.tasks.values()
        return sum(ts.state in _RUNNING and name in str(ts.key) for ts in tasks)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not any(client.run(running).values()):
                return
        except Exception:  # the cluster itself is gone: nothing of it can write any more
            return
        time.sleep(0.05)


def _compute_on_threads(pieces: list, counter: Callback) -> tuple:
    """``dask.compute`` on a thread pool of our own that, on Ctrl-C or an error, lets the
    running tasks finish before the exception leaves: a task stopped by the interpreter's exit
    halfway through writing a tile leaves Zarr's event loop with writes it cannot finish (and a
    screen of their tracebacks); a finished one leaves whole chunks."""
    # BLAS limits put back once the pool's threads are gone: OpenBLAS ignores a raise of its
    # thread count while the threads that ran limited calls still exist.
    with restore_blas_threads():
        pool = ThreadPoolExecutor(dask.system.CPU_COUNT, thread_name_prefix="distconv-task")
        try:
            with counter:
                # The threaded scheduler's function, not its name: given "threads", dask imports
                # distributed (~0.3 s) to look for a client first.
                return dask.compute(*pieces, scheduler=threaded_get, pool=pool)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


class ProgressBar:
    """Context manager yielding ``advance()``; draws nothing when quiet.

    Jobs ask :meth:`where` first and show a bar only on stderr's terminal (a bar in a log file
    is noise; the summary line stays) or in a Jupyter notebook. In a notebook (when
    ``rich.get_console().is_jupyter``: an IPython kernel, Colab, Databricks) the bar is one
    HTML output of the cell, updated in place through ``IPython.display`` (a display id), at
    most :attr:`NOTEBOOK_REFRESH` times a second and once at the end. It needs neither
    ipywidgets nor a terminal: rich's own live display needs ipywidgets in a notebook, and
    without them warns and shows nothing. IPython is imported only inside a notebook, where it
    is already loaded.

    Jobs that run at once in one process (two threads of a notebook) share one display, one
    row each: rich allows a single live display per console, and two would garble the
    terminal. The display stops when the last job leaves.

    Parameters
    ----------
    description : str
        The row's label.
    total : int
        Blocks the job computes.
    show : bool
        Draw at all (in the notebook when :meth:`where` says so, else on stderr).
    """

    #: A rich ``Console`` to draw on instead of the detected one (None: stderr's terminal, or
    #: the notebook when ``rich.get_console().is_jupyter``); a console with ``is_jupyter`` set
    #: draws the notebook's bar (tests force one with ``Console(force_jupyter=True)``).
    console: ClassVar[Any] = None
    #: Updates of a notebook's bar per second, at most.
    NOTEBOOK_REFRESH = 4.0

    _lock = threading.Lock()
    _shared: dict[str, Any] = {"progress": None, "users": 0, "notebook": None}

    def __init__(self, description: str, total: int, show: bool):
        self.description, self.total, self.show = description, total, show
        self.task = None

    @classmethod
    def where(cls) -> str | None:
        """Where a bar would be drawn now: ``"jupyter"``, ``"terminal"`` or None (nowhere)."""
        console = cls.console
        if console is None and hasattr(builtins, "get_ipython"):  # only inside IPython
            import rich

            console = rich.get_console()
        if console is not None and console.is_jupyter:
            return "jupyter"
        if cls.console is not None:
            return "terminal" if cls.console.is_terminal else None
        return "terminal" if sys.stderr.isatty() else None

    @classmethod
    def _new_progress(cls, where: str):
        # rich is imported only to draw a bar (it adds ~0.1 s to every command's start).
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("tiles"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=cls.console or Console(stderr=True),
            redirect_stdout=False,
            # In a notebook the progress only counts; _NotebookBar draws it.
            disable=where == "jupyter",
        )

    def __enter__(self) -> Callable[[], None]:
        if not self.show:
            return lambda: None
        where = self.where() or "terminal"  # asked to show: stderr even when not a terminal
        shared = self._shared
        with self._lock:
            if shared["progress"] is None:
                shared["progress"] = self._new_progress(where)
                shared["progress"].start()
                shared["notebook"] = (
                    _NotebookBar(shared["progress"]) if where == "jupyter" else None
                )
            shared["users"] += 1
            progress, notebook = shared["progress"], shared["notebook"]
            self.task = progress.add_task(self.description, total=self.total)
        task = self.task
        if notebook is None:
            return lambda: progress.advance(task)
        notebook.refresh(force=True)

        def advance() -> None:
            progress.advance(task)
            notebook.refresh()

        return advance

    def __exit__(self, *exc: object) -> bool:
        if self.task is None:
            return False
        shared = self._shared
        with self._lock:
            progress, notebook = shared["progress"], shared["notebook"]
            shared["users"] -= 1
            if notebook is not None:
                notebook.refresh(force=True)  # the final count stays in the cell
            if shared["users"] == 0:
                progress.stop()
                shared["progress"] = shared["notebook"] = None
            else:
                progress.remove_task(self.task)  # the others' rows go on
        return False


class _NotebookBar:
    """A rich ``Progress`` drawn as HTML in one notebook output, updated in place.

    Rendered by a recording console (rich's HTML export, styles inline) and shown as rich's
    ``JupyterRenderable`` (text/html and text/plain) through ``IPython.display.display`` with a
    display id; each refresh replaces that output. Without IPython nothing is drawn.
    """

    def __init__(self, progress: Any):
        from rich.console import Console

        self.progress = progress
        self.renderer = Console(
            file=io.StringIO(),
            record=True,
            width=100,
            color_system="truecolor",
            force_terminal=True,
            force_jupyter=False,
        )
        self.handle: Any = None
        self.last = 0.0
        self.lock = threading.Lock()

    def refresh(self, force: bool = False) -> None:
        """Redraw, unless the last redraw was under 1/:attr:`ProgressBar.NOTEBOOK_REFRESH` s ago."""
        now = time.monotonic()
        if not force and now - self.last < 1 / ProgressBar.NOTEBOOK_REFRESH:
            return
        with self.lock:
            self.last = now
            from rich.jupyter import JUPYTER_HTML_FORMAT, JupyterRenderable

            self.renderer.print(self.progress.get_renderable())
            html = self.renderer.export_html(
                inline_styles=True, code_format=JUPYTER_HTML_FORMAT, clear=False
            )
            renderable = JupyterRenderable(html, self.renderer.export_text(clear=True).rstrip())
            try:
                from IPython.display import display
            except ImportError:  # a forced Jupyter console outside IPython: nowhere to draw
                return
            if self.handle is None:
                self.handle = display(renderable, display_id=True)
            else:
                self.handle.update(renderable)


class _BlockCounter(Callback):
    """Counts finished tasks of one layer (the per-block markers) on the local scheduler."""

    def __init__(self, layer_name: str, advance):
        super().__init__()
        self.layer_name, self.advance = layer_name, advance

    def _posttask(self, key, result, dsk, state, worker_id):
        name = key[0] if isinstance(key, tuple) else key
        if name == self.layer_name:
            self.advance()


def timed(function, *args, **kwargs):
    """Run ``function`` and return (result, seconds)."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start
