"""Blob encoding: compress (or not), encrypt, and the reverse with verification.

Plaintext of a sealed blob::

    flag (1 byte: 0 = stored raw, 1 = zstd frame follows)
    payload

Compression is skipped when a 64 KiB sample does not shrink (most incompressible
data is recognised without compressing it all), or when the result is not smaller.
"""

from __future__ import annotations

import threading

import zstandard

from drkit.errors import IdentityRequired
from drkit.repository.crypto import KIND_BLOB, Cipher, ChunkHasher, DecryptError, IdentityMissing, RecipientCipher, aad

RAW = 0
ZSTD = 1
BLOB_DATA = 0
BLOB_TREE = 1
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
    return aad(KIND_BLOB, bytes((blob_type,)) + chunk_id)


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

    def decode(self, blob_type: int, chunk_id: bytes, sealed: bytes | memoryview, raw_length: int | None = None) -> bytes:
        """Open, decompress (to at most *raw_length*, the size the index records, or the
        chunker maximum) and check the keyed hash; raises BlobError."""
        data = self.decode_view(blob_type, chunk_id, sealed, raw_length)
        return data if isinstance(data, bytes) else bytes(data)

    def decode_view(self, blob_type: int, chunk_id: bytes, sealed: bytes | memoryview,
                    raw_length: int | None = None) -> bytes | memoryview:
        """:meth:`decode` without the final copy of a raw blob: returns bytes or a
        read-only view of the decrypted plaintext. Same checks; raises BlobError."""
        _flag, _plain, data = self._open(blob_type, chunk_id, sealed, raw_length)
        if self.hasher(data) != chunk_id:
            raise BlobError(f"blob {chunk_id.hex()[:16]}: content does not match its id")
        return data

    def _open(self, blob_type: int, chunk_id: bytes, sealed: bytes | memoryview,
              raw_length: int | None = None) -> tuple[int, bytes, bytes | memoryview]:
        """Decrypt and decompress, bounded (no id check): (flag, plaintext, data)."""
        limit = self.max_size
        if raw_length is not None:
            if raw_length > limit:
                raise BlobError(f"blob {chunk_id.hex()[:16]}: recorded size {raw_length} is larger than the "
                                f"chunker maximum of {limit} bytes")
            limit = raw_length
        try:
            plain = self.cipher.open(sealed, blob_aad(blob_type, chunk_id))
        except DecryptError as exc:
            raise BlobError(f"blob {chunk_id.hex()[:16]}: {exc}") from None
        except IdentityMissing:
            raise IdentityRequired() from None
        if not plain:
            raise BlobError(f"blob {chunk_id.hex()[:16]}: empty plaintext")
        flag = plain[0]
        body = memoryview(plain)[1:]
        if flag == RAW:
            return flag, plain, body
        if flag == ZSTD:
            try:
                out = bounded_decompress(body, limit, self._decompressor())
            except ValueError as exc:
                bound = f"its recorded {raw_length} bytes" if raw_length is not None else f"the chunker maximum of {limit} bytes"
                raise BlobError(f"blob {chunk_id.hex()[:16]}: {str(exc).replace(f'the bound of {limit} bytes', bound)}") from None
            return flag, plain, out
        raise BlobError(f"blob {chunk_id.hex()[:16]}: unknown compression flag {flag}")
