"""numpy.pad's modes filled in place: the true-edge halo of a block already in its buffer.

:func:`distconv.ops.halo.exchange_halos` copies a block and its neighbours' strips into one
buffer; where a side has no neighbour, the margin is filled here from the buffer's own inside,
so no padded copy of the block is made.
"""

from __future__ import annotations

from collections.abc import Sequence

from distconv.backend import array_module

__all__ = ["pad_in_place"]


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
    if any(
        max(before, after) + need > size - before - after
        for size, (before, after) in zip(buffer.shape, pad)
        if before or after
    ):
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

        def at(start: int, stop: int, step: int = 1, frame=frame, axis=axis):
            index = list(frame)
            index[axis] = (
                slice(start, stop, step)
                if step > 0
                else slice(stop - 1, start - 1 if start > 0 else None, -1)
            )
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
