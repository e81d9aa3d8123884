"""#18: once a backup's worker processes run, they read the small files too (the main
thread spent 40% of a first backup of 100,000 small files in open/read/close). What is
stored must be what the main thread would have stored, also for a file that changes
between the walk's ``lstat`` and the read: gone or turned into a symlink (skipped with
a warning), truncated (an empty file), grown past one chunk (streamed then), rewritten
(its new content)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest

import drkit.services.backup as backup_module
from drkit.errors import PartialFailure
from drkit.repository.repo import Repository
from drkit.repository.saver import BlobSaver
from drkit.repository.sealprocs import SealWorkers
from drkit.services.backup import BackupOptions, run_backup
from drkit.services.restore import SnapshotReader
from drkit.services.verify import verify_repository
from drkit.sources.files import FilesSource
from drkit.storage import LocalStorage


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    storage = LocalStorage(str(tmp_path / "repo"))
    Repository.init(storage, "pw")
    return Repository.open(storage, "pw")


@pytest.fixture(autouse=True)
def workers_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("drkit.repository.saver.MIN_BATCHES", 1)


def _tree(root: Path, small: int, medium: int = 0) -> dict[str, bytes]:
    """*small* files of a few KiB, then *medium* files of 100 KiB (batches of those
    average more than 64 KiB: threads seal them, and read them)."""
    contents = {}
    for i in range(small + medium):
        d = root / f"d{i // 100:03d}"
        d.mkdir(parents=True, exist_ok=True)
        data = f"file {i}\n".encode() * (1 + i % 300) if i < small else os.urandom(100 * 1024)
        (d / f"f{i:04d}").write_bytes(data)
        contents[f"d{i // 100:03d}/f{i:04d}"] = data
    return contents


def _backup(repo: Repository, data: Path) -> Any:
    source = FilesSource("data", FilesSource.Options(paths=[str(data)]))
    return run_backup(repo, [source], BackupOptions(env={"DRKIT_BACKUP_PROCESSES": "2"}))


def _restored(repo: Repository, data: Path, target: Path) -> dict[str, bytes]:
    repo.load_index()
    snap = repo.find_snapshot("latest")
    SnapshotReader(repo, snap, target=target, processes=0).write_entries(target)
    base = target / str(data).lstrip("/")
    return {str(p.relative_to(base)): p.read_bytes() for p in base.rglob("f*") if p.is_file()}


def test_small_files_are_read_by_the_workers_and_stored_exactly(repo: Repository, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    contents = _tree(tmp_path / "data", 3000)
    items = {"files": 0, "data": 0}
    real_seal = SealWorkers.seal

    def seal(self: SealWorkers, blobs: Any) -> Any:
        if isinstance(blobs, tuple):  # ("groups", files to read): format v3
            items["files"] += len(blobs[1])
        for item in blobs if isinstance(blobs, list) else ():
            items["files" if len(item) == 4 else "data"] += 1
        return real_seal(self, blobs)

    main_reads = []
    real_read = backup_module.read_whole

    def read_whole(*args: Any) -> Any:
        main_reads.append(args[0])
        return real_read(*args)

    monkeypatch.setattr(SealWorkers, "seal", seal)
    monkeypatch.setattr(backup_module, "read_whole", read_whole)
    run = _backup(repo, tmp_path / "data")
    assert not run.failed and not run.outcomes[0].warnings
    assert items["files"] >= 2900 and len(main_reads) <= 100, (items, len(main_reads))
    assert _restored(repo, tmp_path / "data", tmp_path / "t") == contents
    snap = run.outcomes[0].snapshot
    assert snap.stats["size"] == snap.stats["bytes_read"] == sum(map(len, contents.values()))
    assert snap.stats["files_new"] == 3000
    assert verify_repository(repo, read_data=True, state_dir=tmp_path / "state").ok


def _gone(path: Path) -> None:
    path.unlink()


def _symlink(path: Path) -> None:
    path.unlink()
    path.symlink_to("/etc/hostname")


def _truncated(path: Path) -> None:
    path.write_bytes(b"")


def _grown(path: Path) -> None:
    path.write_bytes(b"grown " + os.urandom(2 * 1024 * 1024))


def _rewritten(path: Path) -> None:
    path.write_bytes(b"new content of the same file")


@pytest.mark.parametrize("sealed_by", ["run", "process", "thread"])
@pytest.mark.parametrize("change", [_gone, _symlink, _truncated, _grown, _rewritten], ids=lambda f: f.__name__[1:])
def test_a_file_that_changes_between_the_walk_and_its_read(repo: Repository, tmp_path: Path, sealed_by: str,
                                                           change: Callable[[Path], None],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The change happens after the walk's lstat, just before the file is queued for a
    worker (run: a small new file, read with the files beside it; process: a small file
    queued alone, as a changed one is; thread: files of 100 KiB) to read."""
    data = tmp_path / "data"
    contents = _tree(data, 400, 100)
    victim = "d004/f0450" if sealed_by == "thread" else "d002/f0250"
    queued: list[bytes] = []
    real_submit, real_submit_files = BlobSaver.submit_file, BlobSaver.submit_files

    def submit_file(self: BlobSaver, path: bytes, expected: int, limit: int) -> Any:
        queued.append(path)
        if path.endswith(victim.encode()):
            change(data / victim)
        return real_submit(self, path, expected, limit)

    def submit_files(self: BlobSaver, files: list[tuple[bytes, int, int]]) -> Any:
        for path, _, _ in files:
            if path.endswith(victim.encode()):
                queued.append(path)
                change(data / victim)
        return real_submit_files(self, files)

    monkeypatch.setattr(BlobSaver, "submit_file", submit_file)
    monkeypatch.setattr(BlobSaver, "submit_files", submit_files)
    if sealed_by == "process":  # each small file queued alone
        monkeypatch.setattr(backup_module.SnapshotWriter, "add_new_files", lambda *args: (0, 0))
    if change in (_gone, _symlink):
        with pytest.raises(PartialFailure) as failed:  # exit 7: an item was skipped
            _backup(repo, data)
        run = failed.value.outcome
    else:
        run = _backup(repo, data)
    assert any(p.endswith(victim.encode()) for p in queued), "the victim was read by the main thread"
    warnings = run.outcomes[0].warnings
    expected = dict(contents)
    if change in (_gone, _symlink):
        assert len(warnings) == 1 and str(data / victim) in warnings[0], warnings
        expected.pop(victim)
    else:
        assert not warnings
        expected[victim] = (data / victim).read_bytes()
    assert _restored(repo, data, tmp_path / "t") == expected
    snap = run.outcomes[0].snapshot
    assert snap.stats["files_new"] == len(expected)
    assert snap.stats["size"] == sum(map(len, expected.values()))
    assert verify_repository(repo, read_data=True, state_dir=tmp_path / "state").ok


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _secret_link(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.parent.parent.parent / "secret")


