"""#18: restoring many small files fast. The work of creating them runs on one worker
at a time (the "file lane"), while tasks of large blobs still run side by side; the
path splitter's shortcut gives what split_path gives; the cycle collector runs less
often during a restore, and its settings are put back.

Four workers creating small files at once spent their time handing the GIL to each
other at every system call (100,000 files: 12.0 s wall, 9.3 s system time, against
9.2-9.6 s and 3.2-3.7 s with the lane). Both properties are checked by what the
workers do, not by timing."""

from __future__ import annotations

import gc
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from drkit.errors import Refused
from drkit.gctune import YOUNG_THRESHOLD
from drkit.repository.repo import Repository
from drkit.repository.tree import DIR, FILE, Entry
from drkit.services import restore as restore_mod
from drkit.services.restore import SnapshotReader
from drkit.services.restorefs import TargetTree
from drkit.storage import LocalStorage
from tests.hostile.snapshots import write_snapshot


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    storage = LocalStorage(str(tmp_path / "repo"))
    Repository.init(storage, "pw", pack_size=1024 * 1024)
    return Repository.open(storage, "pw")


def test_small_file_tasks_never_run_side_by_side(repo: Repository, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """1,200 small files make five tasks; with four workers, at most one creates files
    at any moment (each creation sleeps, so any overlap would be seen)."""
    entries = [Entry("d", DIR, mode=0o755, mtime_ns=1)]
    contents = {}
    for i in range(1200):
        path = f"d/f{i:04d}"
        entries.append(Entry(path, FILE, mode=0o644, mtime_ns=2))
        contents[path] = f"small file {i}\n".encode()
    snap = write_snapshot(repo, entries, contents)
    inside = 0
    most = 0
    lock = threading.Lock()
    real = TargetTree.write_file

    def write_file(self: TargetTree, *args: Any, **kwargs: Any) -> Any:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        try:
            time.sleep(0.0005)  # lets another worker in, if the lane did not keep it out
            return real(self, *args, **kwargs)
        finally:
            with lock:
                inside -= 1

    monkeypatch.setattr(TargetTree, "write_file", write_file)
    target = tmp_path / "t"
    result = SnapshotReader(repo, snap, target=target, workers=4).write_entries(target)
    assert (result.files, result.failed) == (1200, [])
    assert most == 1
    assert (target / "d" / "f0777").read_bytes() == b"small file 777\n"


def test_tasks_of_large_blobs_still_run_side_by_side(repo: Repository, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Two files of one 256 KiB blob each, one task each: both tasks must be decoding
    at the same time (a barrier of two), or the restore fails."""
    entries = [Entry("big", DIR, mode=0o755, mtime_ns=1)]
    contents = {}
    for i in range(2):
        path = f"big/f{i}"
        entries.append(Entry(path, FILE, mode=0o600, mtime_ns=3))
        contents[path] = os.urandom(256 * 1024)
    snap = write_snapshot(repo, entries, contents)
    monkeypatch.setattr(restore_mod, "_TASK_BYTES", 200 * 1024)  # one blob per task
    barrier = threading.Barrier(2, timeout=10)
    codec = repo.codec
    real = codec.decode_view

    def decode_view(blob_type: int, chunk_id: bytes, sealed: Any, raw_length: int) -> Any:
        if raw_length == 256 * 1024:  # a file's blob (not the tree's)
            barrier.wait()  # BrokenBarrierError (the restore fails) if the tasks were serialised
        return real(blob_type, chunk_id, sealed, raw_length)

    monkeypatch.setattr(codec, "decode_view", decode_view)
    target = tmp_path / "t"
    result = SnapshotReader(repo, snap, target=target, workers=4).write_entries(target)
    assert (result.files, result.failed) == (2, [])
    for i in range(2):
        assert (target / "big" / f"f{i}").read_bytes() == contents[f"big/f{i}"]


NAMES = ["a", "ab", "abc", ".", "..", "...", "", "x" * 255, "x" * 256, "é" * 128, "é" * 127, "a\x00b",
         ".drkit-tmp-1", "x.drkit-tmp-", "\udc80raw", "\ud800bad", " ", "a b", "-", "~", "#x", "..a"]


@pytest.mark.parametrize("parent", ["", "/", "d", "/d/e", "d/./e", "d/../e", ".drkit-tmp-x/d"])
def test_the_path_splitter_gives_what_split_path_gives(parent: str) -> None:
    """Same parts, or the same refusal, for every name the splitter's shortcut could
    take or must leave alone."""
    from drkit.services.restore import _PathSplitter
    from drkit.services.restorefs import split_path

    def outcome(f: Any, path: str) -> Any:
        try:
            return f(path)
        except Refused as exc:
            return ("refused", exc.message)

    splitter = _PathSplitter()
    for name in NAMES:
        path = f"{parent}/{name}" if parent else name
        assert outcome(splitter, path) == outcome(split_path, path), path


def test_a_restore_collects_less_often_and_puts_the_collector_back(repo: Repository, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    entries = [Entry("d", DIR, mode=0o755, mtime_ns=1)]
    contents = {}
    for i in range(20):
        entries.append(Entry(f"d/f{i}", FILE, mode=0o644, mtime_ns=2))
        contents[f"d/f{i}"] = b"x" * i
    snap = write_snapshot(repo, entries, contents)
    seen: list[tuple[int, int]] = []
    real = TargetTree.write_file

    def write_file(self: TargetTree, *args: Any, **kwargs: Any) -> Any:
        seen.append((gc.get_threshold()[0], gc.get_freeze_count()))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(TargetTree, "write_file", write_file)
    before = gc.get_threshold()
    target = tmp_path / "t"
    result = SnapshotReader(repo, snap, target=target).write_entries(target)
    assert result.files == 20 and (target / "d" / "f7").read_bytes() == b"x" * 7
    assert len(seen) == 20
    assert all(threshold >= YOUNG_THRESHOLD and frozen > 0 for threshold, frozen in seen)
    assert (gc.get_threshold(), gc.get_freeze_count()) == (before, 0)

    hostile = write_snapshot(repo, [Entry("../escape", FILE, mode=0o644, mtime_ns=1)], {"../escape": b"x"})
    with pytest.raises(Refused):
        SnapshotReader(repo, hostile, target=tmp_path / "h").write_entries(tmp_path / "h")
    assert (gc.get_threshold(), gc.get_freeze_count()) == (before, 0)


def test_finished_windows_are_written_back_in_the_background_and_synced_at_the_end(
        repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restore starts a syncfs after each finished window (one at a time, on its own
    thread) so that the final one, after every file is in place, has little left."""
    entries = [Entry("d", DIR, mode=0o755, mtime_ns=1)]
    contents = {}
    for i in range(3000):
        entries.append(Entry(f"d/f{i:04d}", FILE, mode=0o644, mtime_ns=2))
        contents[f"d/f{i:04d}"] = b"%d\n" % i
    snap = write_snapshot(repo, entries, contents)
    calls: list[tuple[str, int]] = []
    committed = 0
    real_sync, real_write_file = TargetTree._sync_once, TargetTree.write_file

    def sync_once(self: TargetTree) -> None:
        calls.append((threading.current_thread().name, committed))
        real_sync(self)

    def write_file(self: TargetTree, *args: Any) -> None:
        nonlocal committed
        real_write_file(self, *args)
        committed += 1

    monkeypatch.setattr(TargetTree, "_sync_once", sync_once)
    monkeypatch.setattr(TargetTree, "write_file", write_file)
    target = tmp_path / "t"
    result = SnapshotReader(repo, snap, target=target, window_files=500).write_entries(target)
    assert result.files == 3000 and (target / "d" / "f2999").read_bytes() == b"2999\n"
    background = [n for name, n in calls if name == "drkit-sync"]
    assert background and min(background) < 3000  # started while files were still being restored
    assert calls[-1] == (threading.main_thread().name, 3000)  # the last one: after every file


def test_closing_the_tree_waits_for_a_background_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = TargetTree(tmp_path)
    done: list[bool] = []
    real_sync = TargetTree._sync_once

    def slow_sync(self: TargetTree) -> None:
        time.sleep(0.2)
        os.fstat(self._root)  # EBADF if close() did not wait
        real_sync(self)
        done.append(True)

    monkeypatch.setattr(TargetTree, "_sync_once", slow_sync)
    tree.start_sync()
    tree.start_sync()  # one at a time: a second call while one runs does nothing
    tree.close()
    assert done == [True]


@pytest.mark.parametrize("can_set_link_times", [True, False])
def test_a_symlink_is_restored_with_its_own_mtime_or_a_warning_where_that_cannot_be_set(
        repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        can_set_link_times: bool) -> None:
    from drkit.repository.tree import SYMLINK
    from drkit.services import restorefs

    monkeypatch.setattr(restorefs, "_LINK_TIMES", can_set_link_times)
    snap = write_snapshot(repo, [Entry("l", SYMLINK, mode=0o777, mtime_ns=1_500_000_000_123_456_789, target="elsewhere")])
    target = tmp_path / "t"
    result = SnapshotReader(repo, snap, target=target).write_entries(target)
    assert result.symlinks == 1 and os.readlink(target / "l") == "elsewhere"
    warned = [r.getMessage() for r in caplog.records if "cannot set mtime of l" in r.getMessage()]
    if can_set_link_times:
        assert os.lstat(target / "l").st_mtime_ns == 1_500_000_000_123_456_789 and not warned
    else:
        assert warned and "cannot set a symlink's own times" in warned[0]
