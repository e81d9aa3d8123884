"""Logging and counters around a backend, and :func:`wrap_storage` (the stack the repository uses).

:class:`ObservedStorage` logs every operation at DEBUG (name, bytes, seconds) and every
failure at WARNING with its one-line message, and counts operations and bytes in
:class:`StorageStats` (for ``--json`` summaries, metrics and benchmarks). It never logs
object contents, credentials or URLs with secrets (backends' ``url`` carries none).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from drkit.errors import DrkitError, ObjectNotFound
from drkit.storage.base import ObjectInfo, Storage
from drkit.storage.retry import RetryingStorage, RetryPolicy
from drkit.storage.wrapper import StorageWrapper

log = logging.getLogger("drkit.storage")

T = TypeVar("T")


@dataclass
class StorageStats:
    """Counters of one storage stack (thread-safe updates)."""

    puts: int = 0
    gets: int = 0
    stats: int = 0
    lists: int = 0
    deletes: int = 0
    errors: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    seconds_up: float = 0.0
    seconds_down: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: float) -> None:
        with self._lock:
            for key, value in deltas.items():
                setattr(self, key, getattr(self, key) + value)

    def as_dict(self) -> dict[str, float]:
        with self._lock:
            return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


@dataclass
class ObservedStorage(StorageWrapper):
    """A :class:`Storage` that logs and counts the operations of the one it wraps.

    Behaviour (results, errors, atomicity) is exactly the inner backend's.
    """

    inner: Storage
    stats: StorageStats = field(default_factory=StorageStats)

    def _timed(self, op: str, name: str, fn: Callable[[], T]) -> tuple[T, float]:
        start = time.monotonic()
        try:
            result = fn()
        except ObjectNotFound as exc:  # often expected (does the repository exist yet?)
            self.stats.add(errors=1)
            log.debug("storage %s %s: %s", op, name, exc.message)
            raise
        except DrkitError as exc:
            self.stats.add(errors=1)
            log.warning("storage %s %s failed: %s", op, name, exc.message, extra={"op": op, "object": name})
            raise
        return result, time.monotonic() - start

    def put(self, name: str, data: bytes | memoryview) -> None:
        size = len(memoryview(data).cast("B"))
        _, secs = self._timed("put", name, lambda: self.inner.put(name, data))
        self.stats.add(puts=1, bytes_up=size, seconds_up=secs)
        log.debug("put %s %d bytes in %.3fs", name, size, secs)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        data, secs = self._timed("get", name, lambda: self.inner.get(name, offset, length))
        self.stats.add(gets=1, bytes_down=len(data), seconds_down=secs)
        log.debug("get %s [%d:+%s] %d bytes in %.3fs", name, offset, length, len(data), secs)
        return data

    def stat(self, name: str) -> ObjectInfo:
        info, _ = self._timed("stat", name, lambda: self.inner.stat(name))
        self.stats.add(stats=1)
        return info

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        items, secs = self._timed("list", prefix, lambda: list(self.inner.list(prefix)))
        self.stats.add(lists=1)
        log.debug("list %s: %d objects in %.3fs", prefix, len(items), secs)
        return iter(items)

    def delete(self, name: str) -> None:
        self._timed("delete", name, lambda: self.inner.delete(name))
        self.stats.add(deletes=1)
        log.debug("delete %s", name)

    def _around(self, op: str, name: str, fn: Callable[[], T]) -> T:
        result, _ = self._timed(op, name, fn)
        if op == "head":
            self.stats.add(stats=1)
        else:
            log.debug("%s %s", op, name)
        return result


def wrap_storage(storage: Storage, policy: RetryPolicy | None = None) -> ObservedStorage:
    """The stack the repository uses: logging+counters over retries over *storage*.

    ``wrap_storage(open_storage(url, options))``; the result's ``stats`` holds the counters.
    """
    return ObservedStorage(RetryingStorage(storage, policy or RetryPolicy()))


def unwrap(storage: Storage) -> Storage:
    """The backend under any wrappers (observing, retrying, append-only), for
    backend-specific maintenance such as ``remove_stale_temporaries``."""
    while isinstance(storage, StorageWrapper):
        storage = storage.inner
    return storage


def local_root(storage: Storage) -> str | None:
    """The directory *storage* keeps its objects in when it is a local directory
    (beneath any wrappers), else None."""
    from drkit.storage.local import LocalStorage

    inner = unwrap(storage)
    return str(inner.root) if isinstance(inner, LocalStorage) else None
