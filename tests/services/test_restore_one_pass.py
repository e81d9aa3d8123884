"""A whole snapshot restored into a new or empty target is read once: each path is
checked as its entry is written, in the staging directory, instead of in a first pass
over the whole tree (the first test fails where a first pass runs). What that first
pass refused or failed on must still leave the target as it was (those tests hold the
one-pass restore to the first pass's promises), and the first pass must still run
wherever it is needed."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from drkit.errors import IntegrityError, Refused
from drkit.repository import layout
from drkit.repository.repo import Repository
from drkit.repository.tree import DIR, FILE, Entry
from drkit.services import restorefs
from drkit.services.restore import RestoreOptions, SnapshotReader, _in_walk_order
from drkit.services.restorefs import TargetTree
from tests.hostile.snapshots import assert_restored_exactly as _assert_exact, small_file_tree, small_pack_repo, write_snapshot


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return small_pack_repo(tmp_path)


@pytest.fixture
def first_passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the first passes (reads of every path before any entry is written)."""
    seen: list[int] = []
    real = SnapshotReader.paths

    def paths(self: SnapshotReader) -> Any:
        seen.append(1)
        return real(self)

    monkeypatch.setattr(SnapshotReader, "paths", paths)
    return seen


@pytest.fixture
def abandoned(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """For each staging directory a restore abandoned: how many files it held then (so
    that a test knows files had been written before the restore stopped)."""
    counts: list[int] = []
    real = TargetTree.abandon

    def abandon(self: TargetTree) -> None:
        staging = self.staging
        counts.append(sum(len(files) for _, _, files in os.walk(staging)) if staging else -1)
        real(self)

    monkeypatch.setattr(TargetTree, "abandon", abandon)
    return counts


@pytest.mark.parametrize("processes", [2, 0], ids=["workers", "one-process"])
def test_a_new_target_is_restored_exactly_without_a_first_pass(repo: Repository, tmp_path: Path, processes: int,
                                                               first_passes: list[int]) -> None:
    entries, contents = small_file_tree(600)
    snap = write_snapshot(repo, entries, contents)
    target = tmp_path / "t"
    result = SnapshotReader(repo, snap, target=target, window_files=40, processes=processes).write_entries(target)
    _assert_exact(target, entries, contents)
    assert result.files == 600 and first_passes == []
    empty = tmp_path / "empty"
    empty.mkdir()
    SnapshotReader(repo, snap, target=empty, processes=processes).write_entries(empty)
    _assert_exact(empty, entries, contents)
    assert first_passes == []


def test_the_first_pass_still_runs_where_it_is_needed(repo: Repository, tmp_path: Path, first_passes: list[int]) -> None:
    entries, contents = small_file_tree(120)
    snap = write_snapshot(repo, entries, contents)
    full = tmp_path / "full"
    full.mkdir()
    (full / "other").write_bytes(b"kept")
    SnapshotReader(repo, snap, options=RestoreOptions(target=full, force=True)).write_entries(full)  # a target not empty: writes show at once
    assert len(first_passes) == 1
    SnapshotReader(repo, snap, options=RestoreOptions(target=tmp_path / "some", include=["d0000/*"])).write_entries(
        tmp_path / "some")
    assert len(first_passes) == 2
    assert sorted(p.name for p in (tmp_path / "some" / "d0000").iterdir()) == sorted(
        e.path.split("/")[1] for e in entries if e.path.startswith("d0000/"))
    unrecorded = write_snapshot(repo, entries, contents)
    unrecorded.stats = {}  # (a snapshot that does not say how many entries it has)
    SnapshotReader(repo, unrecorded, target=tmp_path / "u").write_entries(tmp_path / "u")
    assert len(first_passes) == 3
    _assert_exact(tmp_path / "u", entries, contents)


@pytest.mark.parametrize("processes", [2, 0], ids=["workers", "one-process"])
@pytest.mark.parametrize("where", ["new", "new-below-new", "empty"])
def test_an_escaping_path_found_while_writing_leaves_the_target_as_it_was(
        repo: Repository, tmp_path: Path, processes: int, where: str, abandoned: list[int]) -> None:
    entries, contents = small_file_tree(600)
    entries.append(Entry("d0011/../../escaped", FILE, mode=0o644))
    snap = write_snapshot(repo, entries, contents)
    target = tmp_path / "t" if where != "new-below-new" else tmp_path / "made" / "t"
    if where == "empty":
        target.mkdir()
    with pytest.raises(Refused, match="would escape the target directory"):
        SnapshotReader(repo, snap, target=target, window_files=40, processes=processes).write_entries(target)
    assert abandoned and abandoned[0] > 100  # (files had been written: the test is not empty)
    if where == "empty":
        assert os.listdir(target) == []
    else:
        assert not target.exists() and not (tmp_path / "made").exists()
    assert not (tmp_path / "escaped").exists()


def test_a_damaged_tree_found_while_writing_leaves_the_target_as_it_was(
        repo: Repository, tmp_path: Path, abandoned: list[int]) -> None:
    entries, contents = small_file_tree(600)
    snap = write_snapshot(repo, entries, contents, tree_piece=2048)
    last = repo.index.get(bytes.fromhex(snap.tree[-1]))
    assert last is not None
    pack = Path(repo.storage.root) / layout.pack_name(last.pack)  # type: ignore[attr-defined]
    data = bytearray(pack.read_bytes())
    data[last.offset + last.length // 2] ^= 0x40
    pack.write_bytes(bytes(data))
    target = tmp_path / "t"
    with pytest.raises(IntegrityError):
        SnapshotReader(repo, snap, target=target, window_files=40).write_entries(target)
    assert abandoned and abandoned[0] > 100
    assert not target.exists()


def test_entries_out_of_walk_order_are_restored_after_a_first_pass(
        repo: Repository, tmp_path: Path, first_passes: list[int], abandoned: list[int]) -> None:
    later, later_contents = small_file_tree(300)
    entries = [Entry(f"z/{e.path}", e.type, mode=e.mode, mtime_ns=e.mtime_ns) for e in later]
    contents = {f"z/{path}": data for path, data in later_contents.items()}
    entries = [Entry("z", DIR, mode=0o755, mtime_ns=10**18), *entries,
               Entry("a", DIR, mode=0o700, mtime_ns=10**18 + 1), Entry("a/f", FILE, mode=0o600, mtime_ns=10**18 + 2)]
    contents["a/f"] = b"after the others"
    snap = write_snapshot(repo, entries, contents)
    target = tmp_path / "t"
    SnapshotReader(repo, snap, target=target, window_files=40).write_entries(target)
    assert abandoned and abandoned[0] > 100 and len(first_passes) == 1
    _assert_exact(target, entries, contents)
    assert sorted(os.listdir(target)) == ["a", "z"]


def test_roots_out_of_walk_order_are_restored_with_a_first_pass_from_the_start(
        repo: Repository, tmp_path: Path, first_passes: list[int], abandoned: list[int]) -> None:
    entries = [Entry("/", DIR, mode=0o755), Entry("/srv", DIR, mode=0o755), Entry("/srv/x", FILE, mode=0o644),
               Entry("/etc", DIR, mode=0o755), Entry("/etc/y", FILE, mode=0o644)]
    snap = write_snapshot(repo, entries, {"/srv/x": b"x", "/etc/y": b"y"})
    snap.paths = ["/srv", "/etc"]
    SnapshotReader(repo, snap, target=tmp_path / "t").write_entries(tmp_path / "t")
    assert (tmp_path / "t/srv/x").read_bytes() == b"x" and (tmp_path / "t/etc/y").read_bytes() == b"y"
    assert len(first_passes) == 1 and abandoned == []  # (not after restoring /srv first)


@pytest.mark.parametrize("roots, ordered", [
    ([], True), (["/srv/data"], True), (["/etc", "/srv"], True), (["/srv", "/etc"], False),
    (["/srv", "/srv/data"], False), (["/", "/etc"], False), (["/srv/", "/srv2"], True),
    (["/a b", "/a/b"], False), (["/a/b", "/a b"], True), (["/x", "/x"], False),
])
def test_which_roots_are_walked_in_walk_order(roots: list[str], ordered: bool) -> None:
    assert _in_walk_order(roots) is ordered


def test_a_tree_with_read_only_directories_is_removed_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As root nothing is read-only, so the first removal is made to fail as it does
    for a user: every directory must then be its owner's to list and write."""
    top = tmp_path / "staging"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "b" / "f").write_bytes(b"x")
    (top / "c").mkdir()
    (top / "link").symlink_to(tmp_path)
    os.chmod(top / "a" / "b", 0o555)
    os.chmod(top / "a", 0o500)
    os.chmod(top / "c", 0)
    real_rmtree = shutil.rmtree
    modes: list[dict[str, int]] = []

    def rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        if not modes:
            modes.append({})
            raise PermissionError(13, "Permission denied")
        modes.append({str(p.relative_to(top)): stat.S_IMODE(p.lstat().st_mode) for p in Path(path).rglob("*")
                      if p.is_dir() and not p.is_symlink()})
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    restorefs.remove_tree(top)
    assert modes[1] == {"a": 0o700, "a/b": 0o700, "c": 0o700}
    assert not top.exists() and tmp_path.is_dir()


def test_a_staging_directory_that_cannot_be_removed_is_named_and_the_refusal_still_raised(
        repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    entries, contents = small_file_tree(100)
    entries.append(Entry("d0001/../../escaped", FILE, mode=0o644))
    snap = write_snapshot(repo, entries, contents)

    def remove_tree(path: Path) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(restorefs, "remove_tree", remove_tree)
    target = tmp_path / "t"
    with pytest.raises(Refused, match="would escape the target directory"):
        SnapshotReader(repo, snap, target=target, processes=0).write_entries(target)
    staging = [p for p in target.iterdir() if restorefs.is_staging_name(p.name)]
    assert len(staging) == 1 and [p.name for p in target.iterdir()] == [staging[0].name]  # (nothing published)
    assert f"could not remove {staging[0]} (Permission denied)" in caplog.text
    monkeypatch.undo()
    SnapshotReader(repo, write_snapshot(repo, *small_file_tree(10)), target=target).write_entries(target)
    assert not any(restorefs.is_staging_name(p.name) for p in target.iterdir())  # (the next restore removed it)
