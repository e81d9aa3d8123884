"""Reading directory listings ahead while the repository key is derived (#18): the walk
takes them instead of calling ``lstat`` itself, and records exactly what it would have."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from drkit.repository.repo import Repository
from drkit.repository.tree import iter_tree
from drkit.services.backup import BackupOptions, run_backup
from drkit.sources import files as files_module
from drkit.sources.files import FilesSource, StatPrefetch
from drkit.storage import LocalStorage
from tests.cli import Runner
from tests.services.conftest import write_config

PASSWORD = "read ahead"


def _tree(root: Path) -> None:
    for i in range(120):
        p = root / f"d{i % 7}" / f"s{i % 3}" / f"f{i:03d}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * (i + 1))
    (root / "skip").mkdir()
    (root / "skip" / "no.txt").write_bytes(b"excluded")
    (root / "link").symlink_to("d0")


def _source(root: Path) -> FilesSource:
    return FilesSource("data", FilesSource.Options(paths=[str(root)], exclude=[f"{root}/skip"]))


def _records(tmp_path: Path, root: Path, source: FilesSource) -> list[tuple[str, str, int, int, list[str]]]:
    storage = LocalStorage(str(tmp_path / "repo"))
    if not (tmp_path / "repo").exists():
        Repository.init(storage, PASSWORD)
    repo = Repository.open(storage, PASSWORD)
    run = run_backup(repo, [source], BackupOptions())
    assert not run.failed
    repo.load_index()
    return [(e.path, e.type, e.mode, e.size, e.chunks) for e in iter_tree(repo, run.snapshots[0]) if e.path.startswith(str(root))]


def _main_thread_lstats(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = os.lstat
    main = threading.main_thread()

    def counting(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if threading.current_thread() is main:
            calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(files_module.os, "lstat", counting)
    return calls


def test_the_walk_takes_the_listings_read_ahead_and_records_the_same_tree(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "data"
    _tree(root)
    plain = _records(tmp_path, root, _source(root))
    source = _source(root)
    source.warm_up()
    assert source._prefetch is not None
    source._prefetch.wait()
    lstats = _main_thread_lstats(monkeypatch)
    ahead = _records(tmp_path, root, source)
    assert ahead == plain and len(plain) > 130
    assert not [p for p in lstats if p.startswith(f"{root}/")]  # every entry below the root came from the read-ahead
    assert source._prefetch is None  # taken (and stopped) by the backup


def test_a_read_ahead_cut_short_leaves_the_rest_to_the_walk(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "data"
    _tree(root)
    plain = _records(tmp_path, root, _source(root))
    monkeypatch.setattr(files_module, "PREFETCH_ENTRIES", 20)
    source = _source(root)
    source.warm_up()
    assert source._prefetch is not None
    source._prefetch.wait()
    assert 0 < sum(len(v) for v in source._prefetch._listings.values()) < 40
    lstats = _main_thread_lstats(monkeypatch)
    assert _records(tmp_path, root, source) == plain
    assert len([p for p in lstats if p.startswith(f"{root}/")]) > 100  # the walk read the rest itself


def test_the_read_ahead_follows_the_walk_rules_and_keeps_no_partial_listing(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "data"
    _tree(root)
    real = os.lstat

    def failing(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(path).endswith("f005.txt"):
            raise PermissionError(13, "Permission denied")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(files_module.os, "lstat", failing)
    ahead = StatPrefetch([str(root)], exclude=[f"{root}/skip"], one_file_system=False, limit=10**6)
    ahead.wait()
    listed = set(ahead._listings)
    assert str(root) in listed and f"{root}/d0/s0" in listed
    assert f"{root}/skip" not in listed and f"{root}/link" not in listed  # excluded; a link is not followed
    assert f"{root}/d5/s2" not in listed  # f005.txt's directory: not read whole, left to the walk (which warns)
    assert ahead.take(str(root)) is not None and ahead.take(str(root)) is None  # handed out once


def test_backup_reads_ahead_before_the_key_is_derived(tmp_path: Path, drkit: Runner, monkeypatch) -> None:
    root = tmp_path / "data"
    _tree(root)
    cfg = write_config(tmp_path / "drkit.yaml", str(tmp_path / "repo"), [{"name": "data", "type": "files", "paths": [str(root)]}])
    env = {"DRKIT_PASSWORD": PASSWORD}
    assert drkit("-c", cfg, "init", env=env).code == 0
    order: list[str] = []
    real_warm_up, real_open = FilesSource.warm_up, Repository.open

    def warm_up(self: FilesSource) -> None:
        order.append("warm_up")
        real_warm_up(self)

    def open_(*args, **kwargs):  # type: ignore[no-untyped-def]
        order.append("open")
        return real_open(*args, **kwargs)

    monkeypatch.setattr(FilesSource, "warm_up", warm_up)
    monkeypatch.setattr(Repository, "open", open_)
    r = drkit("-c", cfg, "backup", "--json", env=env)
    assert r.code == 0, r.err
    assert order == ["warm_up", "open"]
    assert r.json()["snapshots"][0]["stats"]["files_new"] == 121  # with skip/no.txt (not excluded here)
