"""Every exception distconv raises on purpose.

Most reach users as one line: the CLI prints a :class:`DistconvError` and exits 2 (or with its
``exit_code``, as :class:`JobFailed`'s 1). :class:`ChunkError` is not one of them: it is a
failure of the user's own function, chained from the original exception.

:class:`DistconvError` is a :class:`ValueError` (as NumPy's shape errors, which matmul and
multiply mirror). Where scipy.ndimage raises another builtin for the same mistake, distconv
raises a class that is also that builtin (:class:`DistconvRuntimeError`,
:class:`DistconvTypeError`, :class:`WeightsRankError`), so ``except RuntimeError`` or
``except TypeError`` written for scipy keeps working, as ``except ValueError`` does.
"""

from __future__ import annotations

__all__ = [
    "ChunkError",
    "DistconvError",
    "DistconvRuntimeError",
    "DistconvTypeError",
    "EngineError",
    "InputReadError",
    "InputValueError",
    "JobFailed",
    "OutputError",
    "WeightsRankError",
    "WorkersCannotSee",
    "WorkersLost",
]


class DistconvError(ValueError):
    """Bad input or an impossible request: the message is shown to the user as is."""


class DistconvRuntimeError(DistconvError, RuntimeError):
    """A mistake scipy.ndimage reports as :class:`RuntimeError` (an unknown mode, an origin
    sequence of the wrong length, an output dtype no filter can write)."""


class DistconvTypeError(DistconvError, TypeError):
    """A mistake scipy.ndimage reports as :class:`TypeError` (a float origin, a cval that is not
    a real number, an unknown dtype name, an array passed as ``output``)."""


class WeightsRankError(DistconvRuntimeError, ValueError):
    """Weights whose rank does not match the input's (or ``axes``): scipy.ndimage raises
    :class:`RuntimeError`, dask-image :class:`ValueError`; this is both, as NumPy's
    ``AxisError`` is both a ValueError and an IndexError."""


class EngineError(DistconvError):
    """An engine is unknown, not installed, or cannot run the requested operation here."""


class OutputError(DistconvError):
    """The output location is unsafe or already taken."""


class InputReadError(DistconvError):
    """A chunk of an input cannot be read (damaged or unreadable); found while computing."""


class InputValueError(InputReadError):
    """An input chunk holds values the operation refuses (e.g. negative counts for
    Richardson–Lucy); found while computing, handled as a damaged chunk."""


class WorkersCannotSee(DistconvError):
    """No worker of the cluster sees a store the job reads or writes (a local path on the
    client's own disk, credentials only the client has): refused before any work."""


class JobFailed(DistconvError):
    """The job ran and failed (writing, a lost worker): the output is partial, resumable."""

    exit_code = 1


class WorkersLost(JobFailed):
    """Every worker that could run the job was lost (killed, its batch job cancelled or ended)
    and none came back within ``distconv.lost_workers_wait`` seconds: the job stops rather than
    wait for workers forever; the output is partial, resumable.

    Attributes
    ----------
    workers : int
        How many workers that could run the job it had seen (all of them lost).
    waited : float
        The seconds it waited for one to come back.
    """

    def __init__(self, message: str, workers: int = 0, waited: float = 0.0) -> None:
        super().__init__(message)
        self.workers = workers
        self.waited = waited


class ChunkError(RuntimeError):
    """The user's function failed on one chunk.

    Attributes
    ----------
    block_index : tuple of int or None
        The chunk's position in the chunk grid (``None`` for the shape/dtype probe).
    function : str
        The function's qualified name.

    The original exception is ``__cause__``; its traceback is the function's own.
    """

    def __init__(
        self, message: str, block_index: tuple[int, ...] | None = None, function: str = ""
    ) -> None:
        super().__init__(message)
        self.block_index = block_index
        self.function = function


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
