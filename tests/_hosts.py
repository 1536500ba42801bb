"""Several "hosts" on one machine: real ``dask scheduler`` / ``dask worker`` processes on 127.0.0.1.

A host is a ``dask worker`` (with its nanny) in its own mount namespace, where the client's data
folder is replaced by an empty folder private to that worker (its own disk)::

    unshare -m --propagation private sh -c 'mount --bind DISK DATA && exec python -m
        distributed.cli.dask_worker ...'

so a path the client writes is missing on that worker, and what the worker writes under DATA
lands on its disk, never in the client's folder: the situation of a cluster without a shared
file system. A worker with the shared disk is started plainly and sees the client's DATA.

Every process is started in its own session (its process group has the same id) and stopped by
group, so a nanny never restarts a killed worker and nothing outlives :meth:`Hosts.stop`. Logs
go to files under the harness's root. The generic helpers (:func:`free_port`, :func:`spawn`,
:func:`stop_processes`, :func:`scheduler_args`, :func:`worker_args`, :func:`wait_for`) are shared
with tests/test_cluster_remote.py and tests/test_object_store_faults.py.

Usage::

    with hosts_or_skip(tmp_path / "hosts", tmp_path / "data") as hosts:
        hosts.add_worker("near", own_disk=False)
        hosts.add_worker("far", own_disk=True)
        hosts.wait_for_workers(2)
        with Client(hosts.address) as client:
            ...
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT = 60
STOP_GRACE = 10  # seconds a process gets to close after SIGTERM before SIGKILL
LOG_TAIL_LINES = 30

# $1: the private disk, $2: the client's data folder, the rest: the worker's command line.
_BIND_AND_EXEC = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
_UNSHARE = ["unshare", "-m", "--propagation", "private"]


# --- generic process helpers ---------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (another process may still take it before use)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``args`` in a new session (process group id == pid), stdout and stderr to ``log``."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log, "wb") as handle:  # the child has its own copy of the descriptor
        return subprocess.Popen(
            args, stdout=handle, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still running (zombies waiting to be reaped are
    not: they run nothing, and whoever reaps orphans here may be slow to do it)."""
    proc = Path("/proc")
    if not proc.is_dir():  # no procfs: any member, zombies included
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:  # the whole group is gone already
        pass


def _wait_groups(processes: Iterable[subprocess.Popen], deadline: float) -> None:
    """Wait until no process of these groups runs, or until ``deadline``."""
    waiting = list(processes)
    while waiting and time.monotonic() < deadline:
        waiting = [p for p in waiting if _group_alive(p.pid)]
        if waiting:
            time.sleep(0.05)


def stop_processes(processes: list[subprocess.Popen], grace: float = STOP_GRACE) -> None:
    """SIGTERM the process groups of ``processes`` (in that order), SIGKILL whatever still runs
    after ``grace`` seconds, and reap the leaders.

    Groups whose leader has exited are signalled too: a nanny that died can leave its worker
    running. Their ids cannot have been reused while a member lives.
    """
    for proc in processes:
        _signal_group(proc, signal.SIGTERM)
    _wait_groups(processes, time.monotonic() + grace)
    for proc in processes:
        _signal_group(proc, signal.SIGKILL)  # the stragglers, and any orphaned child
        proc.wait()


def scheduler_args(port: int, *tls: str, scheduler_file: Path | None = None) -> list[str]:
    """``dask scheduler`` on 127.0.0.1:``port`` (0: any); TLS when ``tls`` options are given."""
    protocol = ["--protocol", "tls"] if tls else []
    file = ["--scheduler-file", str(scheduler_file)] if scheduler_file else []
    return [
        sys.executable,
        "-m",
        "distributed.cli.dask_scheduler",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-dashboard",
        *protocol,
        *file,
        *tls,
    ]


def worker_args(address: str, name: str, *extra: str, nthreads: int = 1) -> list[str]:
    """``dask worker`` (nanny-managed) for the scheduler at ``address``, 2 GiB memory limit."""
    return [
        sys.executable,
        "-m",
        "distributed.cli.dask_worker",
        address,
        "--host",
        "127.0.0.1",
        "--nthreads",
        str(nthreads),
        "--name",
        name,
        "--memory-limit",
        "2GiB",
        "--no-dashboard",
        *extra,
    ]


