"""Many small files: the promises behind the small-file fast paths (no timing: see bench/).

- a file of at most one chunk is read whole and stored as the one chunk cutting would give;
- small blobs go to the workers in batches, and every chunk id still comes out right;
- the unchanged-file check follows the parent snapshot with a cursor that holds one entry,
  and still sees a file rewritten within the same second (mtime granularity);
- a file that grew past one chunk between the walk and the read is cut as usual.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from drkit.repository.repo import Repository
from drkit.repository.tree import DIR, FILE, Entry, iter_tree
from drkit.services.backup import BackupOptions, ParentCursor, run_backup, walk_order_key
from drkit.services.restore import SnapshotReader
from drkit.sources.files import FilesSource
from drkit.storage import LocalStorage

PASSWORD = "many files"


def _repo(tmp_path: Path) -> Repository:
    storage = LocalStorage(str(tmp_path / "repo"))
    if not (tmp_path / "repo").exists():
        Repository.init(storage, PASSWORD)
    return Repository.open(storage, PASSWORD)


def _tree(root: Path, count: int) -> dict[str, bytes]:
    files = {}
    for i in range(count):
        rel = f"d{i % 37:02d}/s{i % 5}/f{i:05d}.txt"
        data = hashlib.sha256(str(i).encode()).hexdigest().encode() * (1 + i % 90)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        files[rel] = data
    return files


def _backup(tmp_path: Path, data: Path) -> dict[str, int]:
    run = run_backup(_repo(tmp_path), [FilesSource("data", FilesSource.Options(paths=[str(data)]))], BackupOptions())
    assert not run.failed
    return run.snapshots[0].stats


def test_small_files_round_trip_through_batches_and_dedupe(tmp_path: Path) -> None:
    data = tmp_path / "data"
    files = _tree(data, 1500)
    (data / "copy.txt").write_bytes(files["d00/s0/f00000.txt"])  # same content: one blob
    (data / "empty").write_bytes(b"")
    stats = _backup(tmp_path, data)
    assert stats["files_new"] == 1502
    repo = _repo(tmp_path)
    repo.load_index()
    snap = repo.find_snapshot("latest")
    entries = {e.path: e for e in iter_tree(repo, snap) if e.type == FILE}
    assert entries[f"{data}/empty"].chunks == []
    assert entries[f"{data}/copy.txt"].chunks == entries[f"{data}/d00/s0/f00000.txt"].chunks
    for rel, content in files.items():  # one chunk each, its id the keyed hash of the content
        assert entries[f"{data}/{rel}"].chunks == [repo.hasher(content).hex()]
    target = tmp_path / "restored"
    SnapshotReader(repo, snap).write_entries(target)
    for rel, content in files.items():
        assert (target / str(data).lstrip("/") / rel).read_bytes() == content


def test_a_file_rewritten_in_the_same_second_is_read_again(tmp_path: Path) -> None:
    data = tmp_path / "data"
    files = _tree(data, 300)
    assert _backup(tmp_path, data)["files_new"] == 300
    victim = data / "d03/s3/f00003.txt"
    before = os.stat(victim)
    new = b"X" * len(files["d03/s3/f00003.txt"])  # same size
    victim.write_bytes(new)
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))  # same mtime to the nanosecond
    same_second = data / "d04/s4/f00004.txt"
    st = os.stat(same_second)
    same_second.write_bytes(b"Y" * st.st_size)
    second = st.st_mtime_ns // 10**9 * 10**9
    os.utime(same_second, ns=(st.st_atime_ns, second + (st.st_mtime_ns - second + 1) % 10**9))
    stats = _backup(tmp_path, data)
    assert stats["files_changed"] == 2 and stats["files_unmodified"] == 298
    repo = _repo(tmp_path)
    repo.load_index()
    target = tmp_path / "restored"
    SnapshotReader(repo, repo.find_snapshot("latest")).write_entries(target)
    base = target / str(data).lstrip("/")
    assert (base / "d03/s3/f00003.txt").read_bytes() == new
    assert (base / "d04/s4/f00004.txt").read_bytes() == b"Y" * st.st_size


def test_parent_cursor_holds_one_entry_and_finds_in_walk_order() -> None:
    paths = ["/r", "/r/a", "/r/a/x", "/r/a.txt", "/r/b", "/r/b/y", "/r/c"]
    assert sorted(paths, key=walk_order_key) == paths  # directories before contents, names sorted
    pulled: list[str] = []

    def entries() -> Iterator[Entry]:
        for p in paths:
            pulled.append(p)
            yield Entry(path=p, type=DIR if p in ("/r", "/r/a", "/r/b") else FILE, size=len(p))

    cursor = ParentCursor(entries())
    assert len(pulled) == 1  # nothing read ahead
    assert cursor.find("/r/a") is None  # a directory is never a file's parent entry
    found = cursor.find("/r/a/x")
    assert found is not None and found.path == "/r/a/x" and len(pulled) == 3
    assert cursor.find("/r/a/new") is None and len(pulled) == 3  # absent: sorts before the current one
    assert cursor.find("/r/a.txt") is not None
    assert cursor.find("/r/b/y") is not None and len(pulled) == 6
    assert cursor.find("/r/a/x") is None  # out of order: not found (a re-read, never a wrong entry)
    assert cursor.find("/r/c") is not None and cursor.find("/r/zz") is None


def test_a_file_that_grew_past_one_chunk_after_the_walk_is_cut(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    grower = data / "grows.bin"
    grower.write_bytes(b"a" * 10)
    repo = _repo(tmp_path)
    big = os.urandom(3 * repo.chunker().max_size // 2)
    source = FilesSource("data", FilesSource.Options(paths=[str(data)]))
    real_lstat = os.lstat

    def lstat_then_grow(path: object, *args: object, **kwargs: object) -> os.stat_result:
        st = real_lstat(path, *args, **kwargs)  # type: ignore[arg-type]
        if str(path) == str(grower):
            grower.write_bytes(big)  # after the walk saw 10 bytes
        return st

    import drkit.sources.files as files_module

    original = files_module.os.lstat
    files_module.os.lstat = lstat_then_grow  # type: ignore[assignment]
    try:
        run = run_backup(repo, [source], BackupOptions())
    finally:
        files_module.os.lstat = original  # type: ignore[assignment]
    repo = _repo(tmp_path)
    repo.load_index()
    entry = next(e for e in iter_tree(repo, run.snapshots[0]) if e.path.endswith("grows.bin"))
    assert entry.size == len(big) and len(entry.chunks) >= 2
    target = tmp_path / "restored"
    SnapshotReader(repo, repo.find_snapshot("latest")).write_entries(target)
    assert (target / str(grower).lstrip("/")).read_bytes() == big
