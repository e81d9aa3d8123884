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
from array import array
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import zstandard

from drkit.repository.blob import bounded_decompress
from drkit.repository.indexrows import ROW, ROW_SIZE, RowStore
from drkit.repository.pack import PackEntry


def index_size_bound(sealed_size: int) -> int:
    """The largest JSON an index file of *sealed_size* compressed bytes may expand to:
    64 times its size (real ones shrink about twofold: chunk ids are random), at least
    64 MiB, at most 1 GiB."""
    return min(1 << 30, max(64 << 20, 64 * sealed_size))


class BlobLocation(NamedTuple):
    """Where a blob is stored (a tuple, like PackEntry: a restore looks one up per
    chunk, and a named tuple is built in half a frozen dataclass's time)."""

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


_ID_SIZE = 32
_MIN_SLOTS = 1024
_ROW_NO = (1 << 32) - 1
"""Low half of a slot: row number + 1 (0: empty). High half: a 32-bit fingerprint of the id."""


def _check_location(blob_type: int, offset: int, length: int, raw_length: int) -> None:
    """ValueError unless a location fits the in-memory index (each number a u32, the type 4 bits)."""
    if not (0 <= offset <= _MASK and 0 <= length <= _MASK and 0 <= raw_length <= _MASK and 0 <= blob_type < 16):
        raise ValueError(f"blob location out of range: type {blob_type}, offset {offset}, length {length}/{raw_length}")


def _slots(size: int) -> array[int]:
    return array("Q", [0]) * size


def _room(mask: int) -> int:
    """A table of ``mask + 1`` slots grows before a row is added to more than this many
    (so that it stays at most half full)."""
    return (mask - 2) // 2


