"""#18: unchanged files are recorded a directory's run at a time (``add_unchanged``), and
that records exactly what adding them one by one (``add_file``) records: the same tree,
byte for byte, and the same counts -- with a changed, a new, a deleted, an excluded and
a not-included file in the middle of runs, symlinks, a FIFO and subdirectories between
them, a file that became a directory and a directory that became a file, and files
whose stored line differs in one field."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from drkit.errors import PartialFailure
from drkit.repository.repo import Repository
from drkit.repository.tree import DIR, FILE, Entry, encode_entries, split_lines, tree_chunks
from drkit.services.backup import BackupOptions, ParentCursor, SnapshotWriter, run_backup
from drkit.sources.files import FilesSource
from drkit.storage import LocalStorage

PASSWORD = "runs"


def _line(path: str, kind: str = FILE) -> bytes:
    return next(encode_entries([Entry(path=path, type=kind, size=len(path))])).rstrip(b"\n")


def test_following_line_steps_without_reading_paths_and_find_line_goes_on_from_it() -> None:
    paths = ["/r", "/r/a", "/r/a/x", "/r/a/y", "/r/b", "/r/b/y", "/r/c", "/r/e"]
    cursor = ParentCursor(iter([_line(p, DIR if p in ("/r", "/r/a", "/r/b") else FILE) for p in paths]))
    assert cursor.find_line("/r/a/x") == _line("/r/a/x")
    assert cursor.following_line() == _line("/r/a/y")  # the next line, whatever its path
    assert cursor.following_line() == _line("/r/b", DIR)
    assert cursor.find_line("/r/b/y") == _line("/r/b/y")  # goes on from there in sort order
    assert cursor.find_line("/r/d") is None  # absent: the cursor stops before /r/e ...
    assert cursor.find_line("/r/e") == _line("/r/e")  # ... and does not lose it
    assert not cursor.done
    assert cursor.following_line() is None and cursor.done and cursor.find_line("/r/f") is None
    assert ParentCursor(iter(())).done


def test_a_malformed_line_stepped_over_unread_ends_the_parent_only_when_read() -> None:
    errors: list[object] = []
    good = _line("/r/a")
    cursor = ParentCursor(iter([good, b'{"path": 5', _line("/r/c")]), on_error=errors.append)
    assert cursor.find_line("/r/a") == good
    assert cursor.following_line() == b'{"path": 5' and not errors  # not read: no frame matches it
    assert cursor.find_line("/r/b") is None and len(errors) == 1 and cursor.done  # read: the parent ends


def _tree(root: Path) -> None:
    for d in range(6):
        for f in range(40):
            p = root / f"d{d}" / f"f{f:03d}.txt"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(f"{d}-{f} ".encode() * (1 + f))
        (root / f"d{d}" / "f015-link").symlink_to("f015.txt")
        (root / f"d{d}" / "f025.dir").mkdir()
        (root / f"d{d}" / "f025.dir" / "inner.txt").write_bytes(b"inner %d" % d)
        (root / f"d{d}" / "skip.tmp").write_bytes(b"excluded")


def _change(root: Path) -> None:
    (root / "d1" / "f010.txt").write_bytes(b"changed in place")
    (root / "d2" / "f020.txt").unlink()
    (root / "d2" / "f020b.txt").write_bytes(b"new in the middle of a run")
    (root / "d3" / "f030.txt").chmod(0o600)  # the stored line differs in one field
    os.mkfifo(root / "d4" / "f004.fifo")  # not a regular file: skipped with a warning
    (root / "d0" / "f005.txt").unlink()  # a file become a directory, in the middle of a run
    (root / "d0" / "f005.txt").mkdir()
    (root / "d0" / "f005.txt" / "inside").write_bytes(b"was a file")
    (root / "d5" / "f025.dir" / "inner.txt").unlink()  # a directory become a file between runs
    (root / "d5" / "f025.dir").rmdir()
    (root / "d5" / "f025.dir").write_bytes(b"was a directory")
    os.utime(root / "d5" / "f039.txt", ns=(0, 10**9))  # the last file of a run: older mtime


def _backup(repo_dir: Path, data: Path, **options: list[str]) -> dict[str, int]:
    storage = LocalStorage(str(repo_dir))
    if not repo_dir.exists():
        Repository.init(storage, PASSWORD)
    source = FilesSource("data", FilesSource.Options(paths=[str(data)], exclude=["*.tmp"], **options))
    try:
        run = run_backup(Repository.open(storage, PASSWORD), [source], BackupOptions())
    except PartialFailure as exc:  # the FIFO
        run = exc.outcome
    stats = dict(run.snapshots[0].stats)
    del stats["bytes_stored"]  # (each repository has its own key and packs)
    return stats


def _latest_lines(repo_dir: Path, data: Path) -> list[bytes]:
    """The lines of the latest snapshot's tree under *data* (its parents change as the
    test's repositories are written beside it)."""
    repo = Repository.open(LocalStorage(str(repo_dir)), PASSWORD)
    repo.load_index()
    under = b'{"path":"%b' % str(data).encode()
    return [line for line in split_lines(tree_chunks(repo, repo.find_snapshot("latest"))) if line.startswith(under)]


