"""The storage seam: named byte objects, nothing more.

A backend moves whole objects by name. It never sees a path a user typed: every name
is checked by :func:`validate_name` before it reaches a backend, and the repository's
layout module is the only code that formats names.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

from drkit.errors import UsageError

_NAME_RE = re.compile(r"^[a-z]+(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$")


def validate_name(name: str) -> str:
    """Return *name* if it is a valid object name, else raise :class:`UsageError`.

    Valid names are ``kind`` or ``kind/segment/...`` where segments are plain ASCII
    words (no ``..``, no leading dot, no empty segment, no absolute path).
    """
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise UsageError(f"invalid storage object name {name!r}")
    return name


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its name and size in bytes, and (where the backend knows it)
    when the store last wrote it (``mtime``, timezone-aware, the store's clock; not
    compared, so listings from different moments stay equal)."""

    name: str
    size: int
    mtime: datetime | None = field(default=None, compare=False)


@runtime_checkable
class Storage(Protocol):
    """What every backend implements (local directory, SFTP, S3, wrappers).

    Promises:
    - ``put`` is atomic: readers see the old object, or the whole new one, never a
      part; a failed ``put`` leaves no object (and no visible temporary) behind.
      ``put`` keeps no reference to *data* once it returns (a pack's buffer is reused
      for the next pack).
    - ``get`` returns exactly the stored bytes (or the requested range) or raises
      :class:`~drkit.errors.ObjectNotFound` / :class:`~drkit.errors.StorageError`.
    - ``delete`` is idempotent: deleting a missing object is not an error.
    - ``list`` yields every complete object under a prefix, in no particular order.
    """

    @property
    def url(self) -> str:
        """Where the objects live, for messages (never carries a secret)."""
        ...

    def put(self, name: str, data: bytes | memoryview) -> None: ...

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes: ...

    def stat(self, name: str) -> ObjectInfo: ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def delete(self, name: str) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Retention:
    """Write-once retention the store enforces (S3 Object Lock): every object but
    lock files is kept at least ``days`` after it is written or extended."""

    mode: Literal["GOVERNANCE", "COMPLIANCE"]
    days: int


@runtime_checkable
class RetentionAware(Protocol):
    """Optional capability of a backend (and of the wrappers around it) whose store
    refuses to delete objects until a date.

    ``retention`` is None when the capability is off (e.g. a wrapper around a local
    directory, or an S3 repository without ``object_lock``): use :func:`retention_of`.
    """

    @property
    def retention(self) -> Retention | None: ...

    def retained_until(self, name: str) -> datetime | None:
        """The date until which *name* cannot be deleted (timezone-aware), or None if it
        carries no retention. Raises ObjectNotFound / StorageError."""
        ...

    def extend_retention(self, name: str, until: datetime) -> None:
        """Set *name*'s retention to *until* in the configured mode. Callers pass only
        dates later than the current one (stores refuse to shorten). Idempotent."""
        ...


def retention_of(storage: object) -> RetentionAware | None:
    """*storage* as a :class:`RetentionAware` when its retention is on, else None."""
    if isinstance(storage, RetentionAware) and storage.retention is not None:
        return storage
    return None
