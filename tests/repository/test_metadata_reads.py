"""Snapshot manifests and index files are read several at once.

Every command that lists snapshots (``snapshots``, ``restore latest``, each backup's
search for its parent, ``forget``, ``verify``, ``drill``) reads every manifest, and a
restore on a new machine (no index cache) reads every index file. From S3 or SFTP each
read is mostly waiting on the network, so the reads must overlap: hundreds of snapshots
and index files are common, and read one after another at 30 ms each an incident's
``restore latest`` waited seconds to minutes before its first byte. What is read must not
change: every manifest, oldest first; the same index; a damaged object reported (or
raised) as before, the others still read."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from drkit.errors import IntegrityError
from drkit.repository import layout
from drkit.repository.blob import BLOB_DATA
from drkit.repository.repo import INDEX_READS, Repository
from drkit.repository.saver import BlobSaver
from drkit.repository.snapshot import Snapshot
from drkit.storage import LocalStorage


def _snapshot(no: int, source: str) -> Snapshot:
    # times out of id order, so the listing's sort is tested too
    return Snapshot(id=os.urandom(32).hex(), time=f"2026-11-{1 + (no * 7) % 28:02d}T10:{no % 60:02d}:00Z",
                    source=source, source_type="files", run=os.urandom(16).hex(), host="node1", tree=[])


@pytest.fixture
def stored(tmp_path: Path) -> tuple[LocalStorage, list[Snapshot]]:
    storage = LocalStorage(str(tmp_path / "repo"))
    Repository.init(storage, "pw", pack_size=1024 * 1024)
    repo = Repository.open(storage, "pw")
    snaps = [_snapshot(no, f"s{no % 3}") for no in range(40)]
    for snap in snaps:
        repo.save_snapshot(snap)
    return storage, snaps


class _Remote:
    """The storage as S3 or SFTP would be: the first *meet* reads of objects under
    *prefix* wait for each other at a barrier, which times out (failing the read) unless
    they are in flight at once. Counts those reads."""

    def __init__(self, inner: Any, meet: int, prefix: str = layout.SNAPSHOTS) -> None:
        self.inner = inner
        self.prefix = prefix
        self.barrier = threading.Barrier(meet, timeout=10)
        self.reads = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if name.startswith(self.prefix):
            with self._lock:
                self.reads += 1
                meets = self.reads <= self.barrier.parties
            if meets:
                self.barrier.wait()
        return self.inner.get(name, offset, length)


def _order(snaps: list[Snapshot]) -> list[str]:
    return [s.id for s in sorted(snaps, key=lambda s: (s.time, s.id))]


def test_manifests_are_read_several_at_once_and_listed_oldest_first(stored: tuple[LocalStorage, list[Snapshot]]) -> None:
    storage, snaps = stored
    remote = _Remote(storage, meet=8)
    repo = Repository.open(remote, "pw")  # type: ignore[arg-type]
    listed = repo.list_snapshots()
    assert [s.id for s in listed] == _order(snaps)
    assert remote.reads == len(snaps)  # each manifest once
    assert [(s.source, s.time, s.run) for s in listed] == [(s.source, s.time, s.run) for s in sorted(snaps, key=lambda s: (s.time, s.id))]


def test_latest_of_a_source_is_found_through_the_parallel_listing(stored: tuple[LocalStorage, list[Snapshot]]) -> None:
    storage, snaps = stored
    repo = Repository.open(_Remote(storage, meet=8), "pw")  # type: ignore[arg-type]
    newest = max((s for s in snaps if s.source == "s1"), key=lambda s: (s.time, s.id))
    assert repo.find_snapshot("latest", source="s1").id == newest.id


def test_a_damaged_manifest_is_reported_and_the_others_are_listed(stored: tuple[LocalStorage, list[Snapshot]]) -> None:
    storage, snaps = stored
    bad = sorted(snaps, key=lambda s: s.id)[5]
    path = Path(storage.root) / layout.snapshot_name(bad.id)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    repo = Repository.open(storage, "pw")
    reported: list[str] = []
    listed = repo.list_snapshots(on_error=lambda name, _detail: reported.append(name))
    assert reported == [layout.snapshot_name(bad.id)]
    assert [s.id for s in listed] == _order([s for s in snaps if s.id != bad.id])
    with pytest.raises(IntegrityError) as info:
        repo.list_snapshots()
    assert layout.snapshot_name(bad.id) in str(info.value)


def test_a_manifest_deleted_while_listing_is_skipped(stored: tuple[LocalStorage, list[Snapshot]],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    storage, snaps = stored
    gone = snaps[3]
    repo = Repository.open(storage, "pw")
    ids = repo.snapshot_ids()
    (Path(storage.root) / layout.snapshot_name(gone.id)).unlink()  # a forget on another host, after the listing
    monkeypatch.setattr(repo, "snapshot_ids", lambda: ids)
    assert [s.id for s in repo.list_snapshots()] == _order([s for s in snaps if s.id != gone.id])


# -- index files ---------------------------------------------------------------------


@pytest.fixture
def indexed(tmp_path: Path) -> tuple[LocalStorage, list[bytes]]:
    """A repository with ten index files (one per backup session), 30 blobs in all."""
    storage = LocalStorage(str(tmp_path / "repo"))
    Repository.init(storage, "pw", pack_size=1024 * 1024)
    repo = Repository.open(storage, "pw")
    ids: list[bytes] = []
    for session in range(10):
        with BlobSaver(repo) as saver:
            ids += [saver.save(os.urandom(1000 + session), BLOB_DATA)[0] for _ in range(3)]
    assert len(repo.index.files) == 10
    return storage, ids


def _locations(repo: Repository, ids: list[bytes]) -> list[Any]:
    return [repo.index.get(chunk_id) for chunk_id in ids]


def test_index_files_are_read_several_at_once_into_the_same_index(indexed: tuple[LocalStorage, list[bytes]]) -> None:
    storage, ids = indexed
    plain = Repository.open(storage, "pw")
    plain.load_index()
    remote = _Remote(storage, meet=INDEX_READS, prefix=layout.INDEX)
    repo = Repository.open(remote, "pw")  # type: ignore[arg-type]
    repo.load_index()
    assert remote.reads == 10  # each file once
    assert repo.index.files == plain.index.files
    assert _locations(repo, ids) == _locations(plain, ids)
    assert None not in _locations(repo, ids)


def test_a_damaged_index_file_raises_or_is_reported_and_the_rest_is_loaded(indexed: tuple[LocalStorage, list[bytes]]) -> None:
    storage, ids = indexed
    names = sorted(p.name for p in (Path(storage.root) / "index").iterdir())
    (Path(storage.root) / "index" / names[4]).write_bytes(b"not an index file")
    repo = Repository.open(storage, "pw")
    with pytest.raises(IntegrityError) as info:
        repo.load_index()
    assert names[4] in str(info.value)
    reported: list[str] = []
    repo.load_index(on_error=lambda name, _detail: reported.append(name))
    assert reported == [layout.index_name(names[4])]
    assert len(repo.index.files) == 9
    assert sum(loc is not None for loc in _locations(repo, ids)) == 27  # the damaged file's three blobs are gone
