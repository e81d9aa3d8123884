"""#18: a backup runs with fewer cycle collections (drkit/gctune.py) and puts the
collector's settings back, also when it fails. (The restore's side is in
test_restore_many_files.py.)"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest

from drkit.gctune import YOUNG_THRESHOLD, fewer_collections
from drkit.repository.repo import Repository
from drkit.services.backup import BackupOptions, SnapshotWriter, run_backup
from drkit.sources.files import FilesSource
from drkit.storage import LocalStorage


def test_a_backup_collects_less_often_and_puts_the_collector_back(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(5):
        (data / f"f{i}").write_bytes(b"content %d" % i)
    (tmp_path / "scratch").mkdir()
    storage = LocalStorage(str(tmp_path / "repo"))
    Repository.init(storage, "pw")
    seen: list[tuple[int, int]] = []
    real = SnapshotWriter.add_file

    def add_file(self: SnapshotWriter, *args: Any, **kwargs: Any) -> Any:
        seen.append((gc.get_threshold()[0], gc.get_freeze_count()))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SnapshotWriter, "add_file", add_file)
    before = gc.get_threshold()
    run = run_backup(Repository.open(storage, "pw"), [FilesSource("data", FilesSource.Options(paths=[str(data)]))],
                     BackupOptions(scratch_root=tmp_path / "scratch"))
    assert not run.failed and len(seen) == 5
    assert all(threshold >= YOUNG_THRESHOLD and frozen > 0 for threshold, frozen in seen)
    assert (gc.get_threshold(), gc.get_freeze_count()) == (before, 0)


def test_the_settings_come_back_after_an_exception() -> None:
    before = gc.get_threshold()
    with pytest.raises(KeyError), fewer_collections():
        assert gc.get_threshold()[0] == max(YOUNG_THRESHOLD, before[0]) and gc.get_freeze_count() > 0
        raise KeyError("x")
    assert (gc.get_threshold(), gc.get_freeze_count()) == (before, 0)