@pytest.mark.parametrize("include", [[], ["f00*", "f01*", "f02*", "inner.txt"]])
def test_runs_of_unchanged_files_record_what_one_by_one_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                include: list[str]) -> None:
    data = tmp_path / "data"
    _tree(data)
    runs, single = tmp_path / "runs", tmp_path / "single"
    _backup(runs, data, include=include)
    shutil.copytree(runs, single)  # the same key: the same chunk ids
    _change(data)
    calls: list[int] = []
    real = SnapshotWriter.add_unchanged

    def counted(self: SnapshotWriter, files: list, start: int = 0) -> tuple[int, int] | None:
        done = real(self, files, start)
        calls.append(-1 if done is None else done[0])
        return done

    shown: list[str] = []
    monkeypatch.setattr(SnapshotWriter, "add_unchanged", counted)
    monkeypatch.setattr(SnapshotWriter, "progress", lambda self, text: shown.append(text))
    by_runs = _backup(runs, data, include=include)
    shown_by_runs = list(shown)
    monkeypatch.setattr(SnapshotWriter, "add_unchanged", lambda self, files, start=0: (0, 0))
    one_by_one = _backup(single, data, include=include)
    assert by_runs == one_by_one
    # changed: f010, f030's mode, f039's mtime; new: f020b, f025.dir, inside (f030, f039 and
    # inside are not included by the patterns)
    assert (by_runs["files_changed"], by_runs["files_new"], by_runs["errors"]) == ((3, 3, 1) if not include else (1, 2, 1))
    assert sum(calls) == by_runs["files_unmodified"] > 100 and -1 not in calls  # every unchanged file went in a run ...
    assert max(calls) > 10  # ... many at a time
    # progress names a file of each stretch of unchanged files, and each file read
    assert {f"d{d}" for d in range(6)} <= {Path(text).parent.name for text in shown_by_runs}
    assert str(data / "d1" / "f010.txt") in shown_by_runs and str(data / "d2" / "f020b.txt") in shown_by_runs
    assert len(shown_by_runs) < 40 < len(shown) - len(shown_by_runs)  # one by one: one per file
    lines = _latest_lines(runs, data)
    assert lines == _latest_lines(single, data) and len(lines) > 200
    assert not any(b"skip.tmp" in line for line in lines)
    assert any(b"/f030.txt" in line for line in lines) == (not include)
    assert any(b"/d1/f010.txt" in line for line in lines) and not any(b"/d2/f020.txt" in line for line in lines)


def test_a_first_backup_asks_for_unchanged_files_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a parent, add_unchanged says at once that nothing can be unchanged, and the
    walk does not ask again for each of its files."""
    data = tmp_path / "data"
    _tree(data)
    answers: list[object] = []
    real = SnapshotWriter.add_unchanged

    def counted(self: SnapshotWriter, files: list, start: int = 0) -> tuple[int, int] | None:
        answers.append(real(self, files, start))
        return answers[-1]  # type: ignore[return-value]

    monkeypatch.setattr(SnapshotWriter, "add_unchanged", counted)
    stats = _backup(tmp_path / "repo", data)
    assert answers == [None] and stats["files_new"] == 6 * 41 and stats["files_unmodified"] == 0  # (skip.tmp excluded)
