"""Reading the blobs a restore needs from a pack: a few merged ranged reads.

Shared by the restore's threads (:mod:`drkit.services.restore`) and its worker
processes (:mod:`drkit.services.restoreprocs`, which import as little as they can)."""

from __future__ import annotations

from typing import Any, Iterator

_MERGE_GAP = 1024 * 1024


class BlobUse:
    """One blob a window needs, and where it goes: (file, offset in file) targets.
    (A plain slotted class: one is built per chunk planned, in a third of a
    dataclass's time.)"""

    __slots__ = ("chunk_id", "offset", "length", "blob_type", "raw_length", "targets")

    def __init__(self, chunk_id: bytes, offset: int, length: int, blob_type: int, raw_length: int) -> None:
        self.chunk_id = chunk_id
        self.offset = offset
        self.length = length
        self.blob_type = blob_type
        self.raw_length = raw_length
        self.targets: list[tuple[Any, int]] = []
        """(file plan, offset in the file) pairs: where the plaintext goes."""


def fetch_ranges(storage: Any, name: str, ordered: list[BlobUse]) -> Iterator[tuple[list[BlobUse], memoryview]]:
    """Read the byte ranges of *ordered* blobs (sorted by offset) from pack *name*,
    merging ranges whose gap is small, so a mostly-needed pack is one read."""
    group: list[BlobUse] = []
    start = end = 0
    for u in ordered:
        if group and u.offset - end > _MERGE_GAP:
            yield group, memoryview(storage.get(name, start, end - start))
            group = []
        if not group:
            start = u.offset
        group.append(u)
        end = max(end, u.offset + u.length)
    if group:
        yield group, memoryview(storage.get(name, start, end - start))


def read_ranges(storage: Any, pack_id: str, ordered: list[BlobUse]) -> list[tuple[list[BlobUse], memoryview]] | str:
    """:func:`fetch_ranges` of pack *pack_id*, every read done now; or, when the pack
    cannot be read (missing, a storage error, refused by the storage's checks), why,
    as a line naming the pack: each file of these blobs fails with it."""
    from drkit.errors import IntegrityError, ObjectNotFound, StorageError
    from drkit.repository import layout

    name = layout.pack_name(pack_id)
    try:
        return list(fetch_ranges(storage, name, ordered))
    except (IntegrityError, ObjectNotFound, StorageError) as exc:
        return f"{name}: {exc.message}"


def split_ranges(group: list[BlobUse], data: memoryview) -> Iterator[tuple[BlobUse, bytes | memoryview | None]]:
    """The sealed bytes of each blob of a merged read; None where the read came back
    short (a truncated pack: only the blobs cut off fail). The members of a group
    (format v3) that follow each other get one object (see
    :func:`~drkit.repository.pack.blob_views`)."""
    from drkit.repository.pack import blob_views

    for u, piece in blob_views(data, group, start=group[0].offset):
        yield u, piece if len(piece) == u.length else None
