"""#18: a restore into a new or empty target is staged. It writes into a hidden
directory inside the target, where a small file goes straight to its real name (no
temporary, no rename: a quarter of the system time of a restore of many small files),
and moves the tree into place at the end. What the target shows is the same as
without staging: nothing half-written under a real name, before, during or after;
complete files only when the restore stops early."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from drkit.errors import Refused, RestoreTargetError
from drkit.repository.repo import Repository
from drkit.repository.tree import DIR, FILE, Entry
from drkit.services.restore import RestoreOptions, SnapshotReader
from drkit.services import restorefs
from drkit.services.restorefs import TMP_PREFIX, TargetTree, is_staging_name
from tests.hostile.snapshots import assert_restored_exactly as _assert_exact, small_file_tree, small_pack_repo, write_snapshot


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return small_pack_repo(tmp_path)


def _fail_writes_after(monkeypatch: pytest.MonkeyPatch, count: int, code: int) -> None:
    """Every ``os.write`` after the first *count* fails with errno *code*."""
    calls = {"n": 0}
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] > count:
            raise OSError(code, os.strerror(code))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)


def _staging_of(target: Path) -> list[str]:
    return [n for n in os.listdir(target) if is_staging_name(n)]


@pytest.mark.parametrize("processes", [2, 0], ids=["workers", "one-process"])
def test_a_new_target_shows_no_real_name_until_the_restore_is_done(
        repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: int) -> None:
    entries, contents = small_file_tree(600)
    snap = write_snapshot(repo, entries, contents)
    target = tmp_path / "t"
    seen: list[list[str]] = []
    real_meta = TargetTree.set_dir_meta

    def set_dir_meta(self: TargetTree, parts: Any, e: Entry) -> None:  # (while files are being written)
        seen.append(sorted(os.listdir(target)))
        real_meta(self, parts, e)

    monkeypatch.setattr(TargetTree, "set_dir_meta", set_dir_meta)
    reader = SnapshotReader(repo, snap, target=target, processes=processes, window_files=100)
    result = reader.write_entries(target)
    assert result.files == 600 and result.failed == []
    assert len(seen) == 12
    for listing in seen:
        assert len(listing) == 1 and is_staging_name(listing[0]), listing
    assert sorted(os.listdir(target)) == sorted(e.path for e in entries if "/" not in e.path)
    _assert_exact(target, entries, contents)


def test_small_files_in_a_staged_tree_take_no_temporary_and_no_rename(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    renames: list[str] = []
    real_rename = os.rename

    def rename(src: Any, dst: Any, **kw: Any) -> None:
        renames.append(str(dst))
        real_rename(src, dst, **kw)

    monkeypatch.setattr(os, "rename", rename)
    e = Entry("a/f", FILE, mode=0o640, mtime_ns=1_650_000_000_123_456_789)
    for staged in (True, False):
        target = tmp_path / f"t{staged}"
        target.mkdir()
        tree = TargetTree.staged(target) if staged else TargetTree(target)
        try:
            tree.make_dir(("a",), replace=False)
            tree.write_file(("a",), "f", e, b"content\n")
            tree.publish()
        finally:
            tree.close()
        assert (target / "a" / "f").read_bytes() == b"content\n"
        st = os.stat(target / "a" / "f")
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o640, e.mtime_ns)
        assert renames == ([] if staged else ["f"]), staged  # (publish moves "a" with renameat2)
        assert _staging_of(target) == []


def test_a_staged_write_over_a_name_replaces_a_file_and_refuses_a_directory(tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.mkdir()
    tree = TargetTree.staged(target)
    e = Entry("f", FILE, mode=0o600, mtime_ns=1_650_000_000_000_000_000)
    try:
        tree.write_file((), "f", e, b"first\n")
        tree.write_file((), "f", e, b"second, longer\n")  # (a caller's selection may name a file twice)
        tree.make_dir(("d",), replace=False)
        with pytest.raises(Refused, match="refusing to replace directory d by a file"):
            tree.write_file((), "d", e, b"over a directory\n")
        staging = tree.staging
        assert staging is not None and sorted(os.listdir(staging)) == ["d", "f"]
        tree.publish()
    finally:
        tree.close()
    assert (target / "f").read_bytes() == b"second, longer\n" and (target / "d").is_dir()
    assert sorted(os.listdir(target)) == ["d", "f"]


def test_a_staged_write_that_fails_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "t"
    target.mkdir()
    tree = TargetTree.staged(target)

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    try:
        monkeypatch.setattr(os, "write", full)
        with pytest.raises(OSError, match="No space left"):
            tree.write_file((), "f", Entry("f", FILE, mode=0o644), b"data\n")
        monkeypatch.undo()
        staging = tree.staging
        assert staging is not None and os.listdir(staging) == []
    finally:
        tree.close()


def test_a_restore_that_fails_puts_its_complete_files_in_place(repo: Repository, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A target that fails under the restore (here: a write, after 200 files): the
    files written before are complete and in place, the staging directory is gone."""
    entries, contents = small_file_tree(600)
    snap = write_snapshot(repo, entries, contents)
    target = tmp_path / "t"
    _fail_writes_after(monkeypatch, 200, errno.EIO)
    with pytest.raises(Exception, match="Input/output error"):
        SnapshotReader(repo, snap, target=target, processes=0, workers=1).write_entries(target)
    monkeypatch.undo()
    files = [p for p in target.rglob("f*") if p.is_file()]
    assert 150 <= len(files) <= 200
    for p in files:
        assert p.read_bytes() == contents[str(p.relative_to(target))], p
    assert [str(p) for p in target.rglob(f"{TMP_PREFIX}*")] == []


