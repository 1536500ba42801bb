"""One clear line, not multiprocessing's bootstrapping traceback, for an unguarded script.

Worker processes of a local cluster are *spawned*: each starts a fresh interpreter that runs
the parent's main script again (as ``__mp_main__``) before it becomes a worker. A script that
starts a cluster at its top level, outside ``if __name__ == "__main__":``, therefore starts a
cluster in every worker while it boots, and multiprocessing answers with a 40-line
``RuntimeError`` per worker, repeated by the nanny, the scheduler and the parent.

Two checks, both before anything is started:

- in the parent, :func:`unguarded_call_site` reads the script's source (``ast``) and finds the
  top-level statement that led to the call; outside a ``__main__`` guard, the script stops with
  one line naming it;
- in a worker process that is still booting (``multiprocessing``'s ``_inheriting`` flag, set
  while the parent's main module is re-run), :func:`refuse_while_bootstrapping` stops the child
  with the same line: the backstop when the parent could not read its source.
"""

from __future__ import annotations

import ast
import multiprocessing.process
import os
import sys
from types import FrameType, ModuleType

__all__ = ["check_main_guard", "refuse_while_bootstrapping", "unguarded_call_site"]

#: Exit status of a script stopped by these checks (distconv's status for bad input).
EXIT_STATUS = 2


def _message(where: str, spec: str) -> str:
    return (
        f"distconv: error: {where} starts dc.cluster({spec!r}) outside "
        f'`if __name__ == "__main__":`; worker processes run the script again as they start, '
        f"so put the script's work under that guard (or use the 'threads' cluster)"
    )


def _stop(where: str, spec: str) -> None:
    print(_message(where, spec), file=sys.stderr, flush=True)
    raise SystemExit(EXIT_STATUS)


def refuse_while_bootstrapping(spec: str) -> None:
    """In a spawned process that is still re-running the parent's main module, stop it with one
    line on stderr (exit status 2) instead of starting a cluster inside it.

    Parameters
    ----------
    spec : str
        The cluster spec being started, for the message.
    """
    if getattr(multiprocessing.process.current_process(), "_inheriting", False):
        # While it runs, the parent's script is the module "__mp_main__" (runpy's temporary
        # module); "__main__" is still the child's bootstrap.
        main = sys.modules.get("__mp_main__") or sys.modules.get("__main__")
        path = getattr(main, "__file__", None) or "the main module"
        _stop(os.path.basename(path), spec)


def _start_method() -> str:
    import dask.config

    return str(dask.config.get("distributed.worker.multiprocessing-method", "spawn"))


def _main_is_rerun(main: ModuleType | None) -> str | None:
    """The main script's path when spawned processes re-run it (multiprocessing.spawn's rule)."""
    if main is None:
        return None
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None and (name == "__main__" or name.endswith(".__main__")):
        return None  # a package's __main__.py is never re-run
    path = getattr(main, "__file__", None)
    if path is None or os.path.splitext(os.path.basename(path))[0] == "ipython":
        return None  # -c, an interactive session, a notebook
    return path


def _top_level_line(main: ModuleType, frame: FrameType | None) -> int | None:
    """The line of the main module's top-level code that is running, if it is on the stack."""
    line = None
    while frame is not None:
        if frame.f_globals is main.__dict__ and frame.f_code.co_name == "<module>":
            line = frame.f_lineno
        frame = frame.f_back
    return line


def _is_main_guard(test: ast.expr) -> bool:
    """``__name__ == "__main__"`` (either order), alone or in a boolean ``and``."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return any(_is_main_guard(value) for value in test.values)
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return False
    if not isinstance(test.ops[0], ast.Eq):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s.id for s in sides if isinstance(s, ast.Name)]
    texts = [s.value for s in sides if isinstance(s, ast.Constant)]
    return names == ["__name__"] and texts == ["__main__"]


def _guarded(tree: ast.Module, line: int) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_main_guard(node.test) and node.body:
            if node.body[0].lineno <= line <= (node.body[-1].end_lineno or line):
                return True
    return False


def unguarded_call_site(frame: FrameType | None = None) -> str | None:
    """Where the main script's unguarded top-level code calls into a cluster start.

    Parameters
    ----------
    frame : frame, optional
        Where to start walking up the stack (default: the caller's frame).

    Returns
    -------
    str or None
        ``"script.py, line 12"`` when spawned workers would run that line again; None when they
        would not (fork start method, guarded call, no script file, source not readable).
    """
    if _start_method() == "fork":
        return None
    main = sys.modules.get("__main__")
    path = _main_is_rerun(main)
    if path is None:
        return None
    line = _top_level_line(main, frame or sys._getframe(1))
    if line is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return None
    if _guarded(tree, line):
        return None
    return f"{os.path.basename(path)}, line {line}"


def check_main_guard(spec: str) -> None:
    """Stop with one line (exit status 2) when starting worker processes for ``spec`` cannot
    work: the main script would start them again in each of them.

    Called by :func:`distconv.clusters.cluster` before a ``local`` or ``cuda`` cluster starts.

    Parameters
    ----------
    spec : str
        The cluster spec, for the message.
    """
    refuse_while_bootstrapping(spec)
    where = unguarded_call_site(sys._getframe(1))
    if where is not None:
        _stop(where, spec)
