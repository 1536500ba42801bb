"""Reading Zarr inputs: the codec pipeline that decodes them, chunk reads that name a damaged
chunk, and any region of a store an array was opened from (for halos read from the store)."""

from __future__ import annotations

import contextlib
import importlib.util
import threading
from collections.abc import Iterator

import dask.array as da
import zarr
from dask.array.core import getter
from zarr.storage import WrapperStore

from distconv.config import get_default
from distconv.errors import DistconvError, InputReadError, one_line
from distconv.save.layout import tile_units
from distconv.stores import redact, storage_failure

__all__ = [
    "ChunkReader",
    "MissingChunk",
    "MissingChunksAreErrors",
    "RegionReader",
    "damaged_chunk",
    "read_pipeline",
    "reading_config",
    "region_reader",
    "remember_store",
]


def read_pipeline() -> dict[str, str]:
    """Zarr config that reads inputs with the configured codec pipeline.

    Config ``distconv.read_pipeline``: ``"auto"`` uses zarrs's Rust pipeline when it is
    installed (``pip install 'distconv[fast-io]'``: it decodes a tile's chunks in parallel
    threads outside the GIL), ``"zarrs"`` requires it, ``"zarr"`` keeps zarr-python's. Outputs
    are always written by zarr-python's pipeline, whose local store writes each chunk to a
    temporary file and renames it (what resume relies on).

    Returns
    -------
    dict
        For ``zarr.config.set`` (empty: zarr-python's own).

    Raises
    ------
    DistconvError
        ``"zarrs"`` asked for but not installed, or an unknown value.
    """
    choice = str(get_default("read_pipeline")).lower()
    if choice not in ("auto", "zarrs", "zarr"):
        raise DistconvError(f"distconv.read_pipeline must be auto, zarrs or zarr, got {choice!r}")
    installed = importlib.util.find_spec("zarrs") is not None
    if choice == "zarrs" and not installed:
        raise DistconvError("read_pipeline 'zarrs' needs zarrs: pip install 'distconv[fast-io]'")
    if choice == "zarr" or not installed:
        return {}
    return {"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}


_CONFIG_LOCK = threading.RLock()


@contextlib.contextmanager
def reading_config(settings: dict[str, str]) -> Iterator[None]:
    """``zarr.config.set(settings)`` for one open, one thread at a time: zarr's config is
    process-wide, and two threads' overlapping ``with zarr.config.set`` blocks restore each
    other's values (one thread's pipeline would be left set for the whole process)."""
    with _CONFIG_LOCK, zarr.config.set(settings):
        yield


def damaged_chunk(array: zarr.Array, index: tuple, error: Exception) -> tuple[str, Exception]:
    """The region of the first stored chunk of ``index`` that fails to read, and its error.

    A task reading a tile of many chunks gets one error for all of them; reading them again one
    by one names the damaged chunk (``index`` itself when it is one chunk or cannot be split).
    """

    def text(region) -> str:
        return ", ".join(f"{s.start}:{s.stop}" if isinstance(s, slice) else str(s) for s in region)

    if not all(isinstance(s, slice) and s.step in (None, 1) for s in index):
        return text(index), error
    starts = [s.start or 0 for s in index]
    stops = [array.shape[a] if s.stop is None else s.stop for a, s in enumerate(index)]
    if all(b - a <= c for a, b, c in zip(starts, stops, array.chunks)):
        return text(index), error
    for unit in tile_units(starts, stops, array.chunks):
        region = tuple(
            slice(max(a, i * c), min(b, (i + 1) * c))
            for i, c, a, b in zip(unit, array.chunks, starts, stops)
        )
        try:
            array[region]
        except Exception as exc:
            return text(region), exc
    return text(index), error


class MissingChunk(LookupError):
    """A chunk a complete distconv output must hold is not in its store."""


_METADATA = ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")


class MissingChunksAreErrors(WrapperStore):
    """A store in which a missing chunk raises :class:`MissingChunk` instead of reading as the
    fill value: how a complete distconv output is read (every unit was written, so a missing
    one is damage, not zeros). Plain Zarr arrays keep Zarr's meaning."""

    async def get(self, key, prototype, byte_range=None):
        found = await self._store.get(key, prototype, byte_range)
        if found is None and key.rsplit("/", 1)[-1] not in _METADATA:
            raise MissingChunk(f"chunk {key} is missing from a complete distconv output")
        return found

    async def get_partial_values(self, prototype, key_ranges):
        found = await self._store.get_partial_values(prototype, key_ranges)
        for value, (key, _) in zip(found, key_ranges):
            if value is None:
                raise MissingChunk(f"chunk {key} is missing from a complete distconv output")
        return found


class ChunkReader:
    """Dask ``getitem`` for Zarr inputs: a damaged chunk becomes an :class:`InputReadError`.

    Such damage is only seen when a task reads the chunk, so the error travels back from the
    worker as this (picklable) type, which the CLI reports as bad input. A task reading a tile
    of many chunks reads them again one by one to name the damaged one.
    """

    def __init__(self, path: str):
        self.path = path

    def __call__(self, array, index, asarray=True, lock=None):
        try:
            return getter(array, index, asarray=asarray, lock=lock)
        except Exception as exc:
            # The store, not the data: the job fails, resumable. zarrs reports a chunk it
            # cannot decode as a bare OSError (no errno): that is damaged data.
            decode = type(exc) is OSError and exc.errno is None
            if storage_failure(exc) and not decode:
                raise OSError(
                    f"{self.path}: {type(exc).__name__}: {redact(one_line(exc))}"
                ) from None
            index = index if isinstance(index, tuple) else (index,)
            where, exc = damaged_chunk(array, index, exc)
            raise InputReadError(
                f"{self.path}: the chunk at [{where}] cannot be read "
                f"({type(exc).__name__}: {one_line(exc)}); the input is "
                "damaged"
            ) from None


class RegionReader:
    """Reads any region of one Zarr array in a task, with :class:`ChunkReader`'s errors.

    Picklable: it travels to workers inside the tasks that read halo strips from the store.
    """

    def __init__(self, array: zarr.Array, path: str):
        self.array, self.read = array, ChunkReader(path)

    @property
    def unit(self) -> tuple[int, ...]:
        """The shape one read decodes at a time (the chunk; the inner chunk of a shard)."""
        return tuple(self.array.chunks)

    def __call__(self, region: tuple[slice, ...]):
        return self.read(self.array, region)


# The store each array opened by distconv.open reads, by the array's graph name (a token of
# the store, shape, dtype and chunks: opening the same store again finds the same entry).
_READERS: dict[str, RegionReader] = {}


def remember_store(x: da.Array, reader: RegionReader) -> None:
    """Record the store ``x`` (fresh from :func:`distconv.open`) reads."""
    _READERS[x.name] = reader


def region_reader(x: da.Array) -> RegionReader | None:
    """The reader of the store ``x`` was opened from; None for any other array."""
    return _READERS.get(x.name)
