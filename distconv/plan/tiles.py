"""Tiles: how many stored chunks one task computes, chosen for the machine rather than the store.

A *tile* is a block of whole *units*: the stored Zarr chunks of the input (its shards when it is
sharded, so that a task decodes every shard it touches once), or the Dask chunks of an input that
does not come straight from a store. Tiles grow from one unit, on the axis where they are
thinnest (a square tile has the least halo per sample), while

- a tile stays under the target size (config ``distconv.tile_size``, 16 MiB of input by
  default: 2048² float32), big enough that a task's fixed costs -- scheduling, the halo strips
  sent between tasks, one codec call per chunk -- are small next to its work; past the target
  only while the halo is more than :data:`MAX_HALO_OVERHEAD` of the tile;
- there are at least :data:`TILES_PER_THREAD` tiles per thread of the cluster, so that every
  thread has work and a slow tile does not leave the others idle at the end;
- a task's estimated peak memory fits its budget
  (:func:`distconv.clusters.resources.detect_resources`).

Then, if that leaves more tiles than the task cap (config ``distconv.max_tasks``, 100,000), tiles
grow on past the target until it is met, the memory budget still binding
(:mod:`distconv.plan.tile_growth`): the scheduler's cost per task, not the work, would otherwise
set the job's time. The plan's ``reason`` says which rule set the tile.

Units already larger than the target stay as they are: a tile is never smaller than one unit,
since splitting a stored chunk makes several tasks decode it.

Pure: the cluster is asked only when :func:`plan_tiles` gets no ``resources``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from dask.utils import format_bytes

from distconv.clusters.resources import Resources, budget_bytes
from distconv.config import get_default
from distconv.errors import DistconvError
from distconv.plan.tile_growth import MAX_HALO_OVERHEAD, grow_groups, max_tasks, refuse, why_stopped

__all__ = [
    "CHEAP_STRIP_READS",
    "HALO_SOURCES",
    "MAX_HALO_OVERHEAD",
    "METHOD_TEMPORARIES",
    "TILES_PER_THREAD",
    "TilePlan",
    "choose_halo_source",
    "group_chunks",
    "plan_tiles",
    "regular_grid",
    "tile_target_bytes",
]

#: Tiles per thread of the cluster the planner keeps at least (when the array has that many units).
TILES_PER_THREAD = 2
#: Copies of the haloed block (in the compute dtype) an engine holds while computing one tile,
#: besides the block itself: direct keeps its output, separable one intermediate pass as well,
#: FFT the block's spectrum, the weights' spectrum and the inverse transform.
METHOD_TEMPORARIES = {"direct": 1.0, "separable": 2.0, "fft": 3.0, "elementwise": 0.0, None: 1.0}


@dataclass(frozen=True)
class TilePlan:
    """Tiles of whole units and what one task costs.

    ``grid`` holds the unit sizes along each axis (a stored chunk grid: equal sizes with a
    shorter last one; any Dask chunks otherwise) and ``groups`` how many consecutive units one
    tile spans per axis.
    """

    shape: tuple[int, ...]
    dtype: np.dtype  # what is decoded or read per sample
    grid: tuple[tuple[int, ...], ...]
    groups: tuple[int, ...]
    unit_kind: str  # "chunk", "shard" or "dask chunk"
    from_store: bool  # units are stored chunks or shards a task reads itself
    depth: tuple[int, ...]
    compute_dtype: np.dtype
    out_dtype: np.dtype
    method: str | None  # for the full tile (None: no engine method, e.g. a user function)
    operands: int  # input arrays each task reads (a product reads two)
    resources: Resources
    target_bytes: int
    reason: str  # what stopped the tile from growing, for describe()
    # Where halos come from: "exchange" (strips cut from decoded neighbours, sent between
    # tasks) or "store" (each tile's strips read again from the store: bounded memory).
    halo_source: str = "exchange"

    # -- the tiles --
    @functools.cached_property
    def chunks(self) -> tuple[tuple[int, ...], ...]:
        """The Dask chunks of the tiled array."""
        return tuple(group_chunks(axis, g) for axis, g in zip(self.grid, self.groups))

    @property
    def tile_shape(self) -> tuple[int, ...]:
        """The largest tile."""
        return tuple(max(axis) for axis in self.chunks)

    @property
    def unit_shape(self) -> tuple[int, ...]:
        return tuple(max(axis) for axis in self.grid)

    @property
    def tasks(self) -> int:
        """Tiles, i.e. tasks per stage of the graph."""
        return math.prod(len(axis) for axis in self.chunks)

    @property
    def units(self) -> int:
        return math.prod(len(axis) for axis in self.grid)

    @property
    def units_per_tile(self) -> int:
        return math.prod(min(g, len(axis)) for g, axis in zip(self.groups, self.grid))

    @property
    def worth_regrouping(self) -> bool:
        """Re-read or rechunk the input into tiles: always from a store (no extra tasks), else
        only when a tile merges enough chunks to pay for the merge task it adds."""
        if self.units_per_tile == 1:
            return False
        return self.from_store or self.units_per_tile >= 4

    # -- costs --
    @property
    def haloed_shape(self) -> tuple[int, ...]:
        return tuple(t + 2 * d for t, d in zip(self.tile_shape, self.depth))

    @property
    def halo_overhead(self) -> float:
        """Extra samples a haloed tile holds, as a share of the tile's own."""
        return halo_overhead(self.tile_shape, self.depth)

    @property
    def peak_task_bytes(self) -> int:
        """Estimated largest memory one task holds (read, halo, engine, cast, encode)."""
        return peak_bytes(
            self.tile_shape,
            self.depth,
            self.dtype,
            self.compute_dtype,
            self.out_dtype,
            self.method,
            self.operands,
        )

    @property
    def bytes_decoded(self) -> int:
        """Bytes decoded from the input: each unit once, and halo strips again when they are
        read from the store."""
        return int(self.decode_factor * self.operands * math.prod(self.shape) * self.dtype.itemsize)

    @property
    def decode_factor(self) -> float:
        """Bytes decoded over the input's: 1 when halos are exchanged, more when read again."""
        return self.strip_read_factor if self.halo_source == "store" else 1.0

    @property
    def halo_bytes(self) -> int:
        """Bytes of halo strips cut from tiles and sent to their neighbours."""
        # Summed over every tile, prod(tile + 2 depth) factorises into one sum per axis.
        haloed = math.prod(
            size + 2 * d * len(axis) for size, d, axis in zip(self.shape, self.depth, self.chunks)
        )
        return (haloed - math.prod(self.shape)) * self.dtype.itemsize

    @property
    def slab_tiles(self) -> int:
        """Tiles in a slab one tile deep along the first axis."""
        return math.prod(len(axis) for axis in self.chunks[1:])

    @property
    def exchange_front_bytes(self) -> int:
        """Decoded input an exchange of halos may hold at once: a slab of tiles waits for the
        strips of the next slab (grows with the image's width)."""
        return self.operands * self.slab_tiles * math.prod(self.tile_shape) * self.dtype.itemsize

    @property
    def strip_read_factor(self) -> float:
        """Bytes decoded over the input's bytes when halo strips are read from the store: each
        tile once, and per tile the units of its faces (or the whole tile, if fewer) again."""
        per_tile = [min(g, len(axis)) for g, axis in zip(self.groups, self.grid)]
        whole = math.prod(per_tile)
        faces = 0
        for d, unit, n in zip(self.depth, self.unit_shape, per_tile):
            if d:
                deep = min(n, -(-d // max(1, unit)))  # units within d of one face
                faces += 2 * deep * whole // n
        return 1.0 + min(whole, faces) / whole if any(self.depth) else 1.0

    def describe(self) -> str:
        """Lines for ``--dry-run``: tiles, tasks, bytes, halo, peak memory."""
        shape = _shape_text
        unit = f"{self.unit_kind} {shape(self.unit_shape)}"
        lines = [
            f"  tiles:             {shape(self.tile_shape)} = {self.units_per_tile} x {unit}"
            f" ({self.reason})",
            f"  tasks:             {self.tasks:,} tile(s) for {self.units:,} {self.unit_kind}(s); "
            f"{self.resources.parallel_tasks} task(s) at once",
            f"  bytes decoded:     {format_bytes(self.bytes_decoded)} "
            f"({'read by the tasks from the store' if self.from_store else 'from the graph'}, "
            f"{self.decode_factor:.2f}x the input)",
        ]
        if any(self.depth) and self.halo_source == "store":
            lines.append(
                f"  halo:              depth {shape(self.depth)}, strips read again from the "
                f"store: {self.strip_read_factor:.2f}x the input decoded, so memory stays "
                f"flat (an exchange could hold {format_bytes(self.exchange_front_bytes)} of "
                "tiles waiting for their neighbours)"
            )
        elif any(self.depth):
            lines.append(
                f"  halo:              depth {shape(self.depth)}, exchanged between tiles: "
                f"{format_bytes(self.halo_bytes)} of strips ({self.halo_overhead:.1%} per tile); "
                f"reading it from the store instead would decode {self.strip_read_factor:.2f}x"
            )
        fits = self.peak_task_bytes <= self.resources.memory_budget
        lines.append(
            f"  peak memory/task:  {format_bytes(self.peak_task_bytes)} of a "
            f"{format_bytes(self.resources.memory_budget)} budget "
            f"({self.resources.budget_source})" + ("" if fits else "  (OVER the budget)")
        )
        return "\n".join(lines)

    def table_rows(self) -> list[tuple[str, str]]:
        """(field, value) rows of the facts :meth:`describe` prints, for a notebook's table."""
        shape = _shape_text
        rows = [
            (
                "tile",
                f"{shape(self.tile_shape)} = {self.units_per_tile} x {self.unit_kind} "
                f"{shape(self.unit_shape)}",
            ),
            ("tile chosen by", self.reason),
            ("units", f"{self.unit_kind} {shape(self.unit_shape)}"),
            ("tasks", f"{self.tasks:,} tile(s) for {self.units:,} {self.unit_kind}(s)"),
            ("tasks at once", str(self.resources.parallel_tasks)),
            (
                "bytes decoded",
                f"{format_bytes(self.bytes_decoded)} "
                f"({self.decode_factor:.2f}x the input, "
                f"{'read by the tasks from the store' if self.from_store else 'from the graph'})",
            ),
        ]
        if any(self.depth):
            where = (
                f"strips read again from the store ({self.strip_read_factor:.2f}x decoded)"
                if self.halo_source == "store"
                else f"exchanged between tiles: {format_bytes(self.halo_bytes)} of strips "
                f"({self.halo_overhead:.1%} per tile)"
            )
            rows.append(("halo", f"depth {shape(self.depth)}, {where}"))
        else:
            rows.append(("halo", "none"))
        fits = self.peak_task_bytes <= self.resources.memory_budget
        rows.append(
            (
                "peak memory/task",
                f"{format_bytes(self.peak_task_bytes)} of a "
                f"{format_bytes(self.resources.memory_budget)} budget "
                f"({self.resources.budget_source})" + ("" if fits else " (OVER the budget)"),
            )
        )
        return rows

    def _repr_html_(self) -> str:
        from distconv._html import html_table

        return html_table(
            [("shape", _shape_text(self.shape)), ("dtype", str(self.dtype)), *self.table_rows()],
            title="tile plan",
        )

    def __repr__(self) -> str:
        return (
            f"<TilePlan {_shape_text(self.shape)} {self.dtype}: {self.tasks:,} tile(s) of "
            f"{_shape_text(self.tile_shape)}, peak {format_bytes(self.peak_task_bytes)}/task>"
        )

    def summary(self) -> dict:
        """The plan as plain values, for provenance."""
        return {
            "tile": list(self.tile_shape),
            "unit": self.unit_kind,
            "units_per_tile": self.units_per_tile,
            "tasks": self.tasks,
            "peak_task_bytes": self.peak_task_bytes,
            "halo_source": self.halo_source,
        }


def tile_target_bytes(value: int | str | None = None) -> int:
    """The target size of a tile's input in bytes: ``value`` (bytes, or a size such as
    ``"16MiB"``), else config ``distconv.tile_size``; a :class:`DistconvError` unless it is a
    positive size."""
    value = get_default("tile_size") if value is None else value
    return budget_bytes(value, "tile size", "16MiB")


def regular_grid(shape: Sequence[int], unit: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Unit sizes per axis of a stored grid: ``unit`` repeated, the last one shorter.

    Parameters
    ----------
    shape : sequence of int
        The array's shape.
    unit : sequence of int
        The stored chunk (or shard) shape.

    Returns
    -------
    tuple of tuple of int
    """
    grid = []
    for size, step in zip(shape, unit):
        step = max(1, min(int(step), int(size))) if size else 1
        full, rest = divmod(int(size), step)
        grid.append((step,) * full + ((rest,) if rest else ()) or (0,))
    return tuple(grid)


def group_chunks(sizes: Sequence[int], group: int) -> tuple[int, ...]:
    """Sum ``group`` consecutive sizes at a time (the last group may hold fewer)."""
    sizes = tuple(sizes)
    return tuple(sum(sizes[i : i + group]) for i in range(0, len(sizes), group))


def halo_overhead(tile: Sequence[int], depth: Sequence[int]) -> float:
    """Extra samples of a haloed tile over the tile's own."""
    inner = math.prod(tile)
    return math.prod(t + 2 * d for t, d in zip(tile, depth)) / inner - 1 if inner else 0.0


def peak_bytes(
    tile: Sequence[int],
    depth: Sequence[int],
    dtype,
    compute_dtype,
    out_dtype,
    method: str | None,
    operands: int = 1,
) -> int:
    """Estimated peak memory of one task on one tile.

    The decoded input tile(s), the haloed block in the compute dtype with the engine's
    temporaries (:data:`METHOD_TEMPORARIES`), the result in the compute dtype, and the output
    cast with the encoder's copy of it.
    """
    samples = math.prod(tile)
    haloed = math.prod(t + 2 * d for t, d in zip(tile, depth))
    compute = np.dtype(compute_dtype).itemsize
    temporaries = METHOD_TEMPORARIES.get(method, 1.0)
    return int(
        operands * samples * np.dtype(dtype).itemsize
        + haloed * compute * (1 + temporaries)
        + 2 * samples * np.dtype(out_dtype).itemsize
    )


def plan_tiles(
    shape: Sequence[int],
    dtype,
    grid: Sequence[Sequence[int]],
    *,
    unit_kind: str = "chunk",
    from_store: bool = True,
    depth: Sequence[int] | None = None,
    compute_dtype=None,
    out_dtype=None,
    method_for: Callable[[tuple[int, ...]], str | None] | None = None,
    operands: int = 1,
    resources: Resources | None = None,
    target_bytes: int | str | None = None,
    task_cap: int | str | None = None,
) -> TilePlan:
    """Choose tiles of whole units for an array, for the machine that will compute them.

    Parameters
    ----------
    shape : sequence of int
        The array's shape.
    dtype : dtype
        Its dtype (what is decoded per sample).
    grid : sequence of sequence of int, or sequence of int
        Unit sizes per axis (the stored chunk or shard grid, or the Dask chunks), or one unit
        shape (a regular grid over ``shape``).
    unit_kind : {"chunk", "shard", "dask chunk"}
        What a unit is, for :meth:`TilePlan.describe`.
    from_store : bool
        The units are stored chunks or shards a task reads itself.
    depth : sequence of int, optional
        Halo width per axis (default none).
    compute_dtype, out_dtype : dtype, optional
        What the engine computes in and what is written (default ``dtype``).
    method_for : callable, optional
        The engine method for a tile shape (its temporaries enter the memory estimate).
    operands : int
        Arrays of this shape each task reads.
    resources : Resources, optional
        Threads and per-task memory; default :func:`~distconv.clusters.resources.detect_resources`.
    target_bytes : int or str, optional
        Target input bytes per tile; default config ``distconv.tile_size``.
    task_cap : int, optional
        The most tiles to make: tiles grow past the target until there are no more, as long as
        a task fits its memory budget; default config ``distconv.max_tasks`` (100,000).

    Returns
    -------
    TilePlan
    """
    shape = tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    if grid and all(isinstance(g, (int, np.integer)) for g in grid):
        grid = regular_grid(shape, grid)
    grid = tuple(tuple(int(c) for c in axis) for axis in grid)
    depth = tuple(int(d) for d in depth) if depth is not None else (0,) * len(shape)
    compute_dtype = np.dtype(compute_dtype or dtype)
    out_dtype = np.dtype(out_dtype or compute_dtype)
    if resources is None:
        from distconv.clusters.resources import detect_resources

        resources = detect_resources()
    target = tile_target_bytes(target_bytes)
    method_for = method_for or (lambda tile: None)
    counts = [len(axis) for axis in grid]
    min_tiles = TILES_PER_THREAD * max(1, resources.parallel_tasks)

    def tile_of(groups) -> tuple[int, ...]:
        return tuple(max(group_chunks(axis, g)) for axis, g in zip(grid, groups))

    def tiles_of(groups) -> float:
        # Whole tiles' worth of work: a short last tile does not keep a thread busy.
        return math.prod(shape) / max(1, math.prod(tile_of(groups)))

    def cost(groups) -> tuple[int, int]:
        tile = tile_of(groups)
        return (
            operands * math.prod(tile) * dtype.itemsize,
            peak_bytes(tile, depth, dtype, compute_dtype, out_dtype, method_for(tile), operands),
        )

    def accept(candidate) -> str | None:
        return refuse(candidate, tiles_of, cost, min_tiles, target, budget, halo_of)

    def halo_of(groups) -> float:
        return halo_overhead(tile_of(groups), depth)

    budget = resources.memory_budget
    one = [1] * len(shape)
    start = "one unit per tile: the array has a single unit" if tiles_of(one) == 1 else ""
    if not start and cost(one)[0] >= target:
        start = f"the {unit_kind}s are already at least the {format_bytes(target)} target"
    groups, reason = grow_groups(
        counts,
        tile_of,
        accept,
        lambda candidate: cost(candidate)[1] <= budget,
        start_reason=start,
        stopped_reason=lambda stopped: why_stopped(stopped, target, min_tiles),
        cap=max_tasks(task_cap),
    )
    layout = (shape, dtype, grid, groups, unit_kind, from_store)  # the first fields, in order
    plan = TilePlan(
        *layout,
        depth=depth,
        compute_dtype=compute_dtype,
        out_dtype=out_dtype,
        method=method_for(tile_of(groups)),
        operands=operands,
        resources=resources,
        target_bytes=target,
        reason=reason,
    )
    source = choose_halo_source(plan)
    return plan if source == plan.halo_source else dataclasses.replace(plan, halo_source=source)


HALO_SOURCES = ("auto", "exchange", "store")

#: Decode factor up to which ``auto`` reads halo strips from the store regardless of memory.
#: Store over exchange side by side on 2 cores (3 alternating runs each after a warm-up):
#: 16384² float32 in 256² chunks (factor 1.5, 8x8 tiles) 0.96x; 512³ uint16 in 64³ and 128³
#: chunks (2.0, 4x2x2 tiles) 0.95x and 0.92x; 8192² in 2048² chunks (2.0, 4x4) 1.01x; 16384²
#: in 2048² chunks (2.0, 8x8) 1.21x.
CHEAP_STRIP_READS = 1.5


def choose_halo_source(plan: TilePlan) -> str:
    """Where a plan's halos come from; config ``distconv.halo_source`` (auto, exchange, store).

    ``auto`` reads strips from the store (no tile then waits for its neighbours' data):

    - when that decodes at most :data:`CHEAP_STRIP_READS` times the input (tiles of many small
      chunks);
    - when a slab of tiles, one deep along the first axis, is a quarter of the tiles or more:
      an exchange then waits for much of the image before tiles can finish, which costs as
      much as decoding one-chunk tiles twice (measured: 4x4 and 4x2x2 tiles);
    - when that slab of decoded tiles would exceed half of what the running tasks hold
      (``parallel_tasks x peak_task_bytes``): it grows with the image's width, so memory stays
      flat at the price of decoding one-chunk tiles twice.

    Otherwise strips are exchanged and each unit is decoded once. Only tiles that read their
    own units from a store can read strips again; any other input exchanges.

    Raises
    ------
    DistconvError
        An unknown config value.
    """
    choice = str(get_default("halo_source")).lower()
    if choice not in HALO_SOURCES:
        raise DistconvError(
            f"distconv.halo_source must be one of {', '.join(HALO_SOURCES)}, got {choice!r}"
        )
    if not any(plan.depth) or not plan.from_store or choice == "exchange":
        return "exchange"
    if choice == "store":
        return "store"
    if plan.strip_read_factor <= CHEAP_STRIP_READS or 4 * plan.slab_tiles >= plan.tasks:
        return "store"
    running = plan.resources.parallel_tasks * plan.peak_task_bytes
    return "store" if plan.exchange_front_bytes > running / 2 else "exchange"


def _shape_text(shape: Sequence[int]) -> str:
    return "×".join(map(str, shape)) if len(shape) else "()"
