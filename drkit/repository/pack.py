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
import mmap
import struct
from typing import Any, Iterable, Iterator, NamedTuple

from drkit.repository.blob import BLOB_GROUP
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


def anonymous_buffer(size: int) -> mmap.mmap:
    """*size* bytes of private anonymous memory: a page costs nothing until it is written,
    and all of them go back to the system when the map is closed (no heap left behind)."""
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)


def blob_views(data: bytes | memoryview, entries: Iterable[Any], start: int = 0) -> Iterator[tuple[Any, bytes | memoryview]]:
    """Each of *entries* (anything with ``blob_type``, ``offset`` and ``length``: a
    :class:`PackEntry`, a restore's blob use) with the stored bytes it locates in *data*,
    the pack's bytes from offset *start* on (a view; a range past the end comes back
    short). The members of a group (format v3) get one object, a copy of the group's
    bytes, while they follow each other: the codec then opens the group once for all
    of them, and keeps no view of the whole read."""
    view = memoryview(data)
    last: tuple[int, int] | None = None
    group: bytes | memoryview = b""
    for e in entries:
        at = e.offset - start
        if e.blob_type != BLOB_GROUP:
            yield e, view[at : at + e.length]
            continue
        if last != (e.offset, e.length):
            last = (e.offset, e.length)
            group = bytes(view[at : at + e.length])
        yield e, group


class PackBuilder:
    """Accumulates sealed blobs; :meth:`finish` returns the pack bytes and its id.
    *version* 2 (format v2) writes packs whose trailer is bound to them.

    Each blob is copied at once into one buffer that becomes the pack: *buffer* (an
    anonymous map lent by the caller, e.g. one reused from pack to pack; see
    :meth:`take_buffer`) or one of its own. Only written pages become resident, and a
    buffer too small is replaced by a larger copy. No list of blobs is joined into a
    second copy at the end, and a pack never sits in the heap (where a freed 16 MiB block
    stays resident, fragmented by what was allocated beside it)."""

    def __init__(self, version: int = 1, buffer: mmap.mmap | None = None) -> None:
        self.version = version
        magic = MAGIC_V2 if version >= 2 else MAGIC_V1
        buf = buffer if buffer is not None else anonymous_buffer(1 << 20)
        buf[: len(magic)] = magic
        self._buf: mmap.mmap | None = buf
        self.entries: list[PackEntry] = []
        self.size = len(magic)

    def _reserve(self, more: int) -> mmap.mmap:
        """The buffer, with room for *more* bytes after the current end (a larger copy if
        needed: the old one is closed)."""
        buf = self._buf
        if buf is None:
            raise ValueError("pack builder already finished")
        if self.size + more <= len(buf):
            return buf
        bigger = anonymous_buffer(max(2 * len(buf), self.size + more))
        with memoryview(buf) as old:
            bigger[: self.size] = old[: self.size]
        buf.close()
        self._buf = bigger
        return bigger

    def add(self, blob_type: int, chunk_id: bytes, sealed: bytes, raw_length: int) -> None:
        n = len(sealed)
        buf = self._reserve(n)
        self.entries.append(PackEntry(blob_type, chunk_id, self.size, n, raw_length))
        buf[self.size : self.size + n] = sealed
        self.size += n

    def add_group(self, sealed: bytes, members: list[tuple[bytes, int]]) -> None:
        """Add a group (format v3) once, with an entry of type 2 for each member it
        lists, (chunk id, raw length): all at the group's offset and length."""
        n = len(sealed)
        buf = self._reserve(n)
        at = self.size
        self.entries.extend([PackEntry(BLOB_GROUP, chunk_id, at, n, raw_length) for chunk_id, raw_length in members])
        buf[at : at + n] = sealed
        self.size += n

    def __len__(self) -> int:
        return len(self.entries)

    def finish_view(self, cipher: Cipher) -> tuple[str, memoryview]:
        """Close the pack: (pack id, its bytes as a view of the buffer). Release the view
        before :meth:`take_buffer`; no blob can be added after this."""
        plain = _COUNT.pack(len(self.entries)) + b"".join(
            _ENTRY.pack(e.blob_type, e.id, e.offset, e.length, e.raw_length) for e in self.entries
        )
        buf = self._reserve(0)
        # One SHA-256 pass: the digest of the bytes before the trailer (what a v2 trailer
        # is bound to) is taken on the way to the pack's id.
        with memoryview(buf) as whole, whole[: self.size] as head:
            digest = hashlib.sha256(head)
        head_digest = digest.digest()
        trailer = cipher.seal(plain, aad(KIND_TRAILER) if self.version < 2 else aad(KIND_TRAILER, head_digest))
        tail = _TAIL.pack(len(trailer))
        digest.update(trailer)
        digest.update(tail)
        pack_id = digest.hexdigest()
        start = self.size
        buf = self._reserve(len(trailer) + len(tail))
        buf[start : start + len(trailer)] = trailer
        buf[start + len(trailer) : start + len(trailer) + len(tail)] = tail
        data = memoryview(buf)[: start + len(trailer) + len(tail)]
        # Verify before it leaves: the trailer we wrote must open, as a reader opens it, to
        # the bytes that list our entries (compared as bytes: parsing them back would build
        # an entry per blob to compare, a few milliseconds a pack of small files).
        try:
            same = _open_trailer(data, cipher, head_digest=(start, head_digest))[0] == plain
        except PackFormatError:
            same = False
        if not same:
            data.release()
            raise PackFormatError("pack trailer does not read back")
        return pack_id, data

    def finish(self, cipher: Cipher) -> tuple[str, bytes]:
        """:meth:`finish_view` as bytes (a copy); the builder's buffer is closed."""
        pack_id, view = self.finish_view(cipher)
        with view:
            data = bytes(view)
        buf = self.take_buffer()
        if buf is not None:
            buf.close()
        return pack_id, data

    def take_buffer(self) -> mmap.mmap | None:
        """Hand the buffer back (for the next pack); the builder is done. None if taken."""
        buf, self._buf = self._buf, None
        return buf


