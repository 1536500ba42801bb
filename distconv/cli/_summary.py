"""What a command ran and wrote, and the one summary line every command prints at the end.

:class:`CommandState` lives here, not in :mod:`distconv.cli._common`, because
:func:`summary_line` reads it and ``_common`` (which fills it in) imports this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any


class CommandState:
    """The state of the running command line (one per process)."""

    debug = False
    # Set while a job writes its output: the command that finishes it after an interruption.
    resume_command: str | None = None
    argv: Sequence[str] = ()
    # Where the last job ran (command_cluster's words: "threads (auto: ...)", "local, 2 workers").
    ran_on: str | None = None
    # What the last save wrote (save_resumable), for the summary line.
    saved: SaveReport | None = None


@dataclasses.dataclass(frozen=True)
class SaveReport:
    """What one save wrote, counted from the written output itself, for a summary line.

    Attributes
    ----------
    output : str
        Where it was written.
    chunks : int
        The output's stored chunks (zarr's ``nchunks``), not the job's tasks.
    tiles : int
        The job's tasks: each computes a tile of one or more stored chunks.
    seconds : float
        How long the save took.
    unit : str
        What a resume counts: ``chunk``, or ``shard`` for a sharded output.
    units_total : int
        Units in the output.
    units_already : int
        Units a ``--resume`` found already written (0 for a new output).
    """

    output: str
    chunks: int
    tiles: int
    seconds: float
    unit: str = "chunk"
    units_total: int = 0
    units_already: int = 0

    @property
    def units_now(self) -> int:
        """Units this run computed."""
        return self.units_total - self.units_already

    @property
    def fraction_now(self) -> float:
        """The share of the output this run computed (1 without a resume).

        Units count equally: exact for a grid of equal units, a close estimate when the edge
        units are smaller.
        """
        if not self.units_already or not self.units_total:
            return 1.0
        return self.units_now / self.units_total

    def rate(self, amount: float, seconds: float | None = None) -> float:
        """``amount`` (the whole output's pixels, bytes, FLOPs) per second, counting only the
        part this run computed: after ``--resume`` the chunks already there took no time."""
        spent = self.seconds if seconds is None else seconds
        return amount * self.fraction_now / max(spent, 1e-9)

    def layout_words(self) -> str:
        """``64 chunks in 4 tiles``: the output's stored chunks and the tasks that wrote them."""
        return f"{_plural(self.chunks, 'chunk')} in {_plural(self.tiles, 'tile')}"

    def resumed_words(self) -> str | None:
        """``192 of 256 chunks computed now, 64 were already written``, or None (no resume)."""
        if not self.units_already:
            return None
        return (
            f"{self.units_now:,} of {_plural(self.units_total, self.unit)} computed now, "
            f"{self.units_already:,} {'was' if self.units_already == 1 else 'were'} already "
            "written"
        )


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def summary_line(
    shape: Sequence[int],
    dtype: Any,
    details: str,
    rates: Callable[[SaveReport], str] | None = None,
    notes: str = "",
    seconds: float | None = None,
    tiles: int | None = None,
) -> str:
    """The line a command prints once its output is complete, the same for every command:

    ``wrote OUT: 512×512 float32, 64 chunks in 4 tiles, DETAILS; 0.78 s, RATES NOTES;
    [N of M chunks computed now, K were already written;] on WHERE``.

    Parameters
    ----------
    shape, dtype
        The output's.
    details : str
        The command's own words (method, engine...); may be empty.
    rates : callable, optional
        ``rates(report)`` → ``"3.1 Mpx/s, 12 MiB/s read"``, from :meth:`SaveReport.rate` so
        that a resumed run counts only what it computed.
    notes : str
        Appended after the rates (``; 12 samples clipped ...``).
    seconds : float, optional
        The job's time when it is more than the save's (deconvolve's earlier passes).
    tiles : int, optional
        The job's tasks when its graph's blocks are not its tiles (a plan that rechunks its
        result to the stored chunks: matmul, deconvolve); default: the saved array's blocks.
    """
    report = CommandState.saved
    if report is None:  # no save ran: nothing this line could count
        raise RuntimeError("summary_line needs a save_resumable first")
    spent = report.seconds if seconds is None else seconds
    report = dataclasses.replace(
        report, seconds=spent, tiles=report.tiles if tiles is None else int(tiles)
    )
    shape_text = "×".join(map(str, shape)) if len(shape) else "scalar"
    timing = f"{spent:.2f} s" + (f", {rates(report)}" if rates else "")
    resumed = report.resumed_words()
    return (
        f"wrote {report.output}: {shape_text} {dtype}, {report.layout_words()}"
        f"{f', {details}' if details else ''}; "
        f"{timing}{notes}; {f'{resumed}; ' if resumed else ''}on {CommandState.ran_on}"
    )