class Index:
    """Map of chunk id -> location, plus the packs it knows.

    Small in memory, because it holds one row per blob and many small files make many
    blobs (a dict of bytes ids to locations cost about 150 bytes per blob: 60 MB at
    400,000 small files; flat rows in memory still 60 bytes). A row (the 32-byte id and
    16 bytes of location: offset and length; pack number, type and raw length) lives in
    a :class:`~drkit.repository.indexrows.RowStore`, which keeps all but the newest few
    thousand in a temporary file. Memory holds the lookup table: open addressing, linear
    probing, at most half full, hashed with Python's own ``hash`` of the id, each slot a
    u64 of the row number and 32 more bits of that hash, so a lookup reads a row only
    when those match (a miss almost never; a hit once): 16 to 32 bytes per blob. Rows
    keep insertion order; the first location of an id wins. Safe to read from other
    threads while one thread adds (the table is swapped in whole; a row is stored before
    the table points to it).
    """

    def __init__(self) -> None:
        self._packs: list[str] = []
        self._pack_no: dict[str, int] = {}
        self.pack_sizes: dict[str, int] = {}
        self._store = RowStore()
        self._table: tuple[array[int], int] = (_slots(_MIN_SLOTS), _MIN_SLOTS - 1)
        """(slots, mask): see the class docstring."""
        self.files: set[str] = set()

    def _find(self, chunk_id: bytes) -> tuple[bytes | bytearray, int] | None:
        """Where the row of *chunk_id* is (a buffer and the row's offset in it, see
        :meth:`~drkit.repository.indexrows.RowStore.where`), None if absent."""
        if len(chunk_id) != _ID_SIZE:
            return None
        slots, mask = self._table
        where = self._store.where
        h = hash(chunk_id)
        mark = (h >> 32) & _ROW_NO
        i = h & mask
        while True:
            slot = slots[i]
            if not slot:
                return None
            if slot >> 32 == mark:
                rows, at = where((slot & _ROW_NO) - 1)
                if rows.startswith(chunk_id, at):
                    return rows, at
            i = (i + 1) & mask

    def _grow(self) -> None:
        self._table = self._table_of((self._table[1] + 1) * 2)

    def _table_of(self, size: int) -> tuple[array[int], int]:
        """A lookup table of *size* slots (a power of two) holding every row."""
        slots, mask = _slots(size), size - 1
        n = 0
        for batch in self._store.batches():
            for at in range(0, len(batch), ROW_SIZE):
                n += 1
                h = hash(batch[at : at + _ID_SIZE])
                i = h & mask
                while slots[i]:
                    i = (i + 1) & mask
                slots[i] = ((h >> 32) & _ROW_NO) << 32 | n
        return slots, mask

    def add_pack(self, pack_id: str, size: int, entries: Iterable[PackEntry]) -> None:
        """Add the blobs of pack *pack_id* (an id already known keeps its first location).
        Raises ValueError for numbers out of range (then nothing of the pack is added)."""
        entries = list(entries)
        for blob_type, chunk_id, offset, length, raw_length in entries:
            if not (0 <= offset <= _MASK and 0 <= length <= _MASK and 0 <= raw_length <= _MASK and 0 <= blob_type < 16):
                _check_location(blob_type, offset, length, raw_length)  # raises
            if len(chunk_id) != _ID_SIZE:
                raise ValueError(f"chunk id of {len(chunk_id)} bytes")
        self._add(pack_id, size, entries, [e.id for e in entries])

    def add_listed(self, pack_id: str, size: int, listed: ListedBlobs) -> None:
        """Add the blobs of pack *pack_id* as :func:`decode_index_listing` gives them
        (checked there; no :class:`PackEntry` is built for them)."""
        self._add(pack_id, size, listed.rows, listed.ids)

    def _add(self, pack_id: str, size: int, rows: Sequence[Sequence[Any]], chunk_ids: list[bytes]) -> None:
        """Add checked rows (``(type, <any>, offset, length, raw_length)``), the i-th
        row's blob being ``chunk_ids[i]``."""
        no = self._pack_no.get(pack_id)
        if no is None:
            no = self._pack_no[pack_id] = len(self._packs)
            self._packs.append(pack_id)
        self.pack_sizes[pack_id] = size
        store = self._store
        holds, append, pack_row = store.holds, store.append, ROW.pack
        slots, mask = self._table
        count = len(store)
        room = _room(mask)
        pack_bits = no << 4
        for (blob_type, _, offset, length, raw_length), chunk_id in zip(rows, chunk_ids, strict=True):
            if count > room:
                self._grow()
                slots, mask = self._table
                room = _room(mask)
            h = hash(chunk_id)
            mark = (h >> 32) & _ROW_NO
            i = h & mask
            slot = slots[i]
            while slot and not (slot >> 32 == mark and holds((slot & _ROW_NO) - 1, chunk_id)):
                i = (i + 1) & mask
                slot = slots[i]
            if slot:
                continue  # known: the first location stays
            append(pack_row(chunk_id, offset << _FIELD | length, (pack_bits | blob_type) << _FIELD | raw_length))
            count += 1
            slots[i] = mark << 32 | count

    def __contains__(self, chunk_id: bytes) -> bool:
        return self._find(chunk_id) is not None

    def __len__(self) -> int:
        return len(self._store)

    def memory_sizes(self) -> tuple[int, int]:
        """(bytes of rows held in memory, bytes of the lookup table): for memory checks."""
        slots = self._table[0]
        return self._store.memory_bytes(), slots.itemsize * len(slots)

    def get(self, chunk_id: bytes) -> BlobLocation | None:
        found = self._find(chunk_id)
        if found is None:
            return None
        _, span, meta = ROW.unpack_from(*found)
        return BlobLocation(self._packs[meta >> 36], (meta >> _FIELD) & 15, span >> _FIELD, span & _MASK, meta & _MASK)

    def packs(self) -> list[str]:
        return list(self._packs)

    def _rows(self) -> Iterator[tuple[bytes, int, int]]:
        for batch in self._store.batches():
            yield from ROW.iter_unpack(batch)

    def items(self) -> Iterator[tuple[bytes, BlobLocation]]:
        """(chunk id, location) of every blob, in the order they were added."""
        packs = self._packs
        for chunk_id, span, meta in self._rows():
            yield chunk_id, BlobLocation(packs[meta >> 36], (meta >> _FIELD) & 15, span >> _FIELD, span & _MASK, meta & _MASK)

    def row_batches(self, count: int | None = None) -> Iterator[bytes]:
        """The first *count* rows (default: all) in order, as
        :data:`~drkit.repository.indexrows.ROW` packs them (in the native byte order), a
        few thousand at a time: what :mod:`drkit.repository.indexcache` saves."""
        return self._store.batches(count)

    def close(self) -> None:
        """Drop the rows' temporary file now (it goes anyway when the index is collected);
        the index is not used afterwards."""
        self._store.close()

    @classmethod
    def from_rows(cls, packs: list[str], pack_sizes: dict[str, int], batches: Iterable[bytes | memoryview]) -> Index:
        """An index holding the rows :meth:`row_batches` gave, in the same order, and
        *packs* (by number, as the rows refer to them). The rows are trusted (they come
        from an authenticated copy of an index this process built): only their lengths
        and pack numbers are checked (ValueError). The lookup table is built again, since
        ``hash`` of bytes differs from one process to the next."""
        index = cls()
        index._packs = list(packs)
        index._pack_no = {p: n for n, p in enumerate(index._packs)}
        index.pack_sizes = dict(pack_sizes)
        if len(index._pack_no) != len(index._packs):
            raise ValueError("a pack listed twice")
        for batch in batches:
            if len(batch) % ROW_SIZE:
                raise ValueError("rows of a length that is not a whole row")
            words = array("Q")
            words.frombytes(batch)
            if words and max(words[5 :: ROW_SIZE // 8]) >> 36 >= len(index._packs):
                raise ValueError("a row names a pack that is not listed")
            index._store.extend(batch)
        size = _MIN_SLOTS
        while len(index) > _room(size - 1):
            size *= 2
        index._table = index._table_of(size)
        return index

    def entries_by_pack(self) -> dict[str, list[PackEntry]]:
        out: dict[str, list[PackEntry]] = {p: [] for p in self._packs}
        packs = self._packs
        for chunk_id, span, meta in self._rows():
            out[packs[meta >> 36]].append(PackEntry((meta >> _FIELD) & 15, chunk_id, span >> _FIELD, span & _MASK, meta & _MASK))
        return out


def encode_index_file(packs: list[tuple[str, int, list[PackEntry]]], supersedes: Iterable[str] = ()) -> bytes:
    """The compressed JSON document above. Written a pack at a time, byte for byte what
    ``json.dumps`` of the whole document (compact separators) gives, without the
    document: a list per blob and the text built from them cost ~8 MB at 16,000 blobs,
    a spike at every index file of a backup of many small files."""
    parts = [b'{"version":1,"supersedes":', json.dumps(sorted(supersedes), separators=(",", ":")).encode(), b',"packs":[']
    for n, (pack_id, size, entries) in enumerate(packs):
        parts.append(b'%s{"id":%s,"size":%d,"blobs":[' % (b"," if n else b"", json.dumps(pack_id).encode(), size))
        parts.append(
            ",".join([f'[{e.blob_type:d},"{e.id.hex()}",{e.offset:d},{e.length:d},{e.raw_length:d}]' for e in entries]).encode()
        )
        parts.append(b"]}")
    parts.append(b"]}")
    return zstandard.ZstdCompressor(level=3).compress(b"".join(parts))


_MAX_STORED = MAX_BLOB_RAW + MAX_BLOB_OVERHEAD


@dataclass(frozen=True, slots=True)
class ListedBlobs:
    """The blobs an index file lists for one pack, checked: its rows as JSON gave
    them (``[type, "<hex id>", offset, length, raw_length]``) and their ids as bytes."""

    rows: list[list[Any]]
    ids: list[bytes]

    def entries(self) -> list[PackEntry]:
        return [PackEntry(r[0], chunk_id, r[2], r[3], r[4]) for r, chunk_id in zip(self.rows, self.ids, strict=True)]


def _listed(rows: Any) -> ListedBlobs:
    """The listed blobs of one pack, each checked before use: ``[type, "<64 hex
    digits>", offset, length, raw_length]`` with integers in range (every number fits
    the in-memory index, no blob is larger than any chunk). Raises ValueError (or
    TypeError) naming the first bad row; nothing is returned for a bad list."""
    rows = rows if type(rows) is list else list(rows)
    ids: list[bytes] = []
    append = ids.append
    fromhex = bytes.fromhex
    for row in rows:
        blob_type, chunk_id, offset, length, raw_length = row
        if not (type(blob_type) is int and type(offset) is int and type(length) is int and type(raw_length) is int
                and type(chunk_id) is str and len(chunk_id) == 2 * _ID_SIZE
                and 0 <= blob_type < 16 and 0 <= offset <= _MASK and 0 <= length <= _MAX_STORED and 0 <= raw_length <= MAX_BLOB_RAW):
            raise ValueError(f"bad blob entry {str(row)[:200]}")
        chunk = fromhex(chunk_id)
        if len(chunk) != _ID_SIZE:  # fromhex skips whitespace
            raise ValueError(f"chunk id of {len(chunk)} bytes")
        append(chunk)
    return ListedBlobs(rows, ids)


def decode_index_listing(data: bytes) -> tuple[list[tuple[str, int, ListedBlobs]], list[str]]:
    """Return (packs, supersedes), each pack's blobs checked but not made into
    :class:`PackEntry` tuples (see :meth:`Index.add_listed`); raises ValueError for a
    malformed document (all or nothing: no part of a bad file is returned)."""
    try:
        doc = json.loads(bounded_decompress(data, index_size_bound(len(data))))
        packs = [(p["id"], int(p["size"]), _listed(p["blobs"])) for p in doc["packs"]]
        return packs, list(doc.get("supersedes", []))
    except (KeyError, TypeError, ValueError, zstandard.ZstdError) as exc:
        raise ValueError(f"malformed index file: {exc}") from None


def decode_index_file(data: bytes) -> tuple[list[tuple[str, int, list[PackEntry]]], list[str]]:
    """Return (packs, supersedes); raises ValueError for a malformed document."""
    packs, supersedes = decode_index_listing(data)
    return [(pack_id, size, listed.entries()) for pack_id, size, listed in packs], supersedes