def trailer_length(tail4: bytes) -> int:
    if len(tail4) != 4:
        raise PackFormatError("pack is truncated")
    length: int = _TAIL.unpack(tail4)[0]
    return length


def _parse_plain_trailer(plain: bytes) -> list[PackEntry]:
    """The entries an opened trailer lists; raises PackFormatError for a wrong size."""
    if len(plain) < _COUNT.size:
        raise PackFormatError("pack trailer has the wrong size")
    (count,) = _COUNT.unpack_from(plain, 0)
    if len(plain) != _COUNT.size + count * _ENTRY.size:
        raise PackFormatError("pack trailer has the wrong size")
    return [PackEntry(*_ENTRY.unpack_from(plain, _COUNT.size + i * _ENTRY.size)) for i in range(count)]


def _open_trailer(data: bytes | memoryview, cipher: Cipher, *,
                  head_digest: tuple[int, bytes] | None = None) -> tuple[bytes, int]:
    """Open the trailer of a complete pack held in memory (v1 or v2, by its magic):
    (its plaintext, where it starts). Raises PackFormatError. *head_digest*: see
    :func:`read_trailer`."""
    view = memoryview(data)
    version = _MAGICS.get(bytes(view[: len(MAGIC)])) if len(view) >= len(MAGIC) + 4 else None
    if version is None:
        raise PackFormatError("not a drkit pack (bad magic or truncated)")
    length = trailer_length(bytes(view[-4:]))
    start = len(view) - 4 - length
    if start < len(MAGIC):
        raise PackFormatError("pack trailer length is out of range")
    if version >= 2 and head_digest is not None and head_digest[0] == start:
        associated = aad(KIND_TRAILER, head_digest[1])
    else:
        associated = _trailer_aad(version, view[:start])
    try:
        return cipher.open(bytes(view[start:-4]), associated), start
    except DecryptError as exc:
        detail = " (a v2 trailer opens only on the bytes it was written with)" if version >= 2 else ""
        raise PackFormatError(f"pack trailer: {exc}{detail}") from None


def read_trailer(data: bytes | memoryview, cipher: Cipher, *, head_digest: tuple[int, bytes] | None = None) -> list[PackEntry]:
    """Parse the trailer of a complete pack held in memory (v1 or v2, by its magic);
    raises PackFormatError. *head_digest* ``(n, sha256)``: the SHA-256 of the pack's
    first *n* bytes, already computed by the caller; used (not recomputed) when the
    trailer starts at *n*."""
    plain, start = _open_trailer(data, cipher, head_digest=head_digest)
    entries = _parse_plain_trailer(plain)
    for e in entries:
        if e.offset < len(MAGIC) or e.offset + e.length > start:
            raise PackFormatError("pack trailer points outside the pack")
    return entries
