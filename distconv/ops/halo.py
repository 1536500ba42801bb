"""Haloed blocks: every chunk plus ``depth`` samples of its neighbours, true edges padded.

Each output block is built once, in one preallocated buffer: the chunk, the strips its
neighbours cut for it, and, at the true array edges, the padding (numpy.pad's modes, filled in
place). Per input chunk the graph has one task that cuts every strip its neighbours need, so a
block waits on a handful of small transfers, not on one slicing task per neighbour and a
concatenate plus a pad copy (``dask.array.overlap`` then ``numpy.pad``: about three times the
tasks and two extra copies of every block).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import partial
from typing import Sequence

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from distconv.backend import array_module
from distconv.plan import merge_small_chunks


def exchange_halos(x: da.Array, depth: Sequence[int], pad_mode: str | None, cval: float = 0.0,
                   dtype=None) -> tuple[da.Array, da.Array]:
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

    counts = tuple(len(c) for c in chunks)
    periodic = tuple(pad_mode == "wrap" and d > 0 and n > 1 for d, n in zip(depth, counts))

    def sides(axis: int, index: int) -> tuple[int, int]:
        """Halo width before and after chunk ``index`` along ``axis``."""
        d = depth[axis]
        if pad_mode is not None or periodic[axis]:
            return d, d
        return (d if index > 0 else 0), (d if index < counts[axis] - 1 else 0)

    def neighbour(axis: int, index: int) -> int | None:
        """Index of the chunk ``index`` borders on along ``axis`` (None: a true edge)."""
        if 0 <= index < counts[axis]:
            return index
        return index % counts[axis] if periodic[axis] else None

    name = "halo-" + tokenize(x.name, depth, pad_mode, cval, dtype)
    cut_name = "halo-cut-" + tokenize(name)
    offsets = [o for o in itertools.product(*[(-1, 0, 1) if d else (0,) for d in depth])
               if any(o)]

    # Receiver by receiver: which strip of which sender goes where in the buffer.
    placements: dict[tuple[int, ...], list] = {}
    requests: dict[tuple[int, ...], list[tuple[slice, ...]]] = {}
    for receiver in np.ndindex(*counts):
        placed = []
        for offset in offsets:
            sender = tuple(neighbour(a, i + o) for a, (i, o) in enumerate(zip(receiver, offset)))
            if None in sender:
                continue
            source, target = [], []
            for axis, (o, r, s) in enumerate(zip(offset, receiver, sender)):
                before, _ = sides(axis, r)
                size, d = chunks[axis][r], depth[axis]
                if o == 0:
                    source.append(slice(None))
                    target.append(slice(before, before + size))
                elif o < 0:
                    source.append(slice(chunks[axis][s] - d, chunks[axis][s]))
                    target.append(slice(0, d))
                else:
                    source.append(slice(0, d))
                    target.append(slice(before + size, before + size + d))
            wanted = requests.setdefault(sender, [])
            wanted.append(tuple(source))
            placed.append((sender, len(wanted) - 1, tuple(target)))
        placements[receiver] = placed

    graph: dict = {}
    for sender, regions in requests.items():
        graph[(cut_name,) + sender] = (partial(_cut_strips, tuple(regions)), (x.name,) + sender)
    out_chunks = tuple(
        tuple(sum(sides(axis, j)) + size for j, size in enumerate(chunks[axis]))
        for axis in range(x.ndim)
    )
    for receiver, placed in placements.items():
        shape = tuple(out_chunks[axis][i] for axis, i in enumerate(receiver))
        side_widths = [sides(axis, i) for axis, i in enumerate(receiver)]
        centre = tuple(slice(before, before + chunks[axis][i])
                       for axis, (i, (before, _)) in enumerate(zip(receiver, side_widths)))
        # Sides to pad: true edges (no neighbour) that still carry a halo.
        pad = tuple(
            (before if neighbour(axis, i - 1) is None else 0,
             after if neighbour(axis, i + 1) is None else 0)
            for axis, (i, (before, after)) in enumerate(zip(receiver, side_widths))
        )
        layout = _BlockLayout(shape, dtype, centre, tuple((p[1], p[2]) for p in placed),
                              pad, pad_mode, cval)
        graph[(name,) + receiver] = (partial(_assemble, layout), (x.name,) + receiver,
                                     *[(cut_name,) + p[0] for p in placed])
    hlg = HighLevelGraph.from_collections(name, graph, dependencies=[x])
    meta = array_module(x._meta).empty((0,) * x.ndim, dtype=dtype)
    return x, da.Array(hlg, name, out_chunks, meta=meta)


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


def pad_in_place(buffer, pad: Sequence[tuple[int, int]], mode: str, cval: float = 0.0):
    """Fill the outer ``pad`` widths of ``buffer`` from its inside, as ``numpy.pad`` would.

    ``buffer`` holds valid data except the ``pad`` margins. Axes are filled one after another
    (corners follow from the axes filled before, as in numpy.pad). When the valid part is too
    short for the mode's reflection, numpy.pad itself runs on a copy.

    Returns
    -------
    array
        ``buffer`` (filled) or, in that fallback, a new padded array.
    """
    valid = tuple(slice(before, size - after) for size, (before, after) in zip(buffer.shape, pad))
    need = {"symmetric": 0, "wrap": 0, "reflect": 1}.get(mode, -1)
    if any(max(before, after) + need > size - before - after
           for size, (before, after) in zip(buffer.shape, pad) if before or after):
        xp = array_module(buffer)
        extra = {"constant_values": cval} if mode == "constant" else {}
        return xp.pad(buffer[valid], pad, mode=mode, **extra)
    for axis, (before, after) in enumerate(pad):
        if not (before or after):
            continue
        size = buffer.shape[axis]
        lo, hi = before, size - after
        # Earlier axes are complete over their whole extent; later ones only inside.
        frame = list(valid)
        frame[:axis] = [slice(None)] * axis

        def at(start: int, stop: int, step: int = 1):
            index = list(frame)
            index[axis] = slice(start, stop, step) if step > 0 else \
                slice(stop - 1, start - 1 if start > 0 else None, -1)
            return tuple(index)

        if before:
            buffer[at(0, lo)] = _source(buffer, at, mode, cval, lo, hi, before, True)
        if after:
            buffer[at(hi, size)] = _source(buffer, at, mode, cval, lo, hi, after, False)
    return buffer


def _source(buffer, at, mode: str, cval: float, lo: int, hi: int, width: int, before: bool):
    """The values numpy.pad's ``mode`` puts in the ``width`` samples before ``lo`` (or after
    ``hi``) along one axis; ``at(start, stop, step)`` indexes that axis inside the frame."""
    if mode == "constant":
        return cval
    if mode == "edge":
        return buffer[at(lo, lo + 1)] if before else buffer[at(hi - 1, hi)]
    if mode == "wrap":
        return buffer[at(hi - width, hi)] if before else buffer[at(lo, lo + width)]
    shift = 1 if mode == "reflect" else 0  # reflect skips the edge sample; symmetric repeats it
    if mode not in ("reflect", "symmetric"):
        raise ValueError(f"unsupported pad mode {mode!r}")
    if before:
        return buffer[at(lo + shift, lo + shift + width, -1)]
    return buffer[at(hi - shift - width, hi - shift, -1)]
