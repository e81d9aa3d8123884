"""#18: a restore holds only the directories above the current entry (plus those whose
files are still in flight) for their final mode and mtime, not every directory of the
tree; checked on entry counts from the heap (not timings), with exactness."""

from __future__ import annotations

import gc
import os
import stat
import threading
from pathlib import Path

import pytest

from drkit.repository.repo import Repository
from drkit.repository.tree import DIR, FILE, Entry
from drkit.services.restore import SnapshotReader
from drkit.storage import LocalStorage
from tests.hostile.snapshots import write_snapshot


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    storage = LocalStorage(str(tmp_path / "repo"))
    Repository.init(storage, "pw", pack_size=1024 * 1024)
    return Repository.open(storage, "pw")


def _dir_tree(dirs: int, per_dir: int) -> tuple[list[Entry], dict[str, bytes]]:
    entries: list[Entry] = []
    contents: dict[str, bytes] = {}
    for d in range(dirs):
        top = f"t{d // 20:03d}"
        if d % 20 == 0:
            entries.append(Entry(top, DIR, mode=0o755, mtime_ns=1_500_000_000_000_000_000 + d))
        sub = f"{top}/s{d % 20:02d}"
        entries.append(Entry(sub, DIR, mode=0o555 if d % 7 == 0 else 0o750, mtime_ns=1_600_000_000_000_000_000 + d * 1_000_003))
        for i in range(per_dir):
            path = f"{sub}/f{i:02d}"
            entries.append(Entry(path, FILE, mode=0o640, mtime_ns=1_700_000_000_000_000_000 + d * 100 + i))
            contents[path] = f"{path}\n".encode() * (1 + i % 3)
    return entries, contents


def _restore_counting_dirs(repo: Repository, tmp_path: Path, dirs: int, name: str) -> tuple[int, int]:
    """Restore *dirs* directories of 5 files; return (most directory entries alive
    at once, seen from the heap during the restore, samples)."""
    entries, contents = _dir_tree(dirs, 5)
    snap = write_snapshot(repo, entries, contents)
    del entries
    gc.collect()
    peak = [0, 0]
    calls = [0]

    sampling = threading.Lock()

    def sample(_n: int) -> None:
        calls[0] += 1
        # One sample at a time (a sample's list of every object keeps what is freed
        # meanwhile alive for a second worker sampling at once).
        if calls[0] % 200 or not sampling.acquire(blocking=False):
            return
        try:
            gc.collect()
            alive = sum(1 for o in gc.get_objects() if type(o) is Entry and o.type == DIR)
        finally:
            sampling.release()
        peak[0] = max(peak[0], alive)
        peak[1] += 1

    target = tmp_path / name
    result = SnapshotReader(repo, snap, target=target, window_files=50, on_bytes=sample).write_entries(target)
    assert result.files == dirs * 5 and result.failed == []
    by_path = {e.path: e for e in _dir_tree(dirs, 5)[0]}
    for path, e in by_path.items():
        st = os.lstat(target / path)
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (e.mode, e.mtime_ns), path
        if e.type == FILE:
            assert (target / path).read_bytes() == contents[path]
    for p in target.rglob("*"):  # let pytest remove the read-only directories
        if p.is_dir():
            p.chmod(0o755)
    return peak[0], peak[1]


def test_a_restore_holds_the_directories_above_it_not_every_directory(repo: Repository, tmp_path: Path) -> None:
    """Directory metadata used to be held for the whole tree and set at the end; now a
    directory is set once the walk left it and its files are in place. Directories
    alive at once stay bounded by depth and the windows in flight (50 files = 10
    directories per window, three windows), at 200 and at 800 directories, and every
    mode (read-only ones too) and mtime is exact."""
    small, samples_small = _restore_counting_dirs(repo, tmp_path, 200, "small")
    large, samples_large = _restore_counting_dirs(repo, tmp_path, 800, "large")
    assert samples_small >= 2 and samples_large >= 8
    assert 0 < small <= 45 and 0 < large <= 45, (small, large)


def test_entries_out_of_walk_order_still_get_exact_directory_metadata(repo: Repository, tmp_path: Path) -> None:
    """A directory entered again after the walk left it (a caller's selection, several
    roots) keeps its metadata until the end: mode and mtime as in the snapshot."""
    entries = [
        Entry("b", DIR, mode=0o555, mtime_ns=1_600_000_000_000_000_001),
        Entry("a", DIR, mode=0o750, mtime_ns=1_600_000_000_000_000_002),
        Entry("b/x", FILE, mode=0o600, mtime_ns=1_700_000_000_000_000_003),
        Entry("a/y", FILE, mode=0o600, mtime_ns=1_700_000_000_000_000_004),
        Entry("b/z", FILE, mode=0o600, mtime_ns=1_700_000_000_000_000_005),
    ]
    snap = write_snapshot(repo, entries, {"b/x": b"x", "a/y": b"y", "b/z": b"z"})
    target = tmp_path / "t"
    SnapshotReader(repo, snap, target=target, window_files=1).write_entries(target)
    for e in entries:
        st = os.lstat(target / e.path)
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (e.mode, e.mtime_ns), e.path
    assert (target / "b" / "z").read_bytes() == b"z"
    (target / "b").chmod(0o755)
