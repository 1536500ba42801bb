"""Benchmark results: the rows, and the same numbers as a table, Markdown, JSON and a PNG chart."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distconv.bench.common import Contender, machine, machine_text


@dataclass
class Row:
    """One contender in one group (a kernel size, or one operation)."""

    group: str
    contender: str
    kind: str
    engine: str
    method: str
    seconds: float | None
    runs: list[float]
    rate: float | None  # work units (Mpx or GFLOP) per second
    vs_floor: float | None  # seconds / the floor's seconds in the same group
    vs_reference: float | None  # seconds / the reference tool's seconds in the same group
    note: str = ""
    error: float | None = None  # max relative error vs float64 SciPy/NumPy, when checked

    @classmethod
    def from_contender(
        cls,
        group: str,
        contender: Contender,
        *,
        floor: float | None,
        reference: float | None,
        work: float,
        error: float | None = None,
    ) -> Row:
        seconds = contender.seconds
        return cls(
            group=group,
            contender=contender.name,
            kind=contender.kind,
            engine=contender.engine,
            method=contender.method,
            seconds=seconds,
            runs=[round(r, 4) for r in contender.runs],
            rate=work / seconds if seconds else None,
            vs_floor=seconds / floor if seconds and floor else None,
            vs_reference=seconds / reference if seconds and reference else None,
            note=contender.skip or "",
            error=error,
        )


@dataclass
class Result:
    """A benchmark run: what was timed, on what machine, and one :class:`Row` per contender."""

    benchmark: str  # "convolve" | "matmul" | "multiply"
    unit: str  # "Mpx/s" | "GFLOP/s"
    work: float  # units of work per run (Mpx, GFLOP)
    setup: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    references: dict[str, str | None] = field(default_factory=dict)  # group → reference row
    floor_name: str = "Zarr→Zarr copy"
    notes: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=machine)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def groups(self) -> list[str]:
        return list(dict.fromkeys(row.group for row in self.rows))

    def add_group(
        self,
        group: str,
        contenders: list[Contender],
        reference: Contender | None,
        errors: dict[str, float],
        floor: float | None = None,
    ) -> None:
        """One row per contender, against the group's floor (its ``kind="floor"`` contender
        when that ran, else ``floor`` seconds) and ``reference``; ``errors``: contender name →
        max relative error, where checked."""
        own = next((c.seconds for c in contenders if c.kind == "floor" and c.seconds), None)
        floor = own if own is not None else floor
        self.references[group] = reference.name if reference else None
        for contender in contenders:
            self.rows.append(
                Row.from_contender(
                    group,
                    contender,
                    floor=floor,
                    reference=reference.seconds if reference else None,
                    work=self.work,
                    error=errors.get(contender.name),
                )
            )


HEADERS = (
    "{group}",
    "contender",
    "method/engine",
    "seconds",
    "{unit}",
    "× {floor}",
    "× reference",
    "runs",
    "note",
)


def table_cells(result: Result) -> tuple[list[str], list[list[str]]]:
    """Header and text cells shared by the terminal table and the Markdown table."""
    group = "kernel" if result.benchmark == "convolve" else "operation"
    headers = [h.format(group=group, unit=result.unit, floor=result.floor_name) for h in HEADERS]
    cells = []
    for row in result.rows:
        how = "/".join(p for p in (row.method, row.engine) if p)
        reference = result.references.get(row.group)
        note = row.note or ("reference" if row.contender == reference else "")
        if row.error is not None:
            note = (note + "; " if note else "") + f"max rel. error {row.error:.1e}"
        cells.append(
            [
                row.group,
                row.contender,
                how,
                _number(row.seconds, "{:.2f}"),
                _number(row.rate, "{:.1f}"),
                _number(row.vs_floor, "{:.2f}"),
                _number(row.vs_reference, "{:.2f}"),
                str(len(row.runs)),
                note,
            ]
        )
    return headers, cells


def _number(value: float | None, fmt: str) -> str:
    return "" if value is None else fmt.format(value)


def print_table(result: Result, console=None) -> None:
    """The table on the terminal (rich), with the machine line under it."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # a log or a pipe: keep each row on one line
            console = Console(width=220)
    headers, cells = table_cells(result)
    table = Table(*headers, title=f"distconv bench {result.benchmark}: {_setup_text(result)}")
    for row in cells:
        table.add_row(*row)
    console.print(table)
    console.print(f"machine: {machine_text(result.machine)}")
    for note in result.notes:
        console.print(note)


def markdown(result: Result) -> str:
    """The table as Markdown, with the setup and machine above it."""
    headers, cells = table_cells(result)
    lines = [
        f"{_setup_text(result)}. Machine: {machine_text(result.machine)}.",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    if result.notes:
        lines += ["", *result.notes]
    return "\n".join(lines)


def _setup_text(result: Result) -> str:
    setup = result.setup
    power = "³" if setup.get("ndim") == 3 else "²"
    chunks = ", ".join(f"{c}{power}" for c in setup.get("chunks") or [setup["chunk"]])
    text = f"{setup['size']}{power} {setup.get('dtype', 'float32')}, Zarr chunks {chunks}"
    if "cluster" in setup:
        text += f", {setup['cluster']}"
    elif "workers" in setup:
        text += f", {setup['workers']} worker(s)"
    return text + f", median of {setup['repeats']} after a warm-up, contenders alternating"


def write_json(result: Result, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return path


def write_chart(result: Result, path: str | os.PathLike) -> Path:
    """Grouped bars of seconds per contender and group (log scale), saved as a PNG (Agg)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    groups = result.groups()
    names = list(dict.fromkeys(row.contender for row in result.rows))
    seconds = {(r.group, r.contender): r.seconds for r in result.rows}
    width = 0.8 / max(len(names), 1)
    figure, axis = plt.subplots(figsize=(1.6 * len(groups) + 6.0, 4.5), dpi=110)
    x = np.arange(len(groups))
    for index, name in enumerate(names):
        values = [seconds.get((g, name)) for g in groups]
        heights = [v if v is not None else 0.0 for v in values]
        bars = axis.bar(x + (index - (len(names) - 1) / 2) * width, heights, width, label=name)
        for bar, value in zip(bars, values):
            if value is None:  # skipped or not applicable: mark the gap
                axis.annotate(
                    "skip",
                    (bar.get_x() + bar.get_width() / 2, 0),
                    fontsize=6,
                    ha="center",
                    va="bottom",
                    rotation=90,
                    xycoords=("data", "axes fraction"),
                )
    axis.set_xticks(x, groups)
    if any(v for v in seconds.values()):
        axis.set_yscale("log")
    axis.set_ylabel("seconds (median, lower is better)")
    axis.set_title(
        f"distconv bench {result.benchmark}: {_setup_text(result).split(', median')[0]}",
        fontsize=10,
    )
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    plt.close(figure)
    return path
