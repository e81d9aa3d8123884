"""Packs: many sealed blobs in one object, with an encrypted trailer listing them.

Layout of a pack (all integers little-endian)::

    magic        8 bytes  b"DRKPACK\\x01" (v1) or b"DRKPACK\\x02" (v2)
    blob 0 .. n  sealed blobs (see blob.py), back to back
    trailer      sealed (associated data kind "trailer"), plaintext:
                 count u32, then per blob: type u8, id 32 bytes, offset u32,
                 length u32 (sealed size), raw_length u32 (plaintext size)
    trailer_len  u32, the size of the sealed trailer

A pack is named by the SHA-256 of all its bytes, so bitrot is found without keys,
and the index can be rebuilt from packs alone by reading their trailers.

A v2 pack binds its trailer to itself: the trailer's associated data names the SHA-256
of every byte before it, so a real trailer copied onto other bytes does not open
(format v2; v1 packs are read as before).
"""

from __future__ import annotations

import hashlib
import struct
from typing import NamedTuple

from drkit.repository.crypto import KIND_TRAILER, Cipher, DecryptError, aad

MAGIC_V1 = b"DRKPACK\x01"
MAGIC_V2 = b"DRKPACK\x02"
MAGIC = MAGIC_V1
"""The magic of version-1 packs (all packs have 8-byte magics)."""
_MAGICS = {MAGIC_V1: 1, MAGIC_V2: 2}
_ENTRY = struct.Struct("<B32sIII")
_COUNT = struct.Struct("<I")
_TAIL = struct.Struct("<I")


class PackFormatError(Exception):
    """A pack's structure is broken (truncated, wrong magic, bad trailer)."""


class PackEntry(NamedTuple):
    """Where one blob sits in its pack (a tuple: index files hold many of them, and
    a named tuple is built in a third of a frozen dataclass's time)."""

    blob_type: int
    id: bytes
    offset: int
    length: int
    raw_length: int


def _trailer_aad(version: int, head: bytes | memoryview) -> bytes:
    """v1: kind ``trailer``; v2: also the SHA-256 of the pack bytes before the trailer."""
    return aad(KIND_TRAILER) if version < 2 else aad(KIND_TRAILER, hashlib.sha256(head).digest())


class PackBuilder:
    """Accumulates sealed blobs; :meth:`finish` returns the pack bytes and its id.
    *version* 2 (format v2) writes packs whose trailer is bound to them."""

    def __init__(self, version: int = 1) -> None:
        self.version = version
        magic = MAGIC_V2 if version >= 2 else MAGIC_V1
        self._parts: list[bytes] = [magic]
        self.entries: list[PackEntry] = []
        self.size = len(magic)

    def add(self, blob_type: int, chunk_id: bytes, sealed: bytes, raw_length: int) -> None:
        self.entries.append(PackEntry(blob_type, chunk_id, self.size, len(sealed), raw_length))
        self._parts.append(sealed)
        self.size += len(sealed)

    def __len__(self) -> int:
        return len(self.entries)

    def finish(self, cipher: Cipher) -> tuple[str, bytes]:
        plain = _COUNT.pack(len(self.entries)) + b"".join(
            _ENTRY.pack(e.blob_type, e.id, e.offset, e.length, e.raw_length) for e in self.entries
        )
        # One SHA-256 pass and one join: the digest of the bytes before the trailer (what a
        # v2 trailer is bound to) is taken on the way to the pack's id.
        digest = hashlib.sha256()
        for part in self._parts:
            digest.update(part)
        head_digest = digest.digest()
        trailer = cipher.seal(plain, aad(KIND_TRAILER) if self.version < 2 else aad(KIND_TRAILER, head_digest))
        tail = _TAIL.pack(len(trailer))
        digest.update(trailer)
        digest.update(tail)
        pack_id = digest.hexdigest()
        self._parts += (trailer, tail)
        data = b"".join(self._parts)
        self._parts = []
        start = len(data) - len(trailer) - _TAIL.size
        # Verify before it leaves: the trailer we wrote must read back to our entries.
        if read_trailer(data, cipher, head_digest=(start, head_digest)) != self.entries:
            raise PackFormatError("pack trailer does not read back")
        return pack_id, data


def trailer_length(tail4: bytes) -> int:
    if len(tail4) != 4:
        raise PackFormatError("pack is truncated")
    length: int = _TAIL.unpack(tail4)[0]
    return length


def parse_trailer(sealed: bytes, cipher: Cipher, associated: bytes | None = None) -> list[PackEntry]:
    """Open and parse a sealed trailer (*associated*: its AAD, default the v1 one)."""
    try:
        plain = cipher.open(sealed, associated if associated is not None else aad(KIND_TRAILER))
    except DecryptError as exc:
        raise PackFormatError(f"pack trailer: {exc}") from None
    (count,) = _COUNT.unpack_from(plain, 0)
    if len(plain) != _COUNT.size + count * _ENTRY.size:
        raise PackFormatError("pack trailer has the wrong size")
    return [PackEntry(*_ENTRY.unpack_from(plain, _COUNT.size + i * _ENTRY.size)) for i in range(count)]


def read_trailer(data: bytes | memoryview, cipher: Cipher, *, head_digest: tuple[int, bytes] | None = None) -> list[PackEntry]:
    """Parse the trailer of a complete pack held in memory (v1 or v2, by its magic);
    raises PackFormatError. *head_digest* ``(n, sha256)``: the SHA-256 of the pack's
    first *n* bytes, already computed by the caller; used (not recomputed) when the
    trailer starts at *n*."""
    view = memoryview(data)
    version = _MAGICS.get(bytes(view[: len(MAGIC)])) if len(view) >= len(MAGIC) + 4 else None
    if version is None:
        raise PackFormatError("not a drkit pack (bad magic or truncated)")
    length = trailer_length(bytes(view[-4:]))
    start = len(view) - 4 - length
    if start < len(MAGIC):
        raise PackFormatError("pack trailer length is out of range")
    try:
        if version >= 2 and head_digest is not None and head_digest[0] == start:
            associated = aad(KIND_TRAILER, head_digest[1])
        else:
            associated = _trailer_aad(version, view[:start])
        entries = parse_trailer(bytes(view[start:-4]), cipher, associated)
    except PackFormatError as exc:
        if version >= 2:
            raise PackFormatError(f"{exc} (a v2 trailer opens only on the bytes it was written with)") from None
        raise
    for e in entries:
        if e.offset < len(MAGIC) or e.offset + e.length > start:
            raise PackFormatError("pack trailer points outside the pack")
    return entries
