"""#18: a backup holds a bounded number of entries and queued blobs, whatever the number
of files: counted from the heap (gc) during first and unchanged backups of N and 4N
files, not from timings. (The index grows with new blobs: ~62 bytes each, see
tests/repository/test_index_memory.py.)"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from drkit.repository.repo import Repository
from drkit.repository.saver import BlobTicket, FileRun
from drkit.repository.tree import Entry
from drkit.services import backup as backup_mod
from drkit.services.backup import BackupOptions, run_backup
from drkit.sources.files import FilesSource
from drkit.storage import LocalStorage
from tests.services.test_many_files import _tree


def _peaks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int) -> list[dict[str, int]]:
    """Most Entry and BlobTicket objects alive at once during a first and an unchanged
    backup of *count* small files added one by one (one worker: at most 256 blobs in
    flight)."""
    data = tmp_path / f"data{count}"
    _tree(data, count)
    storage = LocalStorage(str(tmp_path / f"repo{count}"))
    Repository.init(storage, "pw")
    real_add_file, real_add_unchanged = backup_mod.SnapshotWriter.add_file, backup_mod.SnapshotWriter.add_unchanged
    calls = [0]
    peak = {"entries": 0, "tickets": 0, "samples": 0}

    def sample(every: int) -> None:
        calls[0] += 1
        if calls[0] % every == 0:
            gc.collect()
            objs = gc.get_objects()
            peak["entries"] = max(peak["entries"], sum(1 for o in objs if type(o) is Entry))
            peak["tickets"] = max(peak["tickets"], sum(1 for o in objs if type(o) is BlobTicket))
            peak["samples"] += 1

    def add_file(self: backup_mod.SnapshotWriter, *args: object, **kwargs: object) -> Entry:
        sample(200)
        return real_add_file(self, *args, **kwargs)  # type: ignore[arg-type]

    def add_unchanged(self: backup_mod.SnapshotWriter, *args: object, **kwargs: object) -> tuple[int, int]:
        sample(5)  # called once per run of unchanged files (a directory's)
        return real_add_unchanged(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(backup_mod.SnapshotWriter, "add_file", add_file)
    monkeypatch.setattr(backup_mod.SnapshotWriter, "add_unchanged", add_unchanged)
    # every new file added one by one, as changed files are (runs of new files: below)
    monkeypatch.setattr(backup_mod.SnapshotWriter, "add_new_files", lambda *args: (0, 0))
    out = []
    for _ in ("first", "unchanged"):
        run = run_backup(Repository.open(storage, "pw"), [FilesSource("data", FilesSource.Options(paths=[str(data)]))],
                         BackupOptions(workers=1))
        assert not run.failed and run.snapshots[0].stats["entries"] > count
        out.append(dict(peak))
        peak.update(entries=0, tickets=0, samples=0)
    assert out[1]["samples"] and run.snapshots[0].stats["files_unmodified"] == count
    return out


def test_entries_and_blobs_alive_during_a_backup_do_not_grow_with_the_files(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    small = _peaks(tmp_path, monkeypatch, 1200)
    large = _peaks(tmp_path, monkeypatch, 4800)
    for s, big in zip(small, large, strict=True):
        assert s["samples"] >= 5 and big["samples"] >= 20
        # the files in flight (at most 256 blobs queued, batches of 64), at 1,200 and at
        # 4,800 files alike (how many of them a sample catches depends on the load: only
        # the bound is asserted)
        for peak in (s, big):
            assert peak["entries"] <= 400 and peak["tickets"] <= 400, (small, large)
    assert small[0]["entries"] > 0 and large[0]["entries"] > 0  # the first backups' samples saw files in flight
    # an unchanged file is recorded as its parent's line: no entry at all
    assert small[1]["entries"] == large[1]["entries"] == 0, (small, large)


def _run_peaks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int) -> dict[str, int]:
    """Most files held in runs (queued for the workers or waiting to be written) at once
    during a first backup of *count* small files whose workers start at once."""
    data = tmp_path / f"data{count}"
    _tree(data, count)
    storage = LocalStorage(str(tmp_path / f"repo{count}"))
    Repository.init(storage, "pw")
    real = backup_mod.SnapshotWriter.add_new_files
    peak = {"files": 0, "samples": 0, "calls": 0}

    def add_new_files(self: backup_mod.SnapshotWriter, *args: object, **kwargs: object) -> tuple[int, int]:
        peak["calls"] += 1
        if peak["calls"] % 5 == 0:
            gc.collect()
            held = sum(len(o.files) for o in gc.get_objects() if type(o) is FileRun)
            peak["files"] = max(peak["files"], held)
            peak["samples"] += 1
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(backup_mod.SnapshotWriter, "add_new_files", add_new_files)
    monkeypatch.setattr("drkit.repository.saver.MIN_BATCHES", 1)
    run = run_backup(Repository.open(storage, "pw"), [FilesSource("data", FilesSource.Options(paths=[str(data)]))],
                     BackupOptions(workers=1, env={"DRKIT_BACKUP_PROCESSES": "2"}))
    assert not run.failed and run.snapshots[0].stats["files_new"] == count
    return peak


def test_files_held_in_runs_do_not_grow_with_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = _run_peaks(tmp_path, monkeypatch, 1200)
    large = _run_peaks(tmp_path, monkeypatch, 4800)
    assert small["samples"] >= 20 and large["samples"] >= 20, (small, large)
    assert large["files"] > 0, large  # the samples saw runs in flight
    # at most 256 blobs in flight (one thread: 4 batches of 64) and the runs done but not
    # yet written, at 4,800 files as at 1,200
    assert small["files"] <= 400 and large["files"] <= 400, (small, large)
