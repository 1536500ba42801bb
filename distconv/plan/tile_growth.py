"""How :func:`distconv.plan.tiles.plan_tiles` grows a tile, one axis at a time, and why it stops.

Two phases, both over whole units (the tile is ``groups[a]`` consecutive units along axis ``a``):

1. from one unit, on the thinnest axis first, while the tile stays under the target size, leaves
   enough tiles for every thread and fits a task's memory budget;
2. when that leaves more tiles than the task cap (config ``distconv.max_tasks``), on past the
   target until the cap is met, with only the memory budget still binding: a million tasks
   cost the scheduler more than the work they save (``benchmarks/scheduler_cost.py``).

Everything is arithmetic on unit counts per axis: nothing here grows with the number of units.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from dask.utils import format_bytes

from distconv.config import get_default
from distconv.errors import DistconvError

__all__ = ["MAX_HALO_OVERHEAD", "grow_groups", "max_tasks", "tile_count"]

#: Above this halo share of a tile's samples, tiles may grow past the target (up to 4×).
MAX_HALO_OVERHEAD = 0.25

# A verdict on a candidate tile: None (accepted) or why it was refused.
Accept = Callable[[list[int]], "str | None"]


def max_tasks(value: int | str | None = None) -> int:
    """The task cap: ``value``, else config ``distconv.max_tasks``; a positive integer.

    Raises
    ------
    DistconvError
        Not a positive integer.
    """
    value = get_default("max_tasks") if value is None else value
    try:
        cap = int(str(value).replace(",", "").strip())
    except ValueError:
        cap = 0
    if cap < 1:
        raise DistconvError(f"distconv.max_tasks must be a positive integer, got {value!r}")
    return cap


def tile_count(counts: Sequence[int], groups: Sequence[int]) -> int:
    """Tiles of ``groups`` units per axis over ``counts`` units per axis (short last tiles)."""
    return math.prod(-(-n // max(1, g)) for n, g in zip(counts, groups))


def grow_groups(
    counts: Sequence[int],
    tile_of: Callable[[Sequence[int]], tuple[int, ...]],
    accept: Accept,
    fits_memory: Callable[[Sequence[int]], bool],
    *,
    start_reason: str,
    stopped_reason: Callable[[set[str]], str],
    cap: int,
) -> tuple[tuple[int, ...], str]:
    """Units per tile along each axis, and why the tile is that size.

    Parameters
    ----------
    counts : sequence of int
        Units along each axis.
    tile_of : callable
        The largest tile's shape for ``groups``.
    accept : callable
        Phase 1's verdict on a candidate ``groups``: None, or the reason it is refused
        ("threads", "memory", "target").
    fits_memory : callable
        Whether a task on a tile of ``groups`` fits its memory budget (phase 2's only limit).
    start_reason : str
        Why phase 1 does not grow at all ("" to grow).
    stopped_reason : callable
        Phase 1's reason from the set of refusals that stopped it.
    cap : int
        The most tiles wanted (:func:`max_tasks`).

    Returns
    -------
    (tuple of int, str)
    """
    groups = [1] * len(counts)
    reason = start_reason
    while not reason:
        stopped: set[str] = set()  # why each larger tile was refused, this round
        grown = None
        for axis in _thinnest_first(groups, counts, tile_of):
            grown, refused = _grow(groups, axis, counts[axis], accept)
            stopped |= refused
            if grown:
                break
        if grown is None:
            whole = all(g >= n for g, n in zip(groups, counts))
            reason = "the whole array in one tile" if whole else stopped_reason(stopped)
            break
        groups = grown
    before = tile_count(counts, groups)
    if before <= cap:
        return tuple(groups), reason
    groups, met = _grow_to_cap(groups, counts, tile_of, fits_memory, cap)
    tasks = tile_count(counts, groups)
    if met:
        return tuple(groups), (
            f"grown to keep {tasks:,} tasks under the {cap:,} cap of distconv.max_tasks; "
            f"{reason} would make {before:,}"
        )
    return tuple(groups), (
        f"{tasks:,} tasks, over the {cap:,} cap of distconv.max_tasks: a larger tile would not "
        "fit a task's memory budget"
    )


def _thinnest_first(groups, counts, tile_of) -> list[int]:
    """Axes that can still grow, thinnest first (ties: the last axis), so tiles stay square."""
    tile = tile_of(groups)
    growable = (a for a in range(len(counts)) if groups[a] < counts[a])
    return sorted(growable, key=lambda a: (tile[a], -a))


def _grow_to_cap(groups, counts, tile_of, fits_memory, cap) -> tuple[list[int], bool]:
    """Phase 2: grow (thinnest axis first, at most doubling per step) until at most ``cap``
    tiles remain, taking on the last step the smallest growth that meets the cap. Returns the
    groups and whether the cap was met (False: the memory budget stopped the growth)."""
    groups = list(groups)
    while tile_count(counts, groups) > cap:
        for axis in _thinnest_first(groups, counts, tile_of):
            n, current = counts[axis], groups[axis]
            others = tile_count(counts, groups) // -(-n // current)
            needed = -(-n // (cap // others)) if cap >= others else n  # meets the cap alone
            top = min(2 * current, n, max(needed, current + 1))
            grown, _ = _grow(groups, axis, n, lambda c: None if fits_memory(c) else "memory", top)
            if grown is not None:
                groups = grown
                break
        else:
            return groups, False
    return groups, True


def _grow(groups, axis: int, count: int, accept: Accept, top: int | None = None):
    """``groups`` with the most units along ``axis`` that ``accept`` takes, up to ``top``
    (default twice as many; ``top`` first, then the largest accepted step below it); None when
    even one more is refused. Returns the reasons of the refusals too."""
    refused: set[str] = set()

    def trial(g: int) -> list[int] | None:
        candidate = list(groups)
        candidate[axis] = g
        verdict = accept(candidate)
        if verdict:
            refused.add(verdict)
            return None
        return candidate

    current = groups[axis]
    top = min(2 * current, count) if top is None else top
    if (best := trial(top)) is not None:
        return best, refused
    low, high, best = current + 1, top - 1, None
    while low <= high:  # the constraints tighten as the tile grows
        middle = (low + high) // 2
        if (found := trial(middle)) is not None:
            best, low = found, middle + 1
        else:
            high = middle - 1
    return best, refused


def refuse(
    candidate, tiles_of, cost, min_tiles, target, budget, halo_of: Callable[[list[int]], float]
) -> str | None:
    """Phase 1's verdict on a larger tile: None (accepted), or why it is refused."""
    if tiles_of(candidate) < min_tiles:
        return "threads"
    read, peak = cost(candidate)
    if peak > budget:
        return "memory"
    if read > target:
        thick_halo = halo_of(candidate) > MAX_HALO_OVERHEAD
        if not (thick_halo and read <= 4 * target):
            return "target"
    return None


def why_stopped(stopped: set[str], target: int, min_tiles: int) -> str:
    """Phase 1's reason, from the refusals of its last round."""
    if "memory" in stopped:
        return "a larger tile would not fit a task's memory budget"
    if "threads" in stopped:
        return f"at least {min_tiles} tiles keep every thread busy"
    return f"target {format_bytes(target)} of input per tile"
