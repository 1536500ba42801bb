"""Haloed blocks: every chunk plus ``depth`` samples of its neighbours, true edges padded.

Each output block is built once, in one preallocated buffer: the chunk, the strips its
neighbours cut for it, and, at the true array edges, the padding (numpy.pad's modes, filled in
place). Per input chunk the graph has one task that cuts every strip its neighbours need, so a
block waits on a handful of small transfers, not on one slicing task per neighbour and a
concatenate plus a pad copy (``dask.array.overlap`` then ``numpy.pad``: about three times the
tasks and two extra copies of every block).

For blocks of a Zarr store the strips may instead be read again from the store
(``strips_from``, chosen by :func:`distconv.plan.tiles.choose_halo_source`): then no decoded
block waits for its neighbours, and memory does not grow with the image's width.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from numbers import Number
from operator import getitem, itemgetter

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from distconv.backend import array_module
from distconv.errors import DistconvError
from distconv.ops.padding import pad_in_place
from distconv.plan.arguments import MODES, normalize_mode
from distconv.reading import RegionReader

__all__ = [
    "exchange_halos",
    "merge_small_chunks",
    "normalize_boundary",
    "normalize_depth",
    "pad_in_place",
    "strip_reads",
]


def exchange_halos(
    x: da.Array,
    depth: Sequence[int],
    pad_mode: str | None,
    cval: float = 0.0,
    dtype=None,
    strips_from: RegionReader | None = None,
) -> tuple[da.Array, da.Array]:
    """Give every block ``depth`` samples of its neighbours on both sides of every axis.

    Parameters
    ----------
    x : dask.array.Array
        The input; chunks thinner than the halo are merged first.
    depth : sequence of int
        Halo width per axis (0: no halo on that axis).
    pad_mode : str or None
        numpy.pad mode for the true array edges ("symmetric", "reflect", "edge", "wrap",
        "constant"); ``None`` leaves true edges without a halo (blocks there are smaller).
        "wrap" on an axis with several chunks takes the halo from the chunk at the other end.
    cval : float
        Fill value of mode "constant".
    dtype : dtype, optional
        dtype of the haloed blocks (the cast happens while copying into the buffer).
    strips_from : RegionReader, optional
        The store ``x`` reads (its blocks whole stored units): the strips a block sends are
        then read again from there by a task of their own instead of cut from the decoded
        block, and each block reads its own units once its strips are ready, so no decoded
        block waits in memory for its neighbours (``halo_source="store"``).

    Returns
    -------
    (merged, haloed)
        ``x`` with thin chunks merged, and the haloed array: its blocks are ``2 * depth`` larger
        than ``merged``'s (less at true edges when ``pad_mode`` is None).
    """
    depth = tuple(int(d) for d in depth)
    dtype = np.dtype(dtype or x.dtype)
    chunks = tuple(merge_small_chunks(c, d) for c, d in zip(x.chunks, depth))
    if chunks != x.chunks:
        x = x.rechunk(chunks)
    if not any(depth):
        return x, x.astype(dtype, copy=False)

    grid = _HaloGrid(chunks, depth, pad_mode)
    name = "halo-" + tokenize(x.name, depth, pad_mode, cval, dtype)
    cut_name = "halo-cut-" + tokenize(name)
    requests, layouts, senders = _route_strips(grid, dtype, pad_mode, cval)

    graph: dict = {}
    origins = [np.cumsum((0,) + c[:-1]).tolist() for c in chunks]
    if strips_from is not None:
        unit = strips_from.unit
        # Which units a read decodes depends on the block's origin modulo the unit only.
        phases = [[o % u for o in axis] for axis, u in zip(origins, unit)]
    shared: dict = {}  # one object for equal regions and reads, whichever block they belong to
    for sender, asked in requests.items():
        key = tuple(map(itemgetter(2), asked))  # the numbers of the strips asked, in order
        regions = shared.get(key)
        if regions is None:
            regions = shared[key] = tuple(map(itemgetter(1), asked))
        if strips_from is None:
            task = (partial(_cut_strips, regions), (x.name,) + sender)
        else:
            phase = tuple(map(getitem, phases, sender))
            size = tuple(map(getitem, chunks, sender))
            found = shared.get((key, phase, size))
            if found is None:
                reads, picks = strip_reads(regions, phase, size, depth, unit)
                boxes = tuple(
                    tuple((r.start - p, r.stop - p) for r, p in zip(read, phase)) for read in reads
                )
                found = shared[(key, phase, size)] = (boxes, picks)
            # Reads as boxes from the block's origin: slices are made in the task, not here.
            origin = tuple(map(getitem, origins, sender))
            task = (partial(_read_strips, strips_from, origin, *found),)
        graph[(cut_name,) + sender] = task
    for receiver, layout in layouts.items():
        cuts = [(cut_name,) + sender for sender in senders[receiver]]
        if strips_from is None:
            graph[(name,) + receiver] = (partial(_assemble, layout), (x.name,) + receiver, *cuts)
        else:
            # The block reads its own units when its strips are ready: nothing decoded waits.
            origin = tuple(map(getitem, origins, receiver))
            graph[(name,) + receiver] = (
                partial(_read_and_assemble, layout, strips_from, origin),
                *cuts,
            )
    # x stays a dependency even when no task reads its blocks: save() finds the input's store
    # by its layer (refusing to overwrite it, recording provenance).
    hlg = HighLevelGraph.from_collections(name, graph, dependencies=[x])
    meta = array_module(x._meta).empty((0,) * x.ndim, dtype=dtype)
    return x, da.Array(hlg, name, grid.out_chunks(), meta=meta)


def merge_small_chunks(chunks: Sequence[int], depth: int) -> tuple[int, ...]:
    """Merge neighbouring chunks along one axis until every chunk holds at least ``depth``.

    A halo is taken from the neighbouring chunk, so no chunk may be thinner than the halo.

    Parameters
    ----------
    chunks : sequence of int
        Chunk sizes along the axis.
    depth : int
        Halo width on that axis.

    Returns
    -------
    tuple of int
        The merged chunk sizes (the same total); unchanged when none is thinner than ``depth``.
    """
    chunks = tuple(int(c) for c in chunks)
    if depth == 0 or min(chunks) >= depth or len(chunks) == 1:
        return chunks
    merged: list[int] = []
    current = 0
    for size in chunks:
        current += size
        if current >= depth:
            merged.append(current)
            current = 0
    if current:
        if merged:
            merged[-1] += current
        else:
            merged.append(current)
    return tuple(merged)


def normalize_depth(depth, ndim: int) -> tuple[int, ...]:
    """Halo width per axis from ``map_overlap``-style ``depth``.

    Parameters
    ----------
    depth : int, sequence of int or dict of {axis: int}
        One width for every axis, one per axis, or widths for some axes (others get 0).
    ndim : int
        Rank of the array.

    Returns
    -------
    tuple of int
        Non-negative width per axis.

    Raises
    ------
    DistconvError
        An axis out of range, the wrong number of values, or a negative or fractional width.
    """
    if isinstance(depth, dict):
        values = [0] * ndim
        for axis, d in depth.items():
            if not -ndim <= int(axis) < ndim:
                raise DistconvError(f"depth axis {axis} is out of range for {ndim}-D input")
            values[int(axis) % ndim] = d
    elif isinstance(depth, Number):
        values = [depth] * ndim
    else:
        values = list(depth)
        if len(values) != ndim:
            raise DistconvError(f"depth has {len(values)} values for {ndim}-D input")
    if any(int(d) != d or d < 0 for d in values):
        raise DistconvError(f"depth must be non-negative integers, got {depth!r}")
    return tuple(int(d) for d in values)


def normalize_boundary(boundary, cval: float) -> tuple[str | None, float]:
    """Boundary → (numpy.pad mode or None for no padding, fill value).

    Parameters
    ----------
    boundary : str or number
        A scipy.ndimage mode, ``"periodic"`` (= ``wrap``), ``"none"`` (no halo at the true
        edges) or a number (constant padding with that value).
    cval : float
        Fill value for ``boundary="constant"``.

    Returns
    -------
    (str or None, float)
        The :func:`exchange_halos` ``pad_mode`` and its fill value.

    Raises
    ------
    DistconvError
        An unknown boundary.
    """
    if isinstance(boundary, Number) and not isinstance(boundary, bool):
        return "constant", float(boundary)
    if boundary == "none":
        return None, cval
    if boundary == "periodic":
        boundary = "wrap"
    if not isinstance(boundary, str) or boundary not in MODES:
        raise DistconvError(
            f"unknown boundary {boundary!r}; choose one of: "
            f"{', '.join(MODES)}, periodic, none, or a number"
        )
    return MODES[normalize_mode(boundary)], float(cval)


def _route_strips(grid: _HaloGrid, dtype: np.dtype, pad_mode: str | None, cval: float):
    """Receiver by receiver: which strip of which sender goes where in its buffer.

    Returns ``requests`` (per sender: the strips its neighbours ask of it, in the order they
    ask, each ``(steps, region, number, target)``), ``layouts`` (per receiver: its
    :class:`_BlockLayout`) and ``senders`` (per receiver: where each of its strips comes from).
    A block's geometry depends on a few values per axis (:meth:`_HaloGrid.classes`), so it is
    worked out once per class of blocks, not once per block.
    """
    classes = [_numbered(row) for row in grid.classes()]  # small ints hash fast
    near = grid.near()
    templates: dict = {}
    serial = itertools.count()
    shared: dict = {}  # equal layouts are one object
    requests: dict[tuple[int, ...], list[tuple]] = {}
    layouts: dict[tuple[int, ...], _BlockLayout] = {}
    senders: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
    for receiver in itertools.product(*[range(n) for n in grid.counts]):
        kind = tuple(map(getitem, classes, receiver))
        template = templates.get(kind)
        if template is None:
            shape, centre, pad, strips = grid.template(receiver)
            # Each strip numbered: a sender's requests are keyed by the numbers, cheap to hash.
            numbered = tuple(
                (steps, source, next(serial), target) for steps, source, target in strips
            )
            template = templates[kind] = (shape, centre, pad, numbered)
        around = tuple(map(getitem, near, receiver))
        indices, came_from = [], []
        for strip in template[3]:
            sender = tuple(map(getitem, around, strip[0]))
            asked = requests.get(sender)
            if asked is None:
                asked = requests[sender] = []
            asked.append(strip)
            indices.append(len(asked) - 1)
            came_from.append(sender)
        senders[receiver] = came_from
        layout = shared.get((kind, tuple(indices)))
        if layout is None:
            shape, centre, pad, strips = template
            placed = tuple((index, target) for index, (_, _, _, target) in zip(indices, strips))
            layout = _BlockLayout(shape, dtype, centre, placed, pad, pad_mode, cval)
            shared[(kind, tuple(indices))] = layout
        layouts[receiver] = layout
    return requests, layouts, senders


def _numbered(values: list) -> list[int]:
    """Each value replaced by the number of its first occurrence."""
    seen: dict = {}
    return [seen.setdefault(value, len(seen)) for value in values]


class _HaloGrid:
    """The chunk grid's geometry: halo widths, neighbours, and where each strip goes."""

    def __init__(
        self, chunks: tuple[tuple[int, ...], ...], depth: tuple[int, ...], pad_mode: str | None
    ):
        self.chunks, self.depth, self.pad_mode = chunks, depth, pad_mode
        self.counts = tuple(len(c) for c in chunks)
        # "wrap" on an axis with several chunks: the halo comes from the other end.
        self.periodic = tuple(
            pad_mode == "wrap" and d > 0 and n > 1 for d, n in zip(depth, self.counts)
        )

    def sides(self, axis: int, index: int) -> tuple[int, int]:
        """Halo width before and after chunk ``index`` along ``axis``."""
        d = self.depth[axis]
        if self.pad_mode is not None or self.periodic[axis]:
            return d, d
        return (d if index > 0 else 0), (d if index < self.counts[axis] - 1 else 0)

    def neighbour(self, axis: int, index: int) -> int | None:
        """The chunk at ``index`` along ``axis``, wrapped if periodic (None: beyond an edge)."""
        if 0 <= index < self.counts[axis]:
            return index
        return index % self.counts[axis] if self.periodic[axis] else None

    def classes(self) -> list[list[tuple]]:
        """Per axis and block index, what a block's geometry along that axis depends on: its
        halo widths, its size and its neighbours' sizes (None: no neighbour)."""
        rows = []
        for axis, sizes in enumerate(self.chunks):
            row = []
            for i, size in enumerate(sizes):
                before, after = self.neighbour(axis, i - 1), self.neighbour(axis, i + 1)
                row.append(
                    (
                        self.sides(axis, i),
                        size,
                        None if before is None else sizes[before],
                        None if after is None else sizes[after],
                    )
                )
            rows.append(row)
        return rows

    def near(self) -> list[list[tuple[int | None, int, int | None]]]:
        """Per axis and block index: the blocks before, at and after it (None: beyond an edge)."""
        return [
            [(self.neighbour(axis, i - 1), i, self.neighbour(axis, i + 1)) for i in range(n)]
            for axis, n in enumerate(self.counts)
        ]

    def template(self, receiver: tuple[int, ...]) -> tuple:
        """A block's (shape, centre, edge padding, strips); a strip is (steps, region of the
        sender, target), its sender found by ``steps`` into :meth:`near` (0 before, 1 at,
        2 after) along each axis."""
        strips = tuple(
            (tuple(o + 1 for o in offset), source, target)
            for offset, source, target in self.strips(receiver)
        )
        return (
            self.block_shape(receiver),
            self.centre(receiver),
            self.edge_padding(receiver),
            strips,
        )

    def out_chunks(self) -> tuple[tuple[int, ...], ...]:
        return tuple(
            tuple(sum(self.sides(axis, j)) + size for j, size in enumerate(sizes))
            for axis, sizes in enumerate(self.chunks)
        )

    def block_shape(self, receiver: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(
            sum(self.sides(axis, i)) + self.chunks[axis][i] for axis, i in enumerate(receiver)
        )

    def centre(self, receiver: tuple[int, ...]) -> tuple[slice, ...]:
        """Where the receiver's own chunk goes in its buffer."""
        return tuple(
            slice(self.sides(axis, i)[0], self.sides(axis, i)[0] + self.chunks[axis][i])
            for axis, i in enumerate(receiver)
        )

    def edge_padding(self, receiver: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
        """Widths to pad per side: true edges (no neighbour) that still carry a halo."""
        pad = []
        for axis, i in enumerate(receiver):
            before, after = self.sides(axis, i)
            pad.append(
                (
                    before if self.neighbour(axis, i - 1) is None else 0,
                    after if self.neighbour(axis, i + 1) is None else 0,
                )
            )
        return tuple(pad)

    def strips(self, receiver: tuple[int, ...]):
        """(offset to the sender, region of the sender's chunk, target in the receiver's buffer)
        per neighbour, the 3**ndim - 1 of them less true edges and axes without a halo."""
        offsets = itertools.product(*[(-1, 0, 1) if d else (0,) for d in self.depth])
        for offset in offsets:
            if not any(offset):
                continue
            sender = tuple(
                self.neighbour(a, i + o) for a, (i, o) in enumerate(zip(receiver, offset))
            )
            if None in sender:
                continue
            source, target = [], []
            for axis, (o, r, s) in enumerate(zip(offset, receiver, sender)):
                before = self.sides(axis, r)[0]
                size, d = self.chunks[axis][r], self.depth[axis]
                if o == 0:
                    source.append(slice(None))
                    target.append(slice(before, before + size))
                elif o < 0:
                    source.append(slice(self.chunks[axis][s] - d, self.chunks[axis][s]))
                    target.append(slice(0, d))
                else:
                    source.append(slice(0, d))
                    target.append(slice(before + size, before + size + d))
            yield offset, tuple(source), tuple(target)


@dataclass(frozen=True)
class _BlockLayout:
    """Where everything goes in one haloed block's buffer."""

    shape: tuple[int, ...]
    dtype: np.dtype
    centre: tuple[slice, ...]
    strips: tuple[tuple[int, tuple[slice, ...]], ...]  # (index in the sender's cut, target)
    pad: tuple[tuple[int, int], ...]
    pad_mode: str | None
    cval: float


def _cut_strips(regions: tuple[tuple[slice, ...], ...], chunk):
    """Copies of the regions of one chunk that its neighbours need (a view would pin the
    whole chunk in memory and in transfers)."""
    return tuple(chunk[region].copy() for region in regions)


def _read_strips(reader: RegionReader, origin, boxes, picks):
    """A block's strips read from the store: each box (``(start, stop)`` per axis from the
    block's ``origin``) once, then every strip copied out of the read that holds it (copies: a
    view would pin the whole read)."""
    got = [
        reader(tuple(slice(o + lo, o + hi) for (lo, hi), o in zip(box, origin))) for box in boxes
    ]
    return tuple(got[index][where].copy() for index, where in picks)


def strip_reads(regions, origin, size, depth, unit):
    """What one block's strip task reads: the whole block, or each face band its neighbours
    need, whichever decodes fewer stored units; and per strip, (read, slice within it).

    ``regions`` are strips relative to the block (full slices on axes without an offset),
    ``origin`` and ``size`` the block's place in the array, ``unit`` the stored unit shape.
    """
    spans = [
        [(s.start or 0, size[a] if s.stop is None else s.stop) for a, s in enumerate(region)]
        for region in regions
    ]
    faces = sorted(
        {(a, lo == 0) for span in spans for a, (lo, hi) in enumerate(span) if hi - lo < size[a]}
    )

    def band(axis: int, low: bool) -> list[tuple[int, int]]:
        cut = (0, depth[axis]) if low else (size[axis] - depth[axis], size[axis])
        return [cut if a == axis else (0, n) for a, n in enumerate(size)]

    def units(box) -> int:
        return math.prod(
            (o + hi - 1) // u - (o + lo) // u + 1 for (lo, hi), o, u in zip(box, origin, unit)
        )

    def holder(span, boxes) -> int | None:
        inside = [all(b[0] <= lo and hi <= b[1] for (lo, hi), b in zip(span, box)) for box in boxes]
        return inside.index(True) if True in inside else None

    whole = [(0, n) for n in size]
    boxes = [band(a, low) for a, low in faces]
    # A strip as thick as the block on every axis with an offset lies in no band.
    if sum(units(box) for box in boxes) >= units(whole) or any(
        holder(span, boxes) is None for span in spans
    ):
        boxes = [whole]
    picks = []
    for span in spans:
        index = holder(span, boxes)
        box = boxes[index]
        picks.append((index, tuple(slice(lo - b[0], hi - b[0]) for (lo, hi), b in zip(span, box))))
    reads = tuple(tuple(slice(o + lo, o + hi) for (lo, hi), o in zip(box, origin)) for box in boxes)
    return reads, tuple(picks)


def _read_and_assemble(layout: _BlockLayout, reader: RegionReader, origin, *cuts):
    """:func:`_assemble` of the block at ``origin``, read from the store here once its strips
    have arrived (its size is that of its place in the buffer)."""
    region = tuple(slice(o, o + c.stop - c.start) for o, c in zip(origin, layout.centre))
    return _assemble(layout, reader(region), *cuts)


def _assemble(layout: _BlockLayout, chunk, *cuts):
    """Build one haloed block: chunk and strips copied into a buffer, true edges padded."""
    xp = array_module(chunk)
    buffer = xp.empty(layout.shape, dtype=layout.dtype)
    buffer[layout.centre] = chunk
    for cut, (index, target) in zip(cuts, layout.strips):
        buffer[target] = cut[index]
    if any(before or after for before, after in layout.pad):
        buffer = pad_in_place(buffer, layout.pad, layout.pad_mode, layout.cval)
    return buffer
