"""#18: a restore streams the snapshot in bounded windows: every file exact at scale,
files and blob uses alive at once bounded by the window (not by the tree), paths
still all checked before anything is written."""

from __future__ import annotations

import base64
import gc
import os
import stat
import threading
from pathlib import Path

import pytest

from drkit.errors import Refused
from drkit.repository.blob import BLOB_DATA, BLOB_TREE
from drkit.repository.repo import Repository
from drkit.repository.saver import BlobSaver
from drkit.repository.snapshot import Snapshot, now_iso
from drkit.repository.tree import FILE, Entry, encode_entries
from drkit.services import restore as restore_mod
from drkit.services.packranges import BlobUse
from drkit.services.restore import SnapshotReader
from drkit.storage import LocalStorage
from tests.hostile.snapshots import small_file_tree as _tree, write_snapshot


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    storage = LocalStorage(str(tmp_path / "repo"))
    Repository.init(storage, "pw", pack_size=1024 * 1024)  # many packs, shared by neighbouring windows
    return Repository.open(storage, "pw")


def test_every_file_of_a_20000_file_tree_is_restored_exactly(repo: Repository, tmp_path: Path) -> None:
    entries, contents = _tree(20_000)
    snap = write_snapshot(repo, entries, contents)
    target = tmp_path / "t"
    result = SnapshotReader(repo, snap, target=target, window_files=1500).write_entries(target)
    assert (result.files, result.dirs, result.failed) == (20_000, 400, [])
    by_path = {e.path: e for e in entries}
    seen = 0
    for d in sorted(os.listdir(target)):
        dst = os.stat(target / d)
        assert (stat.S_IMODE(dst.st_mode), dst.st_mtime_ns) == (0o750, by_path[d].mtime_ns), d
        for name in os.listdir(target / d):
            path = f"{d}/{name}"
            e = by_path[path]
            st = os.stat(target / path)
            assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (e.mode, e.mtime_ns), path
            assert (target / path).read_bytes() == contents[path], path
            seen += 1
    assert seen == 20_000


def test_plans_and_blob_uses_alive_at_once_are_bounded_by_the_window(repo: Repository, tmp_path: Path) -> None:
    """Counted from the heap (gc), not from the restorer's own bookkeeping: 3,000
    files restored through windows of 100 never have more than the queued windows'
    files and blob uses alive."""
    entries, contents = _tree(3000)
    snap = write_snapshot(repo, entries, contents)
    window = 100
    peaks = {"plans": 0, "uses": 0, "samples": 0}
    calls = [0]

    def alive() -> tuple[int, int]:
        gc.collect()  # count what is alive, not cyclic garbage the collector has not reached yet
        objs = gc.get_objects()
        return sum(type(o) is restore_mod._FilePlan for o in objs), sum(type(o) is BlobUse for o in objs)

    # Whatever an earlier test in this worker process still holds is not this restore's.
    before_plans, before_uses = alive()

    sampling = threading.Lock()

    def sample(_n: int) -> None:
        calls[0] += 1
        # One sample at a time: a sample's list of every object keeps a window that
        # finishes meanwhile alive, and a second worker sampling then counts it too.
        if calls[0] % 150 or not sampling.acquire(blocking=False):
            return
        try:
            plans, uses = alive()
        finally:
            sampling.release()
        peaks["plans"] = max(peaks["plans"], plans - before_plans)
        peaks["uses"] = max(peaks["uses"], uses - before_uses)
        peaks["samples"] += 1

    target = tmp_path / "t"
    result = SnapshotReader(repo, snap, target=target, window_files=window, on_bytes=sample).write_entries(target)
    assert result.files == 3000 and sum(1 for _ in target.rglob("f*")) == 3000
    bound = 3 * window  # two windows queued and the one being filled
    assert peaks["samples"] >= 10
    assert 0 < peaks["plans"] <= bound, peaks
    assert 0 < peaks["uses"] <= bound, peaks


def test_a_file_spread_over_several_windows_is_whole(repo: Repository, tmp_path: Path) -> None:
    pieces = [os.urandom(1000 + i) for i in range(10)]
    repo.load_index()
    with BlobSaver(repo) as saver:
        chunks = [saver.save(p, BLOB_DATA)[0].hex() for p in pieces]
        small = saver.save(b"small\n", BLOB_DATA)[0].hex()
        entries = [Entry("big", FILE, mode=0o640, mtime_ns=1_700_000_000_000_000_001, size=sum(map(len, pieces)), chunks=chunks),
                   Entry("small", FILE, size=6, chunks=[small])]
        tree = [saver.save(b"".join(encode_entries(entries)), BLOB_TREE)[0].hex()]
    snap = Snapshot(id=os.urandom(32).hex(), time=now_iso(), source="data", source_type="files",
                    run=os.urandom(16).hex(), host="h", tree=tree)
    repo.save_snapshot(snap)
    repo.load_index()
    target = tmp_path / "t"
    SnapshotReader(repo, snap, target=target, window_chunks=3).write_entries(target)
    assert (target / "big").read_bytes() == b"".join(pieces)
    assert os.stat(target / "big").st_mtime_ns == 1_700_000_000_000_000_001
    assert (target / "small").read_bytes() == b"small\n"
    assert sorted(p.name for p in target.iterdir()) == ["big", "small"]


_ESCAPED_B64 = base64.b64encode(b"../../escaped").decode()


@pytest.mark.parametrize("line", [
    b'{"path":"d0000/ok","type":"file","path":"../../escaped"}',  # JSON keeps the last of two keys
    b'{"path":"d0000/ok","type":"file","path_b64":"%s"}' % _ESCAPED_B64.encode(),  # the raw name wins
    b'{"path":"d0000/\\u002e\\u002e/\\u002e\\u002e/escaped","type":"file"}',  # escaped dots
    b'{"type":"file","path":"../../escaped"}',  # the path not first
    b'{"path":"d0000/ok","type":"file","user":"path","path":"../../escaped"}',
], ids=["duplicate-key", "path-b64", "escaped", "not-first", "path-as-a-value"])
def test_an_escaping_path_in_a_line_no_encoder_writes_is_refused_before_anything_is_written(
        repo: Repository, tmp_path: Path, line: bytes) -> None:
    """The first pass reads most paths without parsing their line: a line that names
    its path in any way but the plain first key must still be read as the restore
    will read it."""
    entries, contents = _tree(300)
    snap = write_snapshot(repo, entries, contents, raw_lines=[line])
    target = tmp_path / "t"
    with pytest.raises(Refused, match="would escape the target directory"):
        SnapshotReader(repo, snap, target=target, window_files=10).write_entries(target)
    assert not target.exists()
    assert not (tmp_path / "escaped").exists()


def test_an_escaping_path_after_many_windows_is_refused_before_anything_is_written(repo: Repository, tmp_path: Path) -> None:
    entries, contents = _tree(300)
    entries.append(Entry("d0000/../../escaped", FILE))
    snap = write_snapshot(repo, entries, contents)
    target = tmp_path / "t"
    with pytest.raises(Refused, match="would escape the target directory"):
        SnapshotReader(repo, snap, target=target, window_files=10).write_entries(target)
    assert not target.exists()
    assert not (tmp_path / "escaped").exists()