def _wait_workers(
    address: str, n: int, check: Callable[[], None], deadline: float, security=None
) -> None:
    """Wait until ``n`` workers run on the scheduler at ``address``; ``check()`` is called
    between short waits (it raises when a process died) and TimeoutError ends it at
    ``deadline``."""
    from distributed import Client

    while True:
        check()
        try:
            with Client(address, timeout="3s", security=security) as client:
                while True:
                    check()
                    try:
                        # Short waits: a dead process is reported at once, not at the deadline.
                        left = deadline - time.monotonic()
                        client.wait_for_workers(n, timeout=max(0.1, min(1.0, left)))
                        return
                    except TimeoutError:
                        if time.monotonic() > deadline:
                            raise
        except OSError:  # the scheduler does not answer yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"no scheduler at {address}") from None


def wait_for(address: str, n_workers: int, processes, security=None) -> None:
    """Wait until ``n_workers`` workers joined ``address``; fail if one of ``processes`` exits."""

    def check() -> None:
        dead = [p.args for p in processes if p.poll() is not None]
        assert not dead, f"cluster process exited early: {dead}"

    _wait_workers(address, n_workers, check, time.monotonic() + START_TIMEOUT, security)


def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' if it does not exist)."""
    try:
        text = log.read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def worker_addresses(client) -> dict[str, str]:
    """Worker name → address on the client's scheduler (for ``client.run(..., workers=)``)."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return {str(info["name"]): address for address, info in workers.items()}


# --- the harness ---------------------------------------------------------------------------------


@functools.cache
def unshare_error() -> str | None:
    """Why ``unshare -m --propagation private`` cannot be used here, or None when it can.

    Checked once per test process by running ``unshare -m --propagation private true``: it
    needs CAP_SYS_ADMIN (root, or a container that grants it) and util-linux's ``unshare``.
    """
    try:
        done = subprocess.run(
            [*_UNSHARE, "true"], capture_output=True, text=True, timeout=30, check=False
        )
    except FileNotFoundError:
        return "the unshare command (util-linux) is not installed"
    except subprocess.TimeoutExpired:
        return "unshare -m --propagation private true did not finish in 30 s"
    if done.returncode != 0:
        why = done.stderr.strip() or f"exit status {done.returncode}"
        return f"unshare -m --propagation private is not permitted here: {why}"
    return None


@dataclass
class _Worker:
    name: str
    proc: subprocess.Popen
    log: Path
    disk: Path | None  # None: the shared disk
    killed: bool = False


class Hosts:
    """A dask scheduler on 127.0.0.1 plus workers, some on their own disk.

    ``root`` holds the private disks (``root/disks/<name>``), the logs (``root/logs``) and each
    worker's scratch directory; ``data`` is the client's data folder, the one a worker with
    its own disk sees replaced by its private disk. A context manager: ``with Hosts(...) as
    hosts`` starts the scheduler and stops everything on the way out.
    """

    def __init__(self, root: Path, data: Path) -> None:
        self.root = Path(root)
        self.data = Path(data)
        self.address = ""  # tcp://127.0.0.1:PORT once started
        self._scheduler: subprocess.Popen | None = None
        self._workers: dict[str, _Worker] = {}

    def __enter__(self) -> Hosts:
        try:
            self.start()
        except BaseException:  # __exit__ is not called when __enter__ fails
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def _logs(self) -> Path:
        return self.root / "logs"

    def start(self) -> None:
        """Start the scheduler and wait until it has written its address."""
        if self._scheduler is not None:
            raise RuntimeError("the scheduler is already started")
        for folder in (self.data, self._logs, self.root / "disks", self.root / "scratch"):
            folder.mkdir(parents=True, exist_ok=True)
        file = self.root / "scheduler.json"
        file.unlink(missing_ok=True)
        # Port 0 and the scheduler file: the scheduler picks its port, no race for a free one.
        args = scheduler_args(0, scheduler_file=file)
        self._scheduler = spawn(args, self._logs / "scheduler.log")
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            self._check_alive()
            with contextlib.suppress(OSError, ValueError, KeyError):  # not (fully) written yet
                self.address = json.loads(file.read_text())["address"]
                return
            if time.monotonic() > deadline:
                self._fail(f"the scheduler wrote no {file.name} in {START_TIMEOUT} s")
            time.sleep(0.05)

    def add_worker(
        self, name: str, *, own_disk: bool, nthreads: int = 1, env: dict[str, str] | None = None
    ) -> None:
        """Start a nanny-managed worker called ``name`` (its own disk, or the shared one) with
        ``nthreads`` threads and ``env`` added to this process's environment; it does not wait
        for it to join (see :meth:`wait_for_workers`)."""
        if not self.address:
            raise RuntimeError("start() the scheduler first")
        if name in self._workers or name == "scheduler":
            raise ValueError(f"the name {name!r} is taken")
        scratch = self.root / "scratch" / name  # not the shared /tmp/dask-scratch-space
        args = worker_args(self.address, name, "--local-directory", str(scratch), nthreads=nthreads)
        disk = None
        if own_disk:
            if (why := unshare_error()) is not None:
                raise RuntimeError(why)
            disk = self.root / "disks" / name
            disk.mkdir()
            args = [*_UNSHARE, "sh", "-c", _BIND_AND_EXEC, "sh", str(disk), str(self.data), *args]
        log = self._logs / f"{name}.log"
        self._workers[name] = _Worker(name, spawn(args, log, env), log, disk)

    def wait_for_workers(self, n: int, timeout: float = START_TIMEOUT) -> None:
        """Wait until at least ``n`` workers run on the scheduler; fail with the tails of the
        logs if a process (not killed on purpose) exits first, or at ``timeout`` seconds."""
        try:
            _wait_workers(self.address, n, self._check_alive, time.monotonic() + timeout)
        except TimeoutError:
            self._fail(f"fewer than {n} workers joined {self.address} in {timeout} s")

    def kill_worker(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the worker's whole process group (nanny and worker, so the nanny
        cannot restart it) and return once none of them runs. SIGKILL (default) is a host
        lost at once; SIGTERM lets it close; whatever still runs after a grace period is
        SIGKILLed."""
        worker = self._workers[name]
        if worker.killed:
            return
        worker.killed = True
        _signal_group(worker.proc, sig)
        _wait_groups([worker.proc], time.monotonic() + STOP_GRACE)
        _signal_group(worker.proc, signal.SIGKILL)
        worker.proc.wait()

    def disk(self, name: str) -> Path:
        """The private disk folder of worker ``name``: what it sees as the data folder."""
        disk = self._workers[name].disk
        if disk is None:
            raise ValueError(f"worker {name!r} uses the shared disk")
        return disk

    def stray_files(self) -> dict[str, list[str]]:
        """Every file on every private disk (killed workers' included), as sorted paths
        relative to the disk, per worker name."""
        return {
            name: sorted(p.relative_to(w.disk).as_posix() for p in w.disk.rglob("*") if p.is_file())
            for name, w in self._workers.items()
            if w.disk is not None
        }

    def stop(self) -> None:
        """Stop every worker, then the scheduler; whatever does not close in time is killed.
        Safe to call again."""
        workers = [w.proc for w in reversed(self._workers.values()) if not w.killed]
        stop_processes(workers)  # all together: each one alone can take seconds to close
        if self._scheduler is not None:
            stop_processes([self._scheduler])

    # --- failures ----------------------------------------------------------------------------

    def _processes(self) -> dict[str, tuple[subprocess.Popen, Path]]:
        found = {w.name: (w.proc, w.log) for w in self._workers.values() if not w.killed}
        if self._scheduler is not None:
            found["scheduler"] = (self._scheduler, self._logs / "scheduler.log")
        return found

    def _check_alive(self) -> None:
        dead = [name for name, (proc, _) in self._processes().items() if proc.poll() is not None]
        if dead:
            self._fail(f"exited early: {', '.join(dead)}", only=dead)

    def _fail(self, message: str, only: list[str] | None = None) -> None:
        parts = [message]
        for name, (proc, log) in self._processes().items():
            if only is None or name in only:
                status = "running" if proc.poll() is None else f"exit status {proc.returncode}"
                parts.append(f"--- {log} ({status}) ---\n{log_tail(log)}")
        pytest.fail("\n".join(parts), pytrace=False)


def hosts_or_skip(root: Path, data: Path) -> Hosts:
    """A :class:`Hosts` (not started: use it in a ``with`` block), or skip the test with the
    reason when ``unshare -m --propagation private`` is not permitted here."""
    if (why := unshare_error()) is not None:
        pytest.skip(why)
    return Hosts(root, data)
