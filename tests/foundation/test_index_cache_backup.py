"""``drkit backup`` and the index cache: a run that finished leaves the cache holding
what it stored, so the next run reads no index file; a run with a failed source, a dry
run and ``--no-cache`` leave it as the load found it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from drkit.repository.repo import Repository
from tests.foundation.conftest import Workspace


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The index files every repository in this process reads."""
    names: list[str] = []
    real = Repository._read_index_listing

    def counted(self: Repository, index_id: str) -> Any:
        names.append(index_id)
        return real(self, index_id)

    monkeypatch.setattr(Repository, "_read_index_listing", counted)
    return names


def _index_files(ws: Workspace) -> set[str]:
    return {p.name for p in (ws.repo / "index").iterdir()}


def _cache_file(ws: Workspace) -> Path:
    files = list((Path(os.environ["DRKIT_CACHE_DIR"]) / "index").iterdir())
    assert len(files) == 1
    return files[0]


def test_after_a_finished_backup_the_next_one_reads_no_index_file(ws: Workspace, reads: list[str]) -> None:
    ws.ok("init")
    ws.ok("backup")
    assert reads == []  # a new repository has no index file yet
    (ws.data / "new.bin").write_bytes(os.urandom(300_000))
    ws.ok("backup")
    assert reads == []  # the first run's files came with the cache it left
    reads.clear()
    stored = _index_files(ws)
    ws.ok("backup", "--no-cache")
    assert set(reads) == stored  # what the cache spared: every file
    target = ws.root / "restored"
    ws.ok("restore", "latest", "-s", "data", "--target", str(target))
    assert (target / str(ws.data).lstrip("/") / "new.bin").read_bytes() == (ws.data / "new.bin").read_bytes()


def test_a_run_with_a_failed_source_leaves_the_cache_as_the_load_found_it(ws: Workspace, reads: list[str]) -> None:
    ws.ok("init")
    ws.ok("backup")
    before = _index_files(ws)
    doc = yaml.safe_load(ws.config.read_text())
    doc["sources"].append({"name": "typo", "type": "files", "paths": [str(ws.root / "missing")]})
    ws.config.write_text(yaml.safe_dump(doc))
    (ws.data / "new.bin").write_bytes(os.urandom(300_000))
    assert ws.run("backup").code != 0  # "data" is stored, "typo" fails
    written = _index_files(ws) - before
    assert written and reads == []
    ws.ok("backup", "-s", "data")
    assert set(reads) == written  # not taken from the cache: read from storage


def test_a_dry_run_neither_uses_nor_changes_the_cache(ws: Workspace, reads: list[str]) -> None:
    ws.ok("init")
    ws.ok("backup")
    cached = _cache_file(ws)
    stamp, content = cached.stat().st_mtime_ns, cached.read_bytes()
    (ws.data / "new.bin").write_bytes(os.urandom(300_000))
    stored = _index_files(ws)
    ws.ok("backup", "--dry-run")
    assert set(reads) == stored and _index_files(ws) == stored
    assert cached.stat().st_mtime_ns == stamp and cached.read_bytes() == content
