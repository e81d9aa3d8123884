"""A backup that was killed (SIGKILL, the OOM killer) cannot remove its scratch
directory, where sources spool datastore copies and bundles: the next backup removes
it, and only it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from drkit.repository.repo import Repository
from drkit.services.backup import BackupOptions, remove_stale_scratch, run_backup
from drkit.sources.files import FilesSource
from drkit.storage import LocalStorage


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # (reused by another process meanwhile: that directory is only kept)


def test_the_next_backup_removes_what_a_killed_one_left_and_nothing_else(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    dead = _dead_pid()
    stale = scratch / f"drkit-k3s-sqlite-{dead}-ab12_x9z"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "state.db").write_bytes(b"x" * 4096)
    live = scratch / f"drkit-data-{os.getppid()}-zz99zz99"  # a running process: kept
    live.mkdir()
    mine = scratch / f"drkit-data-{os.getpid()}-zz11zz11"  # this process: kept
    mine.mkdir()
    other = scratch / "drkit-data-abcdefgh"  # an older drkit's name (no pid): kept
    other.mkdir()
    link = scratch / f"drkit-link-{dead}-aaaaaaaa"  # not a directory of its own: kept
    link.symlink_to(stale / "sub")
    not_ours = scratch / f"drkit-x-{dead}-bbbbbbbb.txt"
    not_ours.write_text("a file")

    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_bytes(b"content")
    storage = LocalStorage(str(tmp_path / "repo"))
    Repository.init(storage, "pw")
    run = run_backup(Repository.open(storage, "pw"), [FilesSource("data", FilesSource.Options(paths=[str(data)]))],
                     BackupOptions(scratch_root=scratch))
    assert not run.failed
    left = sorted(p.name for p in scratch.iterdir())
    assert left == sorted([live.name, mine.name, other.name, link.name, not_ours.name])
    assert (stale / "sub").exists() is False and os.path.islink(link)
    assert remove_stale_scratch(scratch) == []  # idempotent


def test_a_backup_names_its_scratch_directory_with_its_pid(tmp_path: Path, monkeypatch) -> None:
    import drkit.services.backup as backup_module

    seen: list[str] = []
    real_mkdtemp = backup_module.tempfile.mkdtemp

    def spy(*args: object, **kwargs: object) -> str:
        path = real_mkdtemp(*args, **kwargs)  # type: ignore[arg-type]
        seen.append(os.path.basename(path))
        return path

    monkeypatch.setattr(backup_module.tempfile, "mkdtemp", spy)
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_bytes(b"content")
    storage = LocalStorage(str(tmp_path / "repo"))
    Repository.init(storage, "pw")
    run_backup(Repository.open(storage, "pw"), [FilesSource("data", FilesSource.Options(paths=[str(data)]))],
               BackupOptions(scratch_root=tmp_path))
    assert len(seen) == 1 and backup_module._SCRATCH_NAME.fullmatch(seen[0])
    assert f"-{os.getpid()}-" in seen[0]
    assert not (tmp_path / seen[0]).exists()  # removed by the backup itself
