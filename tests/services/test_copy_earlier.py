"""``drkit copy`` reuses what the earlier copy of the same source holds: the three trees
(the source's earlier snapshot, its copy, the snapshot being copied) are read side by
side, one entry of each at a time, so the pairing's memory does not grow with the
number of files, and only a file whose path had the same source chunks is reused."""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

import pytest

from drkit.repository.repo import Repository
from drkit.repository.snapshot import Snapshot
from drkit.repository.tree import DIR, FILE, Entry, iter_tree
from drkit.services.copy import _EarlierCopy
from drkit.storage import LocalStorage
from tests.hostile.snapshots import write_snapshot


def _repo(root: Path) -> Repository:
    storage = LocalStorage(str(root))
    Repository.init(storage, "pw")
    return Repository.open(storage, "pw")


def _entries(files: int, *, changed: frozenset[int] = frozenset(), salt: str = "", mtime_ns: int = 0) -> list[Entry]:
    """*files* files of 10 bytes in directories of 100, each with one (made-up) chunk id:
    the same ids for the same *salt*, others for the files in *changed*."""
    out: list[Entry] = []
    for i in range(files):
        if i % 100 == 0:
            out.append(Entry(f"/srv/d{i // 100:04d}", DIR, mode=0o755))
        tag = f"{salt}{'changed' if i in changed else ''}{i}"
        out.append(Entry(f"/srv/d{i // 100:04d}/f{i:06d}", FILE, size=10, mtime_ns=mtime_ns, chunks=[_id(tag)]))
    return out


def _id(tag: str) -> str:
    return hashlib.sha256(tag.encode()).hexdigest()


def _pairing(tmp_path: Path, files: int, changed: frozenset[int] = frozenset()) -> tuple[Repository, Snapshot, _EarlierCopy]:
    src, dst = _repo(tmp_path / f"src{files}"), _repo(tmp_path / f"dst{files}")
    before = write_snapshot(src, _entries(files), tree_piece=64 * 1024, time="2026-01-01T00:00:00Z")
    copy = write_snapshot(dst, _entries(files, salt="dst"), tree_piece=64 * 1024, time="2026-01-01T00:00:00Z")
    now = write_snapshot(src, _entries(files, changed=changed, mtime_ns=1), tree_piece=64 * 1024, time="2026-01-02T00:00:00Z")
    return src, now, _EarlierCopy(src, dst, now, [before, now], {before.id: copy})


def test_a_file_is_reused_only_where_its_path_had_the_same_source_chunks(tmp_path: Path) -> None:
    src, now, earlier = _pairing(tmp_path, 500, changed=frozenset({3, 250, 499}))
    reused = {e.path: earlier.chunks(e) for e in iter_tree(src, now) if e.type == FILE}
    assert len(reused) == 500
    for i in range(500):
        path = f"/srv/d{i // 100:04d}/f{i:06d}"
        assert reused[path] == (None if i in {3, 250, 499} else [_id(f"dst{i}")]), path


def test_no_earlier_copy_reuses_nothing(tmp_path: Path) -> None:
    src = _repo(tmp_path / "src")
    now = write_snapshot(src, _entries(50))
    earlier = _EarlierCopy(src, _repo(tmp_path / "dst"), now, [now], {})
    assert earlier.of is None
    assert all(earlier.chunks(e) is None for e in iter_tree(src, now))


def test_the_pairing_holds_one_entry_of_each_tree(tmp_path: Path) -> None:
    peaks = []
    for files in (5_000, 20_000):
        src, now, earlier = _pairing(tmp_path, files)
        tracemalloc.start()
        reused = sum(earlier.chunks(e) is not None for e in iter_tree(src, now) if e.type == FILE)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert reused == files
    # A map of every file (the earlier way) took about 12 MiB more at 20,000 files.
    assert peaks[1] < peaks[0] + 1024 * 1024, peaks


@pytest.mark.parametrize("damaged", ["source", "copy"])
def test_an_unreadable_earlier_tree_only_means_reading_again(tmp_path: Path, damaged: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    src, dst = _repo(tmp_path / "src"), _repo(tmp_path / "dst")
    before = write_snapshot(src, _entries(300), tree_piece=4096, time="2026-01-01T00:00:00Z")
    copy = write_snapshot(dst, _entries(300, salt="dst"), tree_piece=4096, time="2026-01-01T00:00:00Z")
    now = write_snapshot(src, _entries(300, mtime_ns=1), tree_piece=4096, time="2026-01-02T00:00:00Z")
    repo, snap = (src, before) if damaged == "source" else (dst, copy)
    loc = repo.index.get(bytes.fromhex(snap.tree[2]))
    assert loc is not None
    pack = Path(repo.storage.root) / "data" / loc.pack[:2] / loc.pack  # type: ignore[attr-defined]
    data = bytearray(pack.read_bytes())
    data[loc.offset + 20] ^= 0xFF
    pack.chmod(0o644)
    pack.write_bytes(bytes(data))
    earlier = _EarlierCopy(src, dst, now, [before, now], {before.id: copy})
    results = [earlier.chunks(e) for e in iter_tree(src, now) if e.type == FILE]
    assert results[0] == [_id("dst0")]  # read before the damage
    assert results[-1] is None  # after it: read from the source again
    assert sum(r is not None for r in results) < 300
    assert [r.message for r in caplog.records if "earlier copy" in r.message] == [
        next(r.message for r in caplog.records if "earlier copy" in r.message)]
