"""``--include`` patterns are checked against the snapshot before anything is written:
one that matches no path is a usage error naming it. The check streams the tree's paths
(it neither decodes entries nor holds the paths: its memory does not grow with the
snapshot) and stops once every pattern has matched."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from drkit.errors import UsageError
from drkit.repository.repo import Repository
from drkit.repository.snapshot import Snapshot
from drkit.repository.tree import DIR, FILE, Entry
from drkit.services import restore
from drkit.services.restore import require_include_matches
from drkit.storage import LocalStorage
from tests.hostile.snapshots import write_snapshot


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    storage = LocalStorage(str(tmp_path / "repo"))
    Repository.init(storage, "pw")
    return Repository.open(storage, "pw")


def _snapshot(repo: Repository, files: int) -> Snapshot:
    """A snapshot of *files* empty files in directories of 100, its tree stored in
    64 KiB blobs as a backup's chunker would cut it (anywhere, mid-line)."""
    entries: list[Entry] = []
    for i in range(files):
        if i % 100 == 0:
            entries.append(Entry(f"/srv/d{i // 100:04d}", DIR, mode=0o755))
        entries.append(Entry(f"/srv/d{i // 100:04d}/file-{i:06d}.conf", FILE, mode=0o644, mtime_ns=1_700_000_000_000_000_000 + i))
    return write_snapshot(repo, entries, tree_piece=64 * 1024)


def test_the_first_pattern_that_matches_nothing_is_named(repo: Repository) -> None:
    snap = _snapshot(repo, 300)
    require_include_matches(repo, snap, ["/srv/d0001", "*/file-000299.conf", "/srv/d0002/*"])  # all match
    with pytest.raises(UsageError, match=r"--include '\*\.yaml' matches nothing") as err:
        require_include_matches(repo, snap, ["/srv/d0000", "*.yaml", "/nowhere", "*/file-000007.conf"])
    assert "drkit ls" in (err.value.hint or "")


def test_it_stops_reading_once_every_pattern_matched(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    snap = _snapshot(repo, 20_000)
    assert len(snap.tree) > 10
    read: list[int] = []
    real = restore.tree_chunks

    def counted(repo: Repository, snap: Snapshot):  # type: ignore[no-untyped-def]
        for chunk in real(repo, snap):
            read.append(len(chunk))
            yield chunk

    monkeypatch.setattr(restore, "tree_chunks", counted)
    require_include_matches(repo, snap, ["*/file-000050.conf"])
    assert len(read) <= 2
    read.clear()
    with pytest.raises(UsageError):
        require_include_matches(repo, snap, ["*/file-000050.conf", "/absent"])
    assert len(read) == len(snap.tree)


def test_its_memory_does_not_grow_with_the_snapshot(repo: Repository) -> None:
    peaks = []
    for files in (10_000, 40_000):
        snap = _snapshot(repo, files)
        tracemalloc.start()
        with pytest.raises(UsageError):
            require_include_matches(repo, snap, ["/absent"])  # reads every path
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    # Holding the paths would take about 5 MiB more at 40,000 files than at 10,000.
    assert peaks[1] < peaks[0] + 1024 * 1024, peaks
