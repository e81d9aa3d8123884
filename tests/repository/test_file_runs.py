"""#18: in a first backup, once the worker processes read small files, the new small
files of a directory go to them in runs (:meth:`BlobSaver.submit_files`): one task,
one future and one claim per run, and each file's line written straight from its
``lstat`` and chunk id (:meth:`SnapshotWriter.add_new_files`), with no Entry or ticket
per file. The tree must be byte for byte the one the file-by-file path writes, for
every kind of name, owner, mode and time, and restore exactly."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

import drkit.services.backup as backup_module
from drkit.repository.repo import Repository
from drkit.repository.saver import RUN_FILE_MAX, BlobSaver
from drkit.repository.tree import split_lines, tree_chunks
from drkit.services.backup import BackupOptions, run_backup
from drkit.services.restore import SnapshotReader
from drkit.services.verify import verify_repository
from drkit.sources.files import FilesSource
from drkit.storage import LocalStorage


@pytest.fixture(autouse=True)
def workers_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("drkit.repository.saver.MIN_BATCHES", 1)


def _awkward_tree(root: Path) -> dict[str, bytes]:
    """Small files in runs broken by every other kind of entry: names JSON escapes
    (quotes, backslashes, control characters, non-ASCII, bytes that are not UTF-8), an empty file, files
    just above and just below the largest a run takes, one of several chunks, a
    symlink, odd modes, a time of 0, an owner without a name."""
    contents: dict[str, bytes] = {}

    def put(rel: str | bytes, data: bytes, mode: int | None = None) -> Path:
        path = Path(os.fsdecode(os.fsencode(str(root)) + b"/" + (rel if isinstance(rel, bytes) else rel.encode())))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if mode is not None:
            path.chmod(mode)
        contents[os.fsdecode(rel) if isinstance(rel, bytes) else rel] = data
        return path

    for d in range(6):
        for i in range(300):
            put(f"d{d}/f{i:04d}", f"file {d}/{i}\n".encode() * (1 + (i * 7) % 200))
    put("d1/f0100", b"")  # empty: no blob, in the middle of a run
    put("d1/f0150", os.urandom(RUN_FILE_MAX + 1))  # one byte too large for a run
    put("d1/f0151", os.urandom(RUN_FILE_MAX))  # the largest a run takes
    put("d2/f0200", os.urandom(3 * 1024 * 1024))  # several chunks
    put("d2/f0201", b"same content")  # three files with one blob, two in one run
    put("d2/f0202", b"same content")
    put("d3/f0002", b"same content")
    put('d3/quote".txt', b"a quote in the name")
    put("d3/back\\slash", b"a backslash in the name")
    put("d3/caf\u00e9-\u540d", b"not ASCII")
    put(b"d3/bytes-\xff\xfe", b"a name that is not UTF-8")
    put("d3/new\nline\ttab", b"control characters in the name")
    put("d3/setuid", b"#!/bin/sh\n", 0o4755)
    put("d3/private", b"secret", 0o600)
    epoch = put("d4/epoch", b"a file of 1970")
    os.utime(epoch, ns=(0, 0))
    (root / "d4" / "link").symlink_to("f0001")
    if os.geteuid() == 0:
        os.chown(put("d5/nobody-known", b"owned by a uid without a name"), 54321, 54321)
    return contents


def _backup(repo: Repository, data: Path) -> Any:
    run = run_backup(repo, [FilesSource("data", FilesSource.Options(paths=[str(data)]))],
                     BackupOptions(env={"DRKIT_BACKUP_PROCESSES": "2"}))
    assert not run.failed and not run.outcomes[0].warnings
    return run.snapshots[0]


def _tree_bytes(repo: Repository, snap: Any) -> list[bytes]:
    return list(split_lines(tree_chunks(repo, snap)))


def test_runs_write_the_tree_the_file_by_file_path_writes_and_restore_exactly(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    contents = _awkward_tree(data)
    Repository.init(LocalStorage(str(tmp_path / "runs")), "pw")
    shutil.copytree(tmp_path / "runs", tmp_path / "one-by-one")  # the same keys: the same chunk ids
    taken: list[int] = []
    real_submit_files = BlobSaver.submit_files

    def submit_files(self: BlobSaver, files: list[tuple[bytes, int, int]]) -> Any:
        taken.append(len(files))
        return real_submit_files(self, files)

    monkeypatch.setattr(BlobSaver, "submit_files", submit_files)
    runs_repo = Repository.open(LocalStorage(str(tmp_path / "runs")), "pw")
    in_runs = _backup(runs_repo, data)
    assert sum(taken) >= 1700, taken  # all but the first batch and the files no run takes
    monkeypatch.setattr(backup_module.SnapshotWriter, "add_new_files", lambda *args: (0, 0))
    taken.clear()
    plain_repo = Repository.open(LocalStorage(str(tmp_path / "one-by-one")), "pw")
    one_by_one = _backup(plain_repo, data)
    assert not taken

    lines = _tree_bytes(runs_repo, in_runs)
    assert len(lines) == in_runs.stats["entries"]
    ours = [line for line in lines if str(data).encode() in line]  # (not the parents: the repositories changed them)
    assert ours == [line for line in _tree_bytes(plain_repo, one_by_one) if str(data).encode() in line]
    assert len(ours) == len(contents) + 1 + 6 + 1  # files, the root, six directories, the link
    for key in ("files_new", "size", "bytes_read", "blobs_new"):
        assert in_runs.stats[key] == one_by_one.stats[key], key
    assert in_runs.stats["files_new"] == len(contents)  # (and blobs_new the same: "same content" stored once)

    target = tmp_path / "target"
    SnapshotReader(runs_repo, in_runs, target=target, processes=0).write_entries(target)
    base = target / str(data).lstrip("/")
    for rel, payload in contents.items():
        restored, original = base / rel, data / rel
        assert restored.read_bytes() == payload, rel
        got, want = restored.lstat(), original.lstat()
        assert (got.st_mode, got.st_mtime_ns, got.st_uid, got.st_gid) == (want.st_mode, want.st_mtime_ns, want.st_uid,
                                                                          want.st_gid), rel
    assert os.readlink(base / "d4" / "link") == "f0001"
    assert verify_repository(runs_repo, read_data=True, state_dir=tmp_path / "state").ok


def test_runs_are_only_for_files_without_a_parent_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that has a parent entry (unchanged, or changed) is never in a run: it is
    compared with that entry, and counted as changed. New files after the end of the
    parent's tree are. The saver refuses a run without its workers."""
    storage = LocalStorage(str(tmp_path / "repo"))
    Repository.init(storage, "pw")
    repo = Repository.open(storage, "pw")
    with BlobSaver(repo) as saver:
        assert not saver.reads_files
        with pytest.raises(RuntimeError, match="worker processes"):
            saver.submit_files([(b"/etc/hostname", 1, 1024)])

    data = tmp_path / "data"
    contents = {}
    for i in range(600):
        rel = f"d{i // 100}/f{i:03d}"
        contents[rel] = b"%d\n" % i * 50
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(contents[rel])
    _backup(repo, data)
    for i in range(0, 600, 2):  # every other file changed: the parent's tree is compared to its end
        contents[f"d{i // 100}/f{i:03d}"] = b"changed %d\n" % i
        (data / f"d{i // 100}/f{i:03d}").write_bytes(contents[f"d{i // 100}/f{i:03d}"])
    for i in range(300):  # and new files after its end
        contents[f"z/n{i:03d}"] = b"new %d\n" % i * 20
        (data / "z").mkdir(exist_ok=True)
        (data / f"z/n{i:03d}").write_bytes(contents[f"z/n{i:03d}"])
    in_runs: list[bytes] = []
    real_submit_files = BlobSaver.submit_files

    def submit_files(self: BlobSaver, files: list[tuple[bytes, int, int]]) -> Any:
        in_runs.extend(path for path, _, _ in files)
        return real_submit_files(self, files)

    monkeypatch.setattr(BlobSaver, "submit_files", submit_files)
    second = _backup(repo, data)
    assert in_runs and all(b"/z/n" in path for path in in_runs), in_runs[:3]
    assert second.stats["files_changed"] == 300 and second.stats["files_unmodified"] == 300
    assert second.stats["files_new"] == 300
    target = tmp_path / "target"
    SnapshotReader(repo, second, target=target, processes=0).write_entries(target)
    base = target / str(data).lstrip("/")
    assert {str(p.relative_to(base)): p.read_bytes() for p in base.rglob("*") if p.is_file()} == contents