@pytest.mark.parametrize("processes", ["0", "2"])
@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("change", [_fifo, _secret_link], ids=["fifo", "symlink"])
def test_a_file_swapped_after_the_walk_is_neither_followed_nor_waited_on(
        repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: str, size: str,
        change: Callable[[Path], None]) -> None:
    """Between the walk's lstat and the open, a file becomes a symlink to a file the
    backup must not take under its name, or a FIFO nobody writes to. Before, a file
    over one chunk was opened following the symlink (the secret stored as the file) and
    any file was opened blocking (the backup hung on the FIFO). Now it is skipped with
    a warning, whoever reads it (main thread, thread or worker process)."""
    import threading

    (tmp_path / "secret").write_bytes(b"root's secret " * 100_000)
    data = tmp_path / "data"
    contents = _tree(data, 200)
    victim = "d001/f0150"
    (data / victim).write_bytes(os.urandom(2 * 1024 * 1024) if size == "large" else b"small victim")
    contents.pop(victim)
    real_lstat = os.lstat

    def lstat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        st = real_lstat(path, *args, **kwargs)
        if os.fspath(path).endswith(victim):
            change(data / victim)  # right after the walk looked at it
        return st

    monkeypatch.setattr("drkit.sources.files.os.lstat", lstat)
    outcome: list[Any] = []

    def backup() -> None:
        try:
            outcome.append(_backup(repo, data) if processes == "2" else run_backup(
                repo, [FilesSource("data", FilesSource.Options(paths=[str(data)]))],
                BackupOptions(env={"DRKIT_BACKUP_PROCESSES": "0"})))
        except PartialFailure as failed:
            outcome.append(failed.outcome)

    worker = threading.Thread(target=backup, daemon=True)
    worker.start()
    worker.join(20)
    if worker.is_alive():
        with open(data / victim, "wb"):  # let the hung open go on, so that the test ends
            pass
        worker.join(30)
        pytest.fail("the backup waited on a FIFO")
    run = outcome[0]
    warnings = run.outcomes[0].warnings
    assert len(warnings) == 1 and str(data / victim) in warnings[0], warnings
    assert _restored(repo, data, tmp_path / "t") == contents
