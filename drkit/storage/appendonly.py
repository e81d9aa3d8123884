"""Append-only access: this host may add objects, never delete or replace them.

``repository.append_only: true`` wraps the storage in :class:`AppendOnlyStorage`:
deleting, or writing over an existing object, is refused with a clear error. The one
exception is the host's own lock files under ``locks/`` (a lock must be removable
when the run ends). Backups need nothing else: packs, index files and manifests are
only ever added.

This is enforcement by drkit on a host that runs drkit honestly. Against an attacker
who controls the host it must be backed by the storage itself: S3 Object Lock
(``repository.s3.object_lock``), or server-side restrictions of the SFTP account
(see docs/storage.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from drkit.errors import ObjectNotFound, Refused
from drkit.storage.base import ObjectInfo, Retention, Storage, retention_of

_MUTABLE_PREFIX = "locks/"
_HINT = "this host is configured append-only (repository.append_only); run forget/prune from the admin host"


@dataclass
class AppendOnlyStorage:
    inner: Storage

    @property
    def url(self) -> str:
        return self.inner.url

    def put(self, name: str, data: bytes | memoryview) -> None:
        if not name.startswith(_MUTABLE_PREFIX):
            try:
                self.inner.stat(name)
            except ObjectNotFound:
                pass
            else:
                raise Refused(f"append-only: refusing to overwrite {name}", hint=_HINT)
        self.inner.put(name, data)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.get(name, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        return self.inner.stat(name)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, name: str) -> None:
        if not name.startswith(_MUTABLE_PREFIX):
            raise Refused(f"append-only: refusing to delete {name}", hint=_HINT)
        self.inner.delete(name)

    @property
    def retention(self) -> Retention | None:
        inner = retention_of(self.inner)
        return inner.retention if inner else None

    def retained_until(self, name: str) -> datetime | None:
        inner = retention_of(self.inner)
        assert inner is not None, "retained_until needs a backend with retention (see retention_of)"
        return inner.retained_until(name)

    def extend_retention(self, name: str, until: datetime) -> None:
        # Extending protection destroys nothing: allowed on an append-only host.
        inner = retention_of(self.inner)
        assert inner is not None, "extend_retention needs a backend with retention (see retention_of)"
        inner.extend_retention(name, until)

    def close(self) -> None:
        self.inner.close()
