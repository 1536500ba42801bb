"""What a library call must leave as it found it in the caller's process: a snapshot and a diff.

``snapshot()`` records the process-wide settings a call could change behind the caller's back
(thread pools, TensorFlow's threading, logging, warnings, asyncio, signals, the environment,
dask.config, the exception hooks); ``diff(before, after)`` names each one that changed.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import signal
import sys
import threading
import warnings
from typing import Any

__all__ = ["diff", "snapshot"]


def _thread_pools() -> list[tuple[str, str, int]]:
    from threadpoolctl import threadpool_info

    return sorted(
        (info["user_api"], info["filepath"], info["num_threads"])
        for info in threadpool_info()
        if info["user_api"] in ("blas", "openmp")
    )


def _numba() -> int | None:
    if "numba" not in sys.modules:
        return None
    return sys.modules["numba"].get_num_threads()


def _tensorflow() -> dict[str, Any] | None:
    tf = sys.modules.get("tensorflow")
    if tf is None or not hasattr(tf, "config"):
        return None
    threading_ = tf.config.threading
    return {
        "inter_op": threading_.get_inter_op_parallelism_threads(),
        "intra_op": threading_.get_intra_op_parallelism_threads(),
        "visible": [d.name for d in tf.config.get_visible_devices()],
    }


def _loggers() -> dict[str, tuple]:
    loggers = {"": logging.root}
    loggers.update(
        (name, logger)
        for name, logger in list(logging.root.manager.loggerDict.items())
        if isinstance(logger, logging.Logger)
    )
    return {
        name: (
            logger.level,
            tuple(id(h) for h in logger.handlers),
            tuple(id(f) for f in logger.filters),
            logger.propagate,
            logger.disabled,
        )
        for name, logger in loggers.items()
    }


def _asyncio_handler() -> Any:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        policy = asyncio.get_event_loop_policy()
        loop = getattr(getattr(policy, "_local", None), "_loop", None)
    handler = loop.get_exception_handler() if loop is not None else None
    return (id(asyncio.get_event_loop_policy()), id(loop) if loop else None, handler)


def _signals() -> dict[str, Any]:
    found = {}
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            found[signal.Signals(sig).name] = signal.getsignal(sig)
        except (ValueError, OSError):  # real-time signals without a name
            continue
    return found


def _dask_config() -> dict:
    import dask

    return copy.deepcopy(dask.config.config)


def _zarr_config() -> dict:
    import zarr

    return copy.deepcopy(zarr.config.config)


def snapshot() -> dict[str, Any]:
    """The process-wide settings a public call must leave as it found them."""
    return {
        "thread pools (threadpoolctl)": _thread_pools(),
        "numba threads": _numba(),
        "tensorflow threading/devices": _tensorflow(),
        "loggers": _loggers(),
        "warnings.filters": list(warnings.filters),
        "asyncio exception handler": _asyncio_handler(),
        "signal handlers": _signals(),
        "os.environ": dict(os.environ),
        "dask.config": _dask_config(),
        "zarr.config": _zarr_config(),
        "sys.excepthook": sys.excepthook,
        "sys.unraisablehook": sys.unraisablehook,
        "threading.excepthook": threading.excepthook,
        "packages": {name.partition(".")[0] for name in list(sys.modules)},
    }


def _mapping_diff(before: dict, after: dict) -> list[str]:
    out = []
    for key in sorted(set(before) | set(after), key=str):
        if key not in after:
            out.append(f"{key!r} removed (was {before[key]!r})")
        elif key not in before:
            out.append(f"{key!r} added: {after[key]!r}")
        elif before[key] != after[key]:
            out.append(f"{key!r}: {before[key]!r} -> {after[key]!r}")
    return out


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """One line per setting that differs between two snapshots (empty when none does).

    What a package first imported during the call sets up for itself (its own loggers, its
    dask.config section, numba's thread count once numba exists) is no change to anything the
    caller had, nor is a logger no one had before (distributed configures tornado's and
    bokeh's from its config); distconv's own loggers count.
    """
    imported = after["packages"] - before["packages"] - {"distconv"}
    changes = []
    for what in before:
        old, new = before[what], after[what]
        if old == new or what == "packages":
            continue
        if what == "numba threads" and old is None:
            continue
        if what == "thread pools (threadpoolctl)":
            # A library first loaded during the call (libgomp) was set by no one before it.
            known = {(api, path) for api, path, _ in old}
            new = [pool for pool in new if pool[:2] in known]
            if old == new:
                continue
        if what == "dask.config":
            new = {k: v for k, v in new.items() if k in old or k not in imported}
        if what == "loggers":
            # A logger first created during the call is no change to anything the caller set.
            new = {name: state for name, state in new.items() if name in old}
            old_default = (logging.NOTSET, (), (), True, False)
            created = {
                name: state
                for name, state in after[what].items()
                if name not in old and state != old_default and name.partition(".")[0] == "distconv"
            }
            lines = _mapping_diff(old, new) + [
                f"new logger {name!r} configured: {state!r}" for name, state in created.items()
            ]
        elif isinstance(old, dict) and isinstance(new, dict):
            lines = _mapping_diff(old, new)
        else:
            lines = [f"{old!r} -> {new!r}"]
        changes.extend(f"{what}: {line}" for line in lines)
    return changes
