"""Blob encoding: compress (or not), encrypt, and the reverse with verification.

Plaintext of a sealed blob::

    flag (1 byte: 0 = stored raw, 1 = zstd frame follows)
    payload

A group (format v3, type :data:`BLOB_GROUP`) is one sealed blob holding several small
chunks, its *members*, each still addressed by its own chunk id (docs/format.md,
"Grouped small files"): its payload is ``count u32``, ``count`` times (id, raw length
u32), then the members' bytes back to back. :meth:`BlobCodec.decode` of a member (type
2, the member's id) opens the group and returns that member, hash-checked.

Compression is skipped when a 64 KiB sample does not shrink (most incompressible
data is recognised without compressing it all), or when the result is not smaller.
"""

from __future__ import annotations

import struct
import threading
from collections import OrderedDict
from typing import Any, Callable

import zstandard

from drkit.errors import IdentityRequired
from drkit.repository.crypto import KIND_BLOB, Cipher, ChunkHasher, DecryptError, IdentityMissing, RecipientCipher, aad

RAW = 0
ZSTD = 1
BLOB_DATA = 0
BLOB_TREE = 1
BLOB_GROUP = 2
"""A member of a group (format v3): its index row and trailer entry locate the group."""
_GROUP_COUNT = struct.Struct("<I")
_GROUP_ROW = struct.Struct("<32sI")
GROUP_ROW_SIZE = _GROUP_ROW.size
_SAMPLE = 64 * 1024
MAX_BLOB_SIZE = 64 * 1024 * 1024
"""No chunk is ever larger, whatever a repository's config says (its chunker maximum
is the bound actually used, see :class:`BlobCodec`)."""


class BlobError(Exception):
    """A blob failed to decrypt, decompress or match its id."""


def bounded_decompress(frame: bytes | memoryview, limit: int, dctx: zstandard.ZstdDecompressor | None = None) -> bytes:
    """Decompress one zstd *frame* whose output may not exceed *limit* bytes, without
    ever allocating more: the size a frame header declares is checked before
    decompressing, and a frame without one is decompressed into at most *limit* bytes.
    Raises ValueError naming the bound."""
    dctx = dctx or zstandard.ZstdDecompressor()
    try:
        declared = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as exc:
        raise ValueError(f"decompression failed: {exc}") from None
    if declared > limit:
        raise ValueError(f"decompressed size {declared} is larger than the bound of {limit} bytes")
    try:
        if declared >= 0:
            return dctx.decompress(frame)
        return dctx.decompress(frame, max_output_size=limit)
    except zstandard.ZstdError as exc:
        if declared < 0:
            raise ValueError(f"decompressed size is larger than the bound of {limit} bytes, or the frame is damaged ({exc})") from None
        raise ValueError(f"decompression failed: {exc}") from None


def blob_aad(blob_type: int, chunk_id: bytes) -> bytes:
    """The associated data of a blob; a group's names no chunk id (its members are
    checked by their keyed hash)."""
    return aad(KIND_BLOB, bytes((blob_type,)) if blob_type == BLOB_GROUP else bytes((blob_type,)) + chunk_id)


def saved_type(blob_type: int) -> int:
    """The type a blob read back is saved again as (a prune's repack, a repair's
    salvage): a group's member is data, stored as a blob of its own."""
    return BLOB_DATA if blob_type == BLOB_GROUP else blob_type


class RecentGroups:
    """The last few groups a process opened or fetched, shared by its threads (readers
    take a group's members one after another, often each in a new thread: a copy reads
    every file through its own stream). Thread-safe."""

    def __init__(self, size: int = 4) -> None:
        self._size = size
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        """The value kept for *key*, or ``make()`` (called outside the lock), kept."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
                return value
        value = make()
        self.put(key, value)
        return value

    def put(self, key: Any, value: Any) -> None:
        """Keep *value* for *key* (the oldest beyond the size goes)."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


def _name(blob_type: int, chunk_id: bytes) -> str:
    """How an error names a blob (a group has no id of its own)."""
    return "group" if blob_type == BLOB_GROUP else f"blob {chunk_id.hex()[:16]}"


def group_plaintext(members: list[tuple[bytes, bytes]]) -> bytes:
    """The plaintext of a group of *members*, (chunk id, data) each, in order."""
    head = [_GROUP_COUNT.pack(len(members))]
    head += [_GROUP_ROW.pack(chunk_id, len(data)) for chunk_id, data in members]
    return b"".join(head) + b"".join(data for _, data in members)


