"""#14 case 4: every size read from storage is bounded before use. A hostile writer
(the backup host in recipient mode holds the keys that seal blobs, index files and
manifests) cannot make a reader allocate what it says: a small object expanding to a
huge plaintext is refused with a clear error, before the memory is taken."""

from __future__ import annotations

import hashlib
import secrets
import tracemalloc
from pathlib import Path

import pytest
import zstandard

from drkit.errors import IntegrityError
from drkit.repository import layout
from drkit.repository.blob import BLOB_DATA, BlobError, blob_aad
from drkit.repository.crypto import KIND_INDEX, KIND_SNAPSHOT, aad
from drkit.repository.repo import Repository
from drkit.storage import LocalStorage

BOMB_SIZE = 96 * 1024 * 1024  # compresses to a few KiB; more than any bound below


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return zstandard.ZstdCompressor(level=1).compress(bytes(BOMB_SIZE))


def _peak_of(fn) -> int:  # type: ignore[no-untyped-def]
    tracemalloc.start()
    try:
        fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def test_a_blob_that_decompresses_beyond_the_chunker_maximum_is_refused_without_allocating_it(
        tmp_path: Path, bomb: bytes) -> None:
    repo = Repository.init(LocalStorage(tmp_path / "repo"), "pw")
    cid = repo.hasher(b"anything")
    sealed = repo.codec.cipher.seal(b"\x01" + bomb, blob_aad(BLOB_DATA, cid))
    caught: list[BlobError] = []

    def decode() -> None:
        try:
            repo.codec.decode(BLOB_DATA, cid, sealed)
        except BlobError as exc:
            caught.append(exc)

    peak = _peak_of(decode)
    assert caught and "larger than" in str(caught[0]) and "8388608" in str(caught[0])
    assert peak < 16 * 1024 * 1024, f"allocated {peak} bytes"
    # the recorded raw length bounds it further
    small = repo.codec.cipher.seal(b"\x01" + zstandard.ZstdCompressor().compress(bytes(5000)), blob_aad(BLOB_DATA, cid))
    with pytest.raises(BlobError, match="larger than its recorded 4096 bytes"):
        repo.codec.decode(BLOB_DATA, cid, small, raw_length=4096)


def test_a_frame_without_a_content_size_is_bounded_too(tmp_path: Path) -> None:
    repo = Repository.init(LocalStorage(tmp_path / "repo"), "pw")
    cid = repo.hasher(b"anything")
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(9 * 1024 * 1024))
    sealed = repo.codec.cipher.seal(b"\x01" + frame, blob_aad(BLOB_DATA, cid))
    with pytest.raises(BlobError, match="larger than"):
        repo.codec.decode(BLOB_DATA, cid, sealed)


def test_a_manifest_bomb_is_refused(tmp_path: Path, bomb: bytes) -> None:
    repo = Repository.init(LocalStorage(tmp_path / "repo"), "pw")
    sid = secrets.token_hex(32)
    repo.storage.put(layout.snapshot_name(sid), repo.content_cipher.seal(bomb, aad(KIND_SNAPSHOT, sid.encode())))
    caught: list[IntegrityError] = []

    def load() -> None:
        try:
            repo.load_snapshot(sid)
        except IntegrityError as exc:
            caught.append(exc)

    peak = _peak_of(load)
    assert caught and "larger than" in caught[0].message
    assert peak < 80 * 1024 * 1024


def test_an_index_bomb_is_refused(tmp_path: Path, bomb: bytes) -> None:
    repo = Repository.init(LocalStorage(tmp_path / "repo"), "pw")
    sealed = repo.cipher.seal(bomb, aad(KIND_INDEX))
    index_id = hashlib.sha256(sealed).hexdigest()
    repo.storage.put(layout.index_name(index_id), sealed)
    with pytest.raises(IntegrityError, match="larger than"):
        repo.read_index_file(index_id)
