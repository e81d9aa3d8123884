"""Dry-run access: everything reads the real storage, nothing is written to it.

``drkit backup --dry-run`` runs the real backup against :class:`DryRunStorage`
(restic's dry-run backend wrapper): chunking, deduplication against the real index,
compression and encryption all happen, so the figures it reports are the real ones,
but writes and deletes stay in this process. Small objects written (locks, index
files, manifests) are kept in memory so they read back; packs are counted, not kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from drkit.errors import ObjectNotFound, StorageError
from drkit.storage.base import ObjectInfo, Storage

_PACKS = "data/"


@dataclass
class DryRunStorage:
    inner: Storage
    written: dict[str, bytes | None] = field(default_factory=dict)
    """Objects "written" in this process (None: a pack, counted but not kept)."""
    sizes: dict[str, int] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        return self.inner.url

    def put(self, name: str, data: bytes | memoryview) -> None:
        self.written[name] = None if name.startswith(_PACKS) else bytes(data)
        self.sizes[name] = len(data)
        self.deleted.discard(name)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if name in self.written:
            data = self.written[name]
            if data is None:
                raise StorageError(message=f"dry run: pack {name} was not kept")
            return data[offset:] if length is None else data[offset : offset + length]
        if name in self.deleted:
            raise ObjectNotFound(name=name)
        return self.inner.get(name, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        if name in self.written:
            return ObjectInfo(name, self.sizes[name])
        if name in self.deleted:
            raise ObjectNotFound(name=name)
        return self.inner.stat(name)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        for info in self.inner.list(prefix):
            if info.name not in self.deleted and info.name not in self.written:
                yield info
        for name in list(self.written):
            if name.startswith(prefix):
                yield ObjectInfo(name, self.sizes[name])

    def delete(self, name: str) -> None:
        self.written.pop(name, None)
        self.sizes.pop(name, None)
        self.deleted.add(name)

    def close(self) -> None:
        self.inner.close()
