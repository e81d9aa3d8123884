"""#18: a small file is restored in one go (:meth:`TargetTree.write_file`): created
with its final mode where the umask and the directory leave that mode exact, and
given its owner only when it does not already have it. These tests hold the modes
and owners exact where that shortcut must not be taken (a restrictive umask, a
default ACL, a set-group-ID directory), and check that it is taken where it may be."""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drkit.repository.repo import Repository
from drkit.repository.tree import DIR, FILE, Entry
from drkit.services.restore import RestoreOptions, SnapshotReader
from drkit.services.restorefs import TMP_PREFIX
from drkit.storage import LocalStorage
from tests.hostile.snapshots import write_snapshot

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="owners are restored only as root")

MODES = [0o644, 0o600, 0o755, 0o640, 0o444, 0o400, 0o666, 0o777, 0o750, 0o604]


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    storage = LocalStorage(str(tmp_path / "repo"))
    Repository.init(storage, "pw")
    return Repository.open(storage, "pw")


def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def umask_077() -> Iterator[None]:
    yield from _umask(0o077)


@pytest.fixture
def umask_022() -> Iterator[None]:
    yield from _umask(0o022)


def _files(modes: list[int], *, uid: int = 0, gid: int = 0) -> tuple[list[Entry], dict[str, bytes]]:
    entries = [Entry("d", DIR, mode=0o755, uid=uid, gid=gid, mtime_ns=1)]
    contents = {}
    for i, mode in enumerate(modes):
        path = f"d/f{i}"
        entries.append(Entry(path, FILE, mode=mode, uid=uid, gid=gid, mtime_ns=1_700_000_000_123_456_789 + i))
        contents[path] = b"" if i % 4 == 3 else f"file {i} {mode:o}\n".encode()
    return entries, contents


def _restore(repo: Repository, entries: list[Entry], contents: dict[str, bytes], target: Path) -> None:
    snap = write_snapshot(repo, entries, contents)
    result = SnapshotReader(repo, snap, target=target).write_entries(target)
    assert (result.files, result.failed) == (len(contents), [])


def _assert_exact(entries: list[Entry], contents: dict[str, bytes], target: Path, *, owners: bool) -> None:
    for e in entries:
        if e.type != FILE:
            continue
        st = os.stat(target / e.path)
        assert (oct(stat.S_IMODE(st.st_mode)), st.st_mtime_ns) == (oct(e.mode), e.mtime_ns), e.path
        assert (target / e.path).read_bytes() == contents[e.path], e.path
        if owners:
            assert (st.st_uid, st.st_gid) == (e.uid, e.gid), e.path


def test_modes_are_exact_under_a_restrictive_umask(repo: Repository, tmp_path: Path, umask_077: None) -> None:
    entries, contents = _files(MODES)
    _restore(repo, entries, contents, tmp_path / "t")
    _assert_exact(entries, contents, tmp_path / "t", owners=False)


def test_modes_are_exact_below_a_default_acl(repo: Repository, tmp_path: Path) -> None:
    """A default ACL, not the umask, shapes a new file's mode (here: no group or other
    bits at all); the restored modes must not depend on it."""
    target = tmp_path / "t"
    target.mkdir()
    entry = struct.Struct("<HHI")
    acl = struct.pack("<I", 2) + entry.pack(0x01, 7, 0xFFFFFFFF) + entry.pack(0x04, 0, 0xFFFFFFFF) + entry.pack(0x20, 0, 0xFFFFFFFF)
    try:
        os.setxattr(target, "system.posix_acl_default", acl)
    except OSError as exc:
        pytest.skip(f"no POSIX ACLs here: {exc}")
    probe = os.open(target / "probe", os.O_CREAT | os.O_WRONLY, 0o644)
    assert stat.S_IMODE(os.fstat(probe).st_mode) == 0o600  # the ACL really narrows new files
    os.close(probe)
    os.unlink(target / "probe")
    entries, contents = _files(MODES)
    _restore(repo, entries, contents, target)
    _assert_exact(entries, contents, target, owners=False)


@as_root
def test_owners_are_exact_in_a_set_group_id_directory(repo: Repository, tmp_path: Path) -> None:
    """A file created in a set-group-ID directory takes the directory's group: a
    file of group 0 restored there must still end with group 0."""
    target = tmp_path / "t"
    (target / "d").mkdir(parents=True)
    os.chown(target / "d", 0, 4242)
    os.chmod(target / "d", 0o2775)
    entries, contents = _files(MODES)
    for e in entries[1:5]:
        e.uid, e.gid = 1000, 4242  # already the inherited group: only the user differs
    snap = write_snapshot(repo, entries[1:], contents)  # d exists: no entry for it
    options = RestoreOptions(target=target, force=True)  # into the existing directory
    result = SnapshotReader(repo, snap, options=options).write_entries(target)
    assert (result.files, result.failed) == (len(contents), [])
    _assert_exact(entries, contents, target, owners=True)


@as_root
def test_owned_files_as_root_take_no_chown_or_chmod_when_the_new_file_has_them(
        repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask_022: None) -> None:
    """The shortcut is taken: root's own 0644/0755 files are not chowned or chmodded
    after creation under the usual umask; others are, and every result is exact."""
    calls: dict[str, list[str]] = {"fchown": [], "fchmod": []}
    real = {name: getattr(os, name) for name in calls}

    def spy(name: str) -> Any:
        def call(fd: int, *args: Any) -> Any:
            path = os.readlink(f"/proc/self/fd/{fd}")
            # a file not in place yet (a temporary, or in a staging directory)
            if stat.S_ISREG(os.fstat(fd).st_mode) and any(part.startswith(TMP_PREFIX) for part in Path(path).parts):
                calls[name].append(path)
            return real[name](fd, *args)
        return call

    for name in calls:
        monkeypatch.setattr(os, name, spy(name))
    plain, contents = _files([0o644, 0o755, 0o644, 0o600])
    others, more = _files([0o4755, 0o640, 0o444], uid=1000, gid=1000)
    for e in others:
        e.path = e.path.replace("d", "e", 1)
    contents.update({k.replace("d", "e", 1): v for k, v in more.items()})
    _restore(repo, plain + others, contents, tmp_path / "t")
    _assert_exact(plain + others, contents, tmp_path / "t", owners=True)
    assert len(calls["fchown"]) == 3  # only the files of user 1000
    assert len(calls["fchmod"]) == 2  # 04755 (a special bit) and 0444 (the owner may not write)