def group_table(plain: bytes | memoryview) -> dict[bytes, tuple[int, int]]:
    """Where each member of a group plaintext is: {chunk id: (start, size)} (the first
    row of an id wins). Raises ValueError for a malformed group (no member, a header
    past the end, sizes that do not add up to the data exactly)."""
    if len(plain) < _GROUP_COUNT.size:
        raise ValueError("group shorter than its header")
    (count,) = _GROUP_COUNT.unpack_from(plain, 0)
    start = _GROUP_COUNT.size + count * GROUP_ROW_SIZE
    if count < 1 or start > len(plain):
        raise ValueError(f"group header of {count} members does not fit its {len(plain)} bytes")
    table: dict[bytes, tuple[int, int]] = {}
    at = start
    for chunk_id, size in _GROUP_ROW.iter_unpack(memoryview(plain)[_GROUP_COUNT.size : start]):
        table.setdefault(chunk_id, (at, size))
        at += size
    if at != len(plain):
        raise ValueError(f"group members add up to {at - start} bytes, its data is {len(plain) - start}")
    return table


class BlobCodec:
    """Thread-safe encode/decode of blobs (zstd contexts are per thread)."""

    def __init__(self, cipher: Cipher | RecipientCipher, hasher: ChunkHasher, level: int,
                 max_size: int = 8 * 1024 * 1024) -> None:
        """*max_size*: the largest plaintext a blob may have (the chunker maximum; at
        most :data:`MAX_BLOB_SIZE`); nothing decodes beyond it."""
        self.cipher = cipher
        self.hasher = hasher
        self.level = level
        self.max_size = min(max_size, MAX_BLOB_SIZE)
        self._local = threading.local()
        """Per thread: zstd contexts."""
        self._groups = RecentGroups()
        """Groups opened lately (see :meth:`_open_group`)."""

    def _compressor(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = zstandard.ZstdCompressor(level=self.level)
        return c

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "d", None)
        if d is None:
            d = self._local.d = zstandard.ZstdDecompressor()
        return d

    def compress(self, data: bytes | memoryview) -> bytes:
        if self.level <= 0 or len(data) < 64:
            return b"\x00" + data
        comp = self._compressor()
        if len(data) > 4 * _SAMPLE:
            # Skip compressing what will not shrink, judged by 64 KiB at each end (a
            # chunk that runs from random data into zeros, as in a volume image, still
            # gets compressed).
            head, tail = data[:_SAMPLE], data[-_SAMPLE:]
            if len(comp.compress(head)) >= _SAMPLE * 0.98 and len(comp.compress(tail)) >= _SAMPLE * 0.98:
                return b"\x00" + data
        packed = comp.compress(data)
        if len(packed) >= len(data):
            return b"\x00" + data
        return b"\x01" + packed

    def encode(self, blob_type: int, chunk_id: bytes, data: bytes | memoryview) -> bytes:
        """Compress and seal; then verify the sealed bytes decode back to *data*.

        *chunk_id* must be the keyed hash of *data* (the saver computes it just before).
        The verification runs the full read path (decrypt with the blob's associated
        data, decompress) and checks the result equals *data* byte for byte: the same
        guarantee as hashing it again against *chunk_id*, one pass cheaper. It catches a
        broken compressor or cipher before anything is uploaded (restic shipped two
        compression bugs; this is their fix). Raises BlobError if it fails."""
        sealed = self.cipher.seal(self.compress(data), blob_aad(blob_type, chunk_id))
        if not isinstance(data, bytes):
            self.decode_view(blob_type, chunk_id, sealed)
            return sealed
        flag, plain, out = self._open(blob_type, chunk_id, sealed)
        same = plain.startswith(data, 1) and len(plain) == len(data) + 1 if flag == RAW else out == data
        if not same:
            raise BlobError(f"blob {chunk_id.hex()[:16]}: sealed blob does not decode to its data")
        return sealed

    def encode_group(self, members: list[tuple[bytes, bytes]]) -> bytes:
        """Seal *members* (chunk id, data), each id the keyed hash of its data, as one
        group (:data:`BLOB_GROUP`), then verify that the sealed bytes decode back to
        the same plaintext byte for byte (as :meth:`encode` does for a blob). The
        plaintext must be at most the chunker maximum. Raises BlobError."""
        plain = group_plaintext(members)
        if len(plain) > self.max_size:
            raise BlobError(f"group of {len(plain)} bytes is larger than the chunker maximum of {self.max_size}")
        sealed = self.cipher.seal(self.compress(plain), blob_aad(BLOB_GROUP, b""))
        flag, opened, out = self._open(BLOB_GROUP, b"", sealed)
        same = opened.startswith(plain, 1) and len(opened) == len(plain) + 1 if flag == RAW else out == plain
        if not same:
            raise BlobError(f"group of {len(members)} blobs: sealed group does not decode to its data")
        return sealed

    def decode(self, blob_type: int, chunk_id: bytes, sealed: bytes | memoryview, raw_length: int | None = None) -> bytes:
        """Open, decompress (to at most *raw_length*, the size the index records, or the
        chunker maximum) and check the keyed hash; raises BlobError."""
        data = self.decode_view(blob_type, chunk_id, sealed, raw_length)
        return data if isinstance(data, bytes) else bytes(data)

    def decode_view(self, blob_type: int, chunk_id: bytes, sealed: bytes | memoryview,
                    raw_length: int | None = None) -> bytes | memoryview:
        """:meth:`decode` without the final copy of a raw blob: returns bytes or a
        read-only view of the decrypted plaintext. Same checks; raises BlobError.
        For a member of a group (:data:`BLOB_GROUP`), *sealed* is the group and the
        member *chunk_id* is returned (its size must be *raw_length* when given)."""
        data: bytes | memoryview
        if blob_type == BLOB_GROUP:
            data = self._member(chunk_id, sealed, raw_length)
        else:
            _flag, _plain, data = self._open(blob_type, chunk_id, sealed, raw_length)
        if self.hasher(data) != chunk_id:
            raise BlobError(f"blob {chunk_id.hex()[:16]}: content does not match its id")
        return data

    def _member(self, chunk_id: bytes, sealed: bytes | memoryview, raw_length: int | None) -> memoryview:
        """Member *chunk_id* of the group *sealed* (not yet hash-checked); raises BlobError."""
        plain, table = self._open_group(sealed)
        where = table.get(chunk_id)
        if where is None:
            raise BlobError(f"blob {chunk_id.hex()[:16]}: not in the group its index entry names")
        start, size = where
        if raw_length is not None and size != raw_length:
            raise BlobError(f"blob {chunk_id.hex()[:16]}: {size} bytes in its group, its index entry says {raw_length}")
        return memoryview(plain)[start : start + size]

    def _open_group(self, sealed: bytes | memoryview) -> tuple[bytes | memoryview, dict[bytes, tuple[int, int]]]:
        """The plaintext and member table of group *sealed*. The last few groups opened
        are kept, each known again only as the very same object (readers pass one
        object for all the members of a group they read: :func:`~drkit.repository.pack.blob_views`,
        :meth:`~drkit.repository.repo.Repository.read_blob`); other bytes, even equal
        ones, are opened and authenticated afresh. A kept group holds its object, so
        no other object can have its id meanwhile."""
        def parse() -> tuple[bytes | memoryview, bytes | memoryview, dict[bytes, tuple[int, int]]]:
            return (sealed, *self._parse_group(sealed))
        _sealed, plain, table = self._groups.get(id(sealed), parse)
        return plain, table

    def _parse_group(self, sealed: bytes | memoryview) -> tuple[bytes | memoryview, dict[bytes, tuple[int, int]]]:
        _flag, _opened, plain = self._open(BLOB_GROUP, b"", sealed)
        try:
            return plain, group_table(plain)
        except ValueError as exc:
            raise BlobError(f"group: {exc}") from None

    def _open(self, blob_type: int, chunk_id: bytes, sealed: bytes | memoryview,
              raw_length: int | None = None) -> tuple[int, bytes, bytes | memoryview]:
        """Decrypt and decompress, bounded (no id check): (flag, plaintext, data). A
        group (*chunk_id* unused) is bounded by the chunker maximum alone."""
        limit = self.max_size
        if raw_length is not None and blob_type != BLOB_GROUP:
            if raw_length > limit:
                raise BlobError(f"{_name(blob_type, chunk_id)}: recorded size {raw_length} is larger than the "
                                f"chunker maximum of {limit} bytes")
            limit = raw_length
        try:
            plain = self.cipher.open(sealed, blob_aad(blob_type, chunk_id))
        except DecryptError as exc:
            raise BlobError(f"{_name(blob_type, chunk_id)}: {exc}") from None
        except IdentityMissing:
            raise IdentityRequired() from None
        if not plain:
            raise BlobError(f"{_name(blob_type, chunk_id)}: empty plaintext")
        flag = plain[0]
        body = memoryview(plain)[1:]
        if flag == RAW:
            return flag, plain, body
        if flag == ZSTD:
            try:
                out = bounded_decompress(body, limit, self._decompressor())
            except ValueError as exc:
                bound = f"its recorded {raw_length} bytes" if raw_length is not None else f"the chunker maximum of {limit} bytes"
                raise BlobError(f"{_name(blob_type, chunk_id)}: {str(exc).replace(f'the bound of {limit} bytes', bound)}") from None
            return flag, plain, out
        raise BlobError(f"{_name(blob_type, chunk_id)}: unknown compression flag {flag}")
