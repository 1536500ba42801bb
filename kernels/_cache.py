"""One small keyed cache for the engines' per-process artefacts (spectra, device copies, kernels).

Dask runs several tasks per worker process in threads, so every cache is thread-safe. What the
engines keep differs in three ways, each a constructor argument:

* ``maxsize``: how many entries (``None``: unbounded, for compiled functions and kernels, of
  which a job has a handful);
* ``policy``: which entry goes when the cache is full: ``"lru"`` (a hit makes its entry the
  newest) or ``"fifo"`` (the oldest insertion goes, hits change nothing);
* ``compute_under_lock``: build a missing value while holding the lock, so that it is built once
  per process (compilation, tracing), or outside it, where two threads may both build the same
  cheap value once and the last one is kept (FFT spectra, device copies).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from threading import Lock
from typing import Generic, Literal, TypeVar

__all__ = ["KeyedCache"]

V = TypeVar("V")


class KeyedCache(Generic[V]):
    """A bounded (or unbounded), thread-safe cache of values computed on first request.

    Parameters
    ----------
    maxsize : int or None
        Largest number of entries kept; ``None`` keeps every entry.
    policy : {'lru', 'fifo'}
        Eviction order once ``maxsize`` is exceeded: least recently *used* or first *inserted*.
    compute_under_lock : bool
        Build a missing value while holding the cache's lock (once per process) instead of
        outside it.

    Notes
    -----
    The cache iterates over its keys (oldest first) and supports ``len``, ``in`` and ``del``,
    which tests use to look inside.
    """

    def __init__(
        self,
        maxsize: int | None = None,
        *,
        policy: Literal["lru", "fifo"] = "lru",
        compute_under_lock: bool = False,
    ) -> None:
        if policy not in ("lru", "fifo"):
            raise ValueError(f"unknown eviction policy {policy!r}; choose 'lru' or 'fifo'")
        self.maxsize = maxsize
        self.policy = policy
        self.compute_under_lock = compute_under_lock
        self._entries: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = Lock()

    def get(self, key: Hashable, compute: Callable[[], V]) -> V:
        """Return the value for ``key``, calling ``compute()`` to build it when it is missing.

        Parameters
        ----------
        key : hashable
            What identifies the value (weights' bytes, FFT lengths, device id, ...).
        compute : callable
            Builds the value; called with no arguments.

        Returns
        -------
        object
            The cached or newly built value.
        """
        if self.compute_under_lock and self.maxsize is None:
            # Unbounded: hits never reorder or evict, so a plain read needs no lock and a thread
            # never waits behind another one compiling something else.
            found = self._entries.get(key, _MISSING)
            if found is not _MISSING:
                return found
        with self._lock:
            found = self._entries.get(key, _MISSING)
            if found is not _MISSING:
                if self.policy == "lru":
                    self._entries.move_to_end(key)
                return found
            if self.compute_under_lock:
                value = compute()
                self._store(key, value)
                return value
        value = compute()  # outside the lock: two threads may both compute once, harmlessly
        with self._lock:
            self._store(key, value)
        return value

    def _store(self, key: Hashable, value: V) -> None:
        """Insert under the lock, then evict the oldest entries beyond ``maxsize``."""
        self._entries[key] = value
        if self.maxsize is not None:
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __delitem__(self, key: Hashable) -> None:
        with self._lock:
            del self._entries[key]

    def __iter__(self) -> Iterator[Hashable]:
        with self._lock:
            keys = list(self._entries)  # a snapshot: other threads may insert meanwhile
        return iter(keys)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"KeyedCache({len(self)} entries, maxsize={self.maxsize}, policy={self.policy!r})"


_MISSING = object()
