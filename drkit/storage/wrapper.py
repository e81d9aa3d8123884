"""The base of every storage wrapper (kopia's style: embed the inner storage, override only
what changes).

:class:`StorageWrapper` delegates each operation of :class:`~drkit.storage.base.Storage`, and
the retention capability of :class:`~drkit.storage.base.RetentionAware`, to ``inner``
unchanged. A wrapper (retrying, observing, append-only) overrides the operations it changes
and, for the retention calls, the one hook :meth:`StorageWrapper._around`, which runs each of
them. Retention is on for a wrapper exactly when it is on for the backend beneath.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TypeVar

from drkit.storage.base import ObjectInfo, Retention, RetentionAware, Storage, retention_of

T = TypeVar("T")


class StorageWrapper:
    """A :class:`Storage` that is *inner* unchanged until a subclass overrides something.

    Subclasses set ``inner`` (a dataclass field, or in ``__init__``)."""

    inner: Storage

    @property
    def url(self) -> str:
        return self.inner.url

    def put(self, name: str, data: bytes | memoryview) -> None:
        self.inner.put(name, data)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.get(name, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        return self.inner.stat(name)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, name: str) -> None:
        self.inner.delete(name)

    def close(self) -> None:
        self.inner.close()

    # -- retention (RetentionAware), delegated once for every wrapper -------------------

    def _around(self, op: str, name: str, fn: Callable[[], T]) -> T:
        """Run one retention call (*op* is ``"head"`` or ``"extend-retention"``) on the
        inner storage. The hook a wrapper overrides to retry, log or count them."""
        return fn()

    @property
    def retention(self) -> Retention | None:
        inner = retention_of(self.inner)
        return inner.retention if inner else None

    def _retaining(self, what: str) -> RetentionAware:
        inner = retention_of(self.inner)
        assert inner is not None, f"{what} needs a backend with retention (see retention_of)"
        return inner

    def retained_until(self, name: str) -> datetime | None:
        inner = self._retaining("retained_until")
        return self._around("head", name, lambda: inner.retained_until(name))

    def extend_retention(self, name: str, until: datetime) -> None:
        inner = self._retaining("extend_retention")
        self._around("extend-retention", name, lambda: inner.extend_retention(name, until))
