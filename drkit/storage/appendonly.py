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

from dataclasses import dataclass

from drkit.errors import ObjectNotFound, Refused
from drkit.storage.base import Storage
from drkit.storage.wrapper import StorageWrapper

_MUTABLE_PREFIX = "locks/"
_HINT = "this host is configured append-only (repository.append_only); run forget/prune from the admin host"


@dataclass
class AppendOnlyStorage(StorageWrapper):
    """Refuses deletes and overwrites (but of ``locks/``); the rest is the inner storage's."""

    inner: Storage

    def put(self, name: str, data: bytes | memoryview) -> None:
        if not name.startswith(_MUTABLE_PREFIX):
            try:
                self.inner.stat(name)
            except ObjectNotFound:
                pass
            else:
                raise Refused(f"append-only: refusing to overwrite {name}", hint=_HINT)
        self.inner.put(name, data)

    def delete(self, name: str) -> None:
        if not name.startswith(_MUTABLE_PREFIX):
            raise Refused(f"append-only: refusing to delete {name}", hint=_HINT)
        self.inner.delete(name)

    # Extending retention destroys nothing: allowed on an append-only host (inherited).
