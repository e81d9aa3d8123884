"""``drkit restore`` and the index cache: a restore on the machine that backs up reads
no index file (a remote repository's index is not downloaded again during an
incident); a restore where there is no cache, or one that does not verify, reads every
index file, restores the same bytes and leaves a cache for the next; ``--no-cache`` and
a dry run leave the cache alone. ``ls``, ``find``, ``dump``, ``diff`` and ``stats`` take
the index from the cache too."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.foundation.conftest import Workspace, index_files


def _cache_files() -> list[Path]:
    directory = Path(os.environ["DRKIT_CACHE_DIR"]) / "index"
    return sorted(directory.iterdir()) if directory.is_dir() else []


def _restore(ws: Workspace, name: str, *extra: str) -> dict[str, bytes]:
    target = ws.root / name
    ws.ok("restore", "latest", "-s", "data", "--target", str(target), *extra)
    base = target / str(ws.data).lstrip("/")
    return {str(p.relative_to(base)): p.read_bytes() for p in base.rglob("*") if p.is_file() and not p.is_symlink()}


def _expected(ws: Workspace) -> dict[str, bytes]:
    return {str(p.relative_to(ws.data)): p.read_bytes() for p in ws.data.rglob("*")
            if p.is_file() and not p.is_symlink() and not p.name.endswith(".tmp")}


@pytest.fixture
def backed_up(ws: Workspace) -> Workspace:
    ws.ok("init")
    ws.ok("backup")
    (ws.data / "new.bin").write_bytes(os.urandom(300_000))
    ws.ok("backup")  # two index files, and the cache of both
    assert len(index_files(ws)) == 2 and len(_cache_files()) == 1
    return ws


def test_a_restore_takes_the_index_from_the_cache_a_backup_left(backed_up: Workspace, index_reads: list[str]) -> None:
    ws = backed_up
    assert _restore(ws, "r1") == _expected(ws)
    assert index_reads == []
    assert _restore(ws, "r2", "--no-cache") == _expected(ws)
    assert set(index_reads) == index_files(ws)


def test_a_restore_without_a_cache_reads_every_index_file_and_leaves_one(
        backed_up: Workspace, index_reads: list[str]) -> None:
    ws = backed_up
    for path in _cache_files():
        path.unlink()  # a new machine
    assert _restore(ws, "r1") == _expected(ws)
    assert set(index_reads) == index_files(ws)
    assert len(_cache_files()) == 1
    index_reads.clear()
    assert _restore(ws, "r2") == _expected(ws)
    assert index_reads == []


def test_a_cache_that_does_not_verify_is_not_used(backed_up: Workspace, index_reads: list[str]) -> None:
    ws = backed_up
    (cache,) = _cache_files()
    data = bytearray(cache.read_bytes())
    data[len(data) // 2] ^= 0x01  # a row changed: the MAC no longer matches
    cache.write_bytes(bytes(data))
    assert _restore(ws, "r1") == _expected(ws)
    assert set(index_reads) == index_files(ws)


def test_no_cache_and_a_dry_run_leave_the_cache_as_it_was(backed_up: Workspace, index_reads: list[str]) -> None:
    ws = backed_up
    for path in _cache_files():
        path.unlink()
    ws.ok("restore", "latest", "-s", "data", "--target", str(ws.root / "dry"), "--dry-run")
    assert set(index_reads) == index_files(ws) and _cache_files() == []
    index_reads.clear()
    assert _restore(ws, "r1", "--no-cache") == _expected(ws)
    assert set(index_reads) == index_files(ws) and _cache_files() == []


def test_ls_find_dump_diff_and_stats_take_the_index_from_the_cache(backed_up: Workspace, index_reads: list[str]) -> None:
    ws = backed_up
    new = f"{ws.data}/new.bin"
    assert new in ws.ok("ls", "latest", "-s", "data").out
    assert new in ws.ok("find", "*/new.bin", "-s", "data").out
    out = ws.root / "new.bin"
    ws.ok("dump", "latest", "-s", "data", new, "-o", str(out))
    assert out.read_bytes() == (ws.data / "new.bin").read_bytes()
    first, second = (s["id"] for s in ws.ok("snapshots", "--json").json())
    assert "new.bin" in ws.ok("diff", first, second).out
    ws.ok("stats")
    assert index_reads == []
