"""The index: where each blob lives (pack, offset, length).

Index files are zstd-compressed JSON, sealed with associated data kind ``index``, and
named by the SHA-256 of their stored bytes::

    {"version": 1,
     "supersedes": ["<index id>", ...],
     "packs": [{"id": "<pack id>", "size": N,
                "blobs": [[type, "<chunk id hex>", offset, length, raw_length], ...]}]}

The in-memory index is the union of all index files. A pack listed by several index
files is the same pack (its name is its content hash), so duplicates are harmless.
``supersedes`` lets prune replace index files: once the new one is stored, the old
ones can be deleted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import zstandard

from drkit.repository.blob import bounded_decompress
from drkit.repository.pack import PackEntry


def index_size_bound(sealed_size: int) -> int:
    """The largest JSON an index file of *sealed_size* compressed bytes may expand to:
    64 times its size (real ones shrink about twofold: chunk ids are random), at least
    64 MiB, at most 1 GiB."""
    return min(1 << 30, max(64 << 20, 64 * sealed_size))


@dataclass(frozen=True, slots=True)
class BlobLocation:
    pack: str
    blob_type: int
    offset: int
    length: int
    raw_length: int


MAX_BLOB_RAW = 64 * 1024 * 1024
"""No blob is larger than the largest chunk any repository may configure."""
MAX_BLOB_OVERHEAD = 4096
"""Sealing adds a header, a nonce, a tag (and in recipient mode an envelope) to a blob
stored raw when compression does not shrink it: far less than this."""
_FIELD = 32
_MASK = (1 << _FIELD) - 1


def _pack_location(pack_no: int, blob_type: int, offset: int, length: int, raw_length: int) -> int:
    """One int for a blob's location (half the memory of a tuple of five: the in-memory
    index holds one per blob, and many small files make many blobs)."""
    if not (0 <= offset <= _MASK and 0 <= length <= _MASK and 0 <= raw_length <= _MASK and 0 <= blob_type < 16):
        raise ValueError(f"blob location out of range: type {blob_type}, offset {offset}, length {length}/{raw_length}")
    return ((((pack_no << 4 | blob_type) << _FIELD | offset) << _FIELD | length) << _FIELD) | raw_length


def _unpack_location(loc: int) -> tuple[int, int, int, int, int]:
    """(pack number, blob type, offset, length, raw length) of a packed location."""
    raw = loc & _MASK
    loc >>= _FIELD
    length = loc & _MASK
    loc >>= _FIELD
    offset = loc & _MASK
    loc >>= _FIELD
    return loc >> 4, loc & 15, offset, length, raw


class Index:
    """In-memory map of chunk id -> location, plus the packs it knows."""

    def __init__(self) -> None:
        self._packs: list[str] = []
        self._pack_no: dict[str, int] = {}
        self.pack_sizes: dict[str, int] = {}
        self._blobs: dict[bytes, int] = {}
        """chunk id -> packed location (see :func:`_pack_location`)."""
        self.files: set[str] = set()

    def add_pack(self, pack_id: str, size: int, entries: Iterable[PackEntry]) -> None:
        no = self._pack_no.get(pack_id)
        if no is None:
            no = self._pack_no[pack_id] = len(self._packs)
            self._packs.append(pack_id)
        self.pack_sizes[pack_id] = size
        for e in entries:
            if e.id not in self._blobs:
                self._blobs[e.id] = _pack_location(no, e.blob_type, e.offset, e.length, e.raw_length)

    def __contains__(self, chunk_id: bytes) -> bool:
        return chunk_id in self._blobs

    def __len__(self) -> int:
        return len(self._blobs)

    def get(self, chunk_id: bytes) -> BlobLocation | None:
        loc = self._blobs.get(chunk_id)
        if loc is None:
            return None
        no, blob_type, offset, length, raw_length = _unpack_location(loc)
        return BlobLocation(self._packs[no], blob_type, offset, length, raw_length)

    def packs(self) -> list[str]:
        return list(self._packs)

    def items(self) -> Iterator[tuple[bytes, BlobLocation]]:
        for chunk_id in self._blobs:
            loc = self.get(chunk_id)
            assert loc is not None
            yield chunk_id, loc

    def entries_by_pack(self) -> dict[str, list[PackEntry]]:
        out: dict[str, list[PackEntry]] = {p: [] for p in self._packs}
        for chunk_id, loc in self._blobs.items():
            no, t, off, length, raw = _unpack_location(loc)
            out[self._packs[no]].append(PackEntry(t, chunk_id, off, length, raw))
        return out


def encode_index_file(packs: list[tuple[str, int, list[PackEntry]]], supersedes: Iterable[str] = ()) -> bytes:
    doc = {
        "version": 1,
        "supersedes": sorted(supersedes),
        "packs": [
            {
                "id": pack_id,
                "size": size,
                "blobs": [[e.blob_type, e.id.hex(), e.offset, e.length, e.raw_length] for e in entries],
            }
            for pack_id, size, entries in packs
        ],
    }
    return zstandard.ZstdCompressor(level=3).compress(json.dumps(doc, separators=(",", ":")).encode())


def _entry(blob_type: Any, chunk_id: Any, offset: Any, length: Any, raw_length: Any) -> PackEntry:
    """One listed blob, its numbers bounded before use (raises ValueError)."""
    entry = PackEntry(int(blob_type), bytes.fromhex(str(chunk_id)), int(offset), int(length), int(raw_length))
    _pack_location(0, entry.blob_type, entry.offset, entry.length, entry.raw_length)
    if len(entry.id) != 32:
        raise ValueError(f"chunk id of {len(entry.id)} bytes")
    if entry.raw_length > MAX_BLOB_RAW or entry.length > MAX_BLOB_RAW + MAX_BLOB_OVERHEAD:
        raise ValueError(f"blob of {entry.length} bytes ({entry.raw_length} raw) is larger than any chunk")
    return entry


def decode_index_file(data: bytes) -> tuple[list[tuple[str, int, list[PackEntry]]], list[str]]:
    """Return (packs, supersedes); raises ValueError for a malformed document."""
    try:
        doc = json.loads(bounded_decompress(data, index_size_bound(len(data))))
        packs = [
            (
                p["id"],
                int(p["size"]),
                [_entry(t, i, o, n, r) for t, i, o, n, r in p["blobs"]],
            )
            for p in doc["packs"]
        ]
        return packs, list(doc.get("supersedes", []))
    except (KeyError, TypeError, ValueError, zstandard.ZstdError) as exc:
        raise ValueError(f"malformed index file: {exc}") from None
