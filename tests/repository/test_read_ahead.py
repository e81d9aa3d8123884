"""#18: a snapshot's tree is read blob after blob, and from S3 or SFTP each read is
mostly waiting; :meth:`Repository.read_blobs` keeps the next reads in flight. It must
give exactly what :meth:`Repository.read_blob` gives, in order, raise where a bad blob
is reached (not before), and leave nothing running when it is closed early."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from drkit.errors import IntegrityError
from drkit.repository import layout
from drkit.repository.blob import BLOB_TREE
from drkit.repository.repo import Repository
from drkit.repository.saver import BlobSaver
from drkit.storage import LocalStorage


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    storage = LocalStorage(str(tmp_path / "repo"))
    Repository.init(storage, "pw", pack_size=1024 * 1024)
    return Repository.open(storage, "pw")


def _store(repo: Repository, blobs: list[bytes]) -> list[bytes]:
    with BlobSaver(repo) as saver:
        ids = [saver.save(b, BLOB_TREE)[0] for b in blobs]
    repo.load_index()
    return ids


class _Remote:
    """The repository's storage, as S3 or SFTP would be (any read may wait); the first
    *meet* reads from read-ahead threads wait for each other at a barrier."""

    def __init__(self, inner: Any, meet: int) -> None:
        self.inner = inner
        self.barrier = threading.Barrier(meet, timeout=10) if meet else None
        self.reads: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        with self._lock:
            self.reads.append((threading.current_thread().name, offset))
            meets = self.barrier is not None and len(self.reads) <= self.barrier.parties
        if meets:
            assert self.barrier is not None
            self.barrier.wait()
        return self.inner.get(name, offset, length)


def test_blobs_come_in_order_and_exact_with_the_next_reads_in_flight(repo: Repository,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    blobs = [os.urandom(1000 + 37 * i) for i in range(25)]
    ids = _store(repo, blobs)
    remote = _Remote(repo.storage, meet=2)  # two reads in flight at once, or a broken barrier
    monkeypatch.setattr(repo, "storage", remote)
    assert list(repo.read_blobs(ids)) == blobs
    assert not remote.barrier.broken  # type: ignore[union-attr]
    assert all(name.startswith("drkit-read-ahead") for name, _ in remote.reads)
    assert len(remote.reads) == 25
    assert list(repo.read_blobs(ids, ahead=0)) == blobs  # without threads: the same
    assert list(repo.read_blobs(ids[:1])) == blobs[:1]


@pytest.mark.parametrize("bad", ["damaged", "not in the index"])
def test_a_bad_blob_raises_where_it_is_reached_not_before(repo: Repository, bad: str) -> None:
    blobs = [os.urandom(4000) for _ in range(6)]
    ids = _store(repo, blobs)
    if bad == "damaged":
        loc = repo.index.get(ids[3])
        assert loc is not None
        pack = Path(repo.storage.root) / layout.pack_name(loc.pack)  # type: ignore[attr-defined]
        raw = bytearray(pack.read_bytes())
        raw[loc.offset + 40] ^= 1
        pack.write_bytes(bytes(raw))
    else:
        ids[3] = bytes(32)
    got: list[bytes] = []
    with pytest.raises(IntegrityError, match="damaged|not in the index"):
        for blob in repo.read_blobs(ids):
            got.append(blob)
    assert got == blobs[:3]


def test_closed_early_it_leaves_no_read_running(repo: Repository) -> None:
    blobs = [os.urandom(3000) for _ in range(40)]
    ids = _store(repo, blobs)
    reader = repo.read_blobs(ids)
    assert next(reader) == blobs[0]
    reader.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("drkit-read-ahead")]
