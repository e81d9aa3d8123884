"""``drkit backup`` and the index cache: a run that finished leaves the cache holding
what it stored, so the next run reads no index file; a run with a failed source, a dry
run and ``--no-cache`` leave it as the load found it."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from tests.foundation.conftest import Workspace, index_files


def _cache_file(ws: Workspace) -> Path:
    files = list((Path(os.environ["DRKIT_CACHE_DIR"]) / "index").iterdir())
    assert len(files) == 1
    return files[0]


def test_after_a_finished_backup_the_next_one_reads_no_index_file(ws: Workspace, index_reads: list[str]) -> None:
    ws.ok("init")
    ws.ok("backup")
    assert index_reads == []  # a new repository has no index file yet
    (ws.data / "new.bin").write_bytes(os.urandom(300_000))
    ws.ok("backup")
    assert index_reads == []  # the first run's files came with the cache it left
    index_reads.clear()
    stored = index_files(ws)
    ws.ok("backup", "--no-cache")
    assert set(index_reads) == stored  # what the cache spared: every file
    target = ws.root / "restored"
    ws.ok("restore", "latest", "-s", "data", "--target", str(target))
    assert (target / str(ws.data).lstrip("/") / "new.bin").read_bytes() == (ws.data / "new.bin").read_bytes()


def test_a_run_with_a_failed_source_leaves_the_cache_as_the_load_found_it(ws: Workspace, index_reads: list[str]) -> None:
    ws.ok("init")
    ws.ok("backup")
    before = index_files(ws)
    doc = yaml.safe_load(ws.config.read_text())
    doc["sources"].append({"name": "typo", "type": "files", "paths": [str(ws.root / "missing")]})
    ws.config.write_text(yaml.safe_dump(doc))
    (ws.data / "new.bin").write_bytes(os.urandom(300_000))
    assert ws.run("backup").code != 0  # "data" is stored, "typo" fails
    written = index_files(ws) - before
    assert written and index_reads == []
    ws.ok("backup", "-s", "data")
    assert set(index_reads) == written  # not taken from the cache: read from storage


def test_a_dry_run_neither_uses_nor_changes_the_cache(ws: Workspace, index_reads: list[str]) -> None:
    ws.ok("init")
    ws.ok("backup")
    cached = _cache_file(ws)
    stamp, content = cached.stat().st_mtime_ns, cached.read_bytes()
    (ws.data / "new.bin").write_bytes(os.urandom(300_000))
    stored = index_files(ws)
    ws.ok("backup", "--dry-run")
    assert set(index_reads) == stored and index_files(ws) == stored
    assert cached.stat().st_mtime_ns == stamp and cached.read_bytes() == content