def test_a_staging_directory_a_killed_restore_left_is_removed_by_the_next(repo: Repository, tmp_path: Path) -> None:
    entries, contents = small_file_tree(120)
    snap = write_snapshot(repo, entries, contents)
    target = tmp_path / "t"
    left = target / f"{TMP_PREFIX}0123456789ab-partial"
    (left / "d0000").mkdir(parents=True)
    (left / "d0000" / "f00001").write_bytes(b"half")
    reader = SnapshotReader(repo, snap, target=target, processes=0)  # (no --force: the target counts as empty)
    reader.write_entries(target)
    assert not left.exists()
    assert any(str(left) in line and "killed" in line for line in reader.lines), reader.lines
    _assert_exact(target, entries, contents)


def test_a_staging_directory_in_use_refuses_a_second_restore(repo: Repository, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(restorefs, "STALE_WAIT", 0.2)
    entries, contents = small_file_tree(120)
    snap = write_snapshot(repo, entries, contents)
    target = tmp_path / "t"
    busy = target / f"{TMP_PREFIX}0123456789ab-partial"
    (busy / "d0000").mkdir(parents=True)
    fd = os.open(busy, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (as the restore writing there holds it)
        for force in (False, True):
            with pytest.raises(Refused, match="another restore is writing into this target"):
                SnapshotReader(repo, snap, options=RestoreOptions(target=target, force=force)).write_entries(target)
    finally:
        os.close(fd)
    assert os.listdir(target) == [busy.name] and os.listdir(busy) == ["d0000"]


def test_a_name_that_appears_in_the_target_meanwhile_is_not_replaced(repo: Repository, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    entries, contents = small_file_tree(300)
    snap = write_snapshot(repo, entries, contents)
    target = tmp_path / "t"
    real_publish = TargetTree.publish

    def publish(self: TargetTree) -> None:
        if self.staging is not None:
            (target / "d0002").mkdir()
            (target / "d0002" / "theirs").write_bytes(b"someone else's\n")
        real_publish(self)

    monkeypatch.setattr(TargetTree, "publish", publish)
    with pytest.raises(Refused, match="d0002 appeared in the target during the restore") as info:
        SnapshotReader(repo, snap, target=target, processes=0).write_entries(target)
    staging = _staging_of(target)
    assert len(staging) == 1 and str(target / staging[0]) in (info.value.hint or "")
    assert os.listdir(target / "d0002") == ["theirs"]
    assert sorted(os.listdir(target / staging[0])) == ["d0002"]  # what was not moved, and only that
    moved = [e for e in entries if not e.path.startswith("d0002")]
    for e in moved:
        if e.type == FILE:
            assert (target / e.path).read_bytes() == contents[e.path], e.path


def test_a_top_level_directory_the_user_may_not_write_is_moved_with_its_mode_and_mtime(
        repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Moving a directory to another parent rewrites its ``..``: not as root, that
    needs write permission on it, which a read-only mode takes away. It is lent for
    the move (here the check is made to answer as for an ordinary user) and set back."""
    entries = [
        Entry("ro", DIR, mode=0o555, mtime_ns=1_600_000_000_000_000_001),
        Entry("ro/f", FILE, mode=0o444, mtime_ns=1_600_000_000_000_000_002),
        Entry("rw", DIR, mode=0o750, mtime_ns=1_600_000_000_000_000_003),
    ]
    contents = {"ro/f": b"read only\n"}
    snap = write_snapshot(repo, entries, contents)
    target = tmp_path / "t"
    lent: list[str] = []
    real_access, real_chmod = os.access, os.chmod

    def access(path: Any, mode: int, **kw: Any) -> bool:
        if mode == os.W_OK and kw.get("dir_fd") is not None:
            st = os.stat(path, dir_fd=kw["dir_fd"], follow_symlinks=False)
            return bool(st.st_mode & stat.S_IWUSR)  # (as the owner, not root)
        return real_access(path, mode, **kw)

    def chmod(path: Any, mode: int, **kw: Any) -> None:
        lent.append(f"{path} {mode:o}")
        real_chmod(path, mode, **kw)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(os, "chmod", chmod)
    SnapshotReader(repo, snap, target=target, processes=0).write_entries(target)
    assert lent == ["ro 755", "ro 555"]
    _assert_exact(target, entries, contents)


def test_a_name_that_cannot_be_moved_into_place_is_one_clear_error_naming_where_it_is(
        repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Moving into place fails for one name (here EPERM, as for an immutable
    directory): the others are still moved, and the error says where that one is."""
    entries, contents = small_file_tree(300)
    snap = write_snapshot(repo, entries, contents)
    target = tmp_path / "t"
    real = restorefs._rename_noreplace

    def rename(src: int, name: str, dst: int) -> None:
        if name == "d0003":
            raise OSError(errno.EPERM, os.strerror(errno.EPERM), name)
        real(src, name, dst)

    monkeypatch.setattr(restorefs, "_rename_noreplace", rename)
    with pytest.raises(RestoreTargetError, match="Operation not permitted") as info:
        SnapshotReader(repo, snap, target=target, processes=0).write_entries(target)
    staging = _staging_of(target)
    assert len(staging) == 1 and f"is in {target / staging[0]}" in (info.value.hint or "")
    assert os.listdir(target / staging[0]) == ["d0003"]
    assert sorted(os.listdir(target)) == sorted([f"d{i:04d}" for i in range(6) if i != 3] + staging)


def test_a_restore_stopped_early_whose_files_cannot_be_moved_says_where_they_are(
        repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    entries, contents = small_file_tree(300)
    snap = write_snapshot(repo, entries, contents)
    target = tmp_path / "t"
    monkeypatch.setattr(restorefs, "_rename_noreplace", lambda src, name, dst: (_ for _ in ()).throw(
        OSError(errno.EPERM, os.strerror(errno.EPERM), name)))
    _fail_writes_after(monkeypatch, 100, errno.ENOSPC)
    with pytest.raises(RestoreTargetError, match="No space left"):  # (the first error is the one reported)
        SnapshotReader(repo, snap, target=target, processes=0, workers=1).write_entries(target)
    monkeypatch.undo()
    staging = _staging_of(target)
    assert os.listdir(target) == staging and len(staging) == 1
    assert any(f"stays in {target / staging[0]}" in r.getMessage() for r in caplog.records), caplog.records
    files = [p for p in (target / staging[0]).rglob("f*") if p.is_file()]
    assert 50 <= len(files) <= 100
    for p in files:
        assert p.read_bytes() == contents[str(p.relative_to(target / staging[0]))], p


def test_a_restore_killed_outright_shows_nothing_and_the_next_one_finishes_exactly(
        repo: Repository, tmp_path: Path) -> None:
    """A real ``drkit restore`` is killed (SIGKILL: nothing of it runs after) while it
    writes: the target holds only its staging directory, no real name. The next
    restore into the same target (no --force) removes it, says so, and is exact."""
    entries, contents = small_file_tree(12_000)
    write_snapshot(repo, entries, contents)
    cfg = tmp_path / "drkit.yaml"
    cfg.write_text(f"repository:\n  url: {tmp_path / 'repo'}\nsources:\n  - name: data\n    type: files\n"
                   f"    paths: [{tmp_path / 'data'}]\n")
    cfg.chmod(0o600)
    target = tmp_path / "t"
    env = {**os.environ, "DRKIT_PASSWORD": "pw", "DRKIT_RESTORE_PROCESSES": "2"}
    command = [sys.executable, "-m", "drkit", "-c", str(cfg), "restore", "latest", "-s", "data", "--target", str(target)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        staging = _staging_of(target) if target.is_dir() else []
        first = target / staging[0] / "d0000" if staging else None
        if first is not None and first.is_dir() and len(os.listdir(first)) >= 10:  # (files being written)
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the restore finished before it could be killed"
    assert os.listdir(target) == staging, "a real name appeared before the restore was done"
    assert any(p.is_file() for p in (target / staging[0]).rglob("f*"))
    r = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"removed {target / staging[0]}" in r.stdout + r.stderr
    _assert_exact(target, entries, contents)
    assert sorted(os.listdir(target)) == sorted(e.path for e in entries if "/" not in e.path)


def test_a_read_only_directory_that_cannot_be_moved_keeps_its_mode_and_the_name_there_is_left_alone(
        repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entries = [Entry("ro", DIR, mode=0o555, mtime_ns=1_600_000_000_000_000_001),
               Entry("ro/f", FILE, mode=0o444, mtime_ns=1_600_000_000_000_000_002)]
    snap = write_snapshot(repo, entries, {"ro/f": b"read only\n"})
    target = tmp_path / "t"
    real_access, real_publish = os.access, TargetTree.publish

    def access(path: Any, mode: int, **kw: Any) -> bool:
        if mode == os.W_OK and kw.get("dir_fd") is not None:
            return bool(os.stat(path, dir_fd=kw["dir_fd"], follow_symlinks=False).st_mode & stat.S_IWUSR)
        return real_access(path, mode, **kw)

    def publish(self: TargetTree) -> None:
        if self.staging is not None:
            (target / "ro").mkdir(mode=0o751)  # (someone else's, meanwhile)
            (target / "ro").chmod(0o751)
        real_publish(self)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(TargetTree, "publish", publish)
    with pytest.raises(Refused, match="appeared in the target"):
        SnapshotReader(repo, snap, target=target, processes=0).write_entries(target)
    assert stat.S_IMODE(os.stat(target / "ro").st_mode) == 0o751 and os.listdir(target / "ro") == []
    kept = target / _staging_of(target)[0] / "ro"
    assert stat.S_IMODE(os.stat(kept).st_mode) == 0o555 and (kept / "f").read_bytes() == b"read only\n"


def test_a_file_system_that_cannot_lock_is_restored_into_unstaged(repo: Repository, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Some FUSE and network file systems have no ``flock``: there the restore writes
    through temporaries as before (and leaves no empty staging directory behind)."""
    entries, contents = small_file_tree(200)
    snap = write_snapshot(repo, entries, contents)
    target = tmp_path / "t"

    def flock(fd: int, how: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", flock)
    trees: list[bool] = []
    real_init = TargetTree.__init__

    def init(self: TargetTree, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        trees.append(self.fresh)

    monkeypatch.setattr(TargetTree, "__init__", init)
    SnapshotReader(repo, snap, target=target, processes=0).write_entries(target)
    assert trees == [False]
    _assert_exact(target, entries, contents)
    assert sorted(os.listdir(target)) == sorted(e.path for e in entries if "/" not in e.path)
