"""Issue #17, 'wrong today' 1, 2 and 5: no silent empty backups, no silent no-ops.

A missing source path or a source that read nothing fails that source (exit 7, nothing
stored for it); zero selected sources, an unknown ``-s`` name and a restore include
that matches nothing are usage errors; ``-s x -s x`` is one snapshot; ``snapshots``
marks partial/empty snapshots and ``restore latest``/``drill`` never pick an empty one
silently."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import yaml

from drkit.errors import EXIT_PARTIAL, EXIT_USAGE
from drkit.repository.repo import Repository
from drkit.repository.snapshot import Snapshot, now_iso
from drkit.storage import LocalStorage
from tests.foundation.conftest import Workspace, tree_state
from tests.foundation.test_errors import listing, one_error_line


def _sources(ws: Workspace, *specs: dict) -> None:
    doc = yaml.safe_load(ws.config.read_text())
    doc["sources"] = list(specs)
    ws.config.write_text(yaml.safe_dump(doc))


def _data(ws: Workspace) -> dict:
    return {"name": "data", "type": "files", "paths": [str(ws.data)], "exclude": ["*.tmp"]}


def _snapshot_sources(ws: Workspace) -> list[str]:
    return [s["source"] for s in ws.ok("snapshots", "--json").json()]


def test_missing_source_path_fails_that_source_and_stores_nothing_for_it(ws: Workspace) -> None:
    _sources(ws, _data(ws), {"name": "typo", "type": "files", "paths": [str(ws.root / "dta")]})
    ws.ok("init")
    r = ws.run("backup")
    assert r.code == EXIT_PARTIAL
    line = one_error_line(r.err)
    assert "typo" in line and str(ws.root / "dta") in line and "does not exist" in line
    assert _snapshot_sources(ws) == ["data"]


def test_only_source_missing_stores_no_snapshot_and_restore_latest_finds_none(ws: Workspace) -> None:
    _sources(ws, {"name": "typo", "type": "files", "paths": [str(ws.root / "dta")]})
    ws.ok("init")
    r = ws.run("backup")
    assert r.code == EXIT_PARTIAL
    assert "does not exist" in one_error_line(r.err)
    assert _snapshot_sources(ws) == []
    assert listing(ws.repo / "snapshots") == {} if (ws.repo / "snapshots").exists() else True
    r = ws.run("restore", "latest", "-s", "typo", "--target", str(ws.root / "r"))
    assert r.code == EXIT_USAGE and "no snapshot matches 'latest'" in one_error_line(r.err)


def test_source_that_read_nothing_it_was_told_to_read_fails(ws: Workspace) -> None:
    _sources(ws, {"name": "yamls", "type": "files", "paths": [str(ws.data)], "include": ["*.yaml"]})
    ws.ok("init")
    r = ws.run("backup")
    assert r.code == EXIT_PARTIAL
    line = one_error_line(r.err)
    assert "yamls" in line and "read nothing" in line
    assert _snapshot_sources(ws) == []


def test_zero_sources_is_a_usage_error_for_backup_and_config_check(ws: Workspace) -> None:
    _sources(ws)
    ws.ok("init")
    r = ws.run("backup")
    assert r.code == EXIT_USAGE
    assert "no sources" in one_error_line(r.err)
    assert _snapshot_sources(ws) == []
    r = ws.run("config", "check")
    assert r.code == EXIT_USAGE
    assert "no sources" in one_error_line(r.err)


def test_config_detect_write_never_writes_an_empty_source_list(ws: Workspace, tmp_path: Path) -> None:
    target = tmp_path / "etc" / "drkit.yaml"
    node = tmp_path / "bare-node"
    node.mkdir()
    r = ws.run("config", "detect", "--no-kube", "--root", str(node), "--write", "--path", str(target))
    assert r.code == EXIT_USAGE
    assert "no source" in one_error_line(r.err)
    assert not target.exists() and not (target.parent / "passphrase").exists()


def test_unknown_source_name_is_a_usage_error_listing_the_known_names(ws: Workspace) -> None:
    ws.ok("init")
    ws.ok("backup")
    for args in (["backup", "-s", "dta"], ["snapshots", "-s", "dta"], ["forget", "-s", "dta", "--keep-last", "1"],
                 ["restore", "latest", "-s", "dta", "--target", str(ws.root / "r")]):
        r = ws.run(*args)
        assert r.code == EXIT_USAGE, args
        line = one_error_line(r.err)
        assert "'dta'" in line, args
        assert "data" in r.err.split("hint:", 1)[1], args
    assert _snapshot_sources(ws) == ["data"]


def test_duplicate_source_option_makes_one_snapshot(ws: Workspace) -> None:
    ws.ok("init")
    out = ws.ok("backup", "-s", "data", "-s", "data", "--json").json()
    assert [s["source"] for s in out["snapshots"]] == ["data"]
    assert _snapshot_sources(ws) == ["data"]


def test_restore_include_that_matches_nothing_is_a_usage_error(ws: Workspace) -> None:
    ws.ok("init")
    ws.ok("backup")
    target = ws.root / "r"
    r = ws.run("restore", "latest", "-s", "data", "--target", str(target), "--include", "a.conf")
    assert r.code == EXIT_USAGE
    assert "a.conf" in one_error_line(r.err) and "matches nothing" in r.err
    assert not target.exists() or not any(target.rglob("*"))


def _store_empty_snapshot(ws: Workspace, source: str = "data") -> str:
    """A 0-entry snapshot as drkit before #17 stored it for a missing path."""
    repo = Repository.open(LocalStorage(str(ws.repo)), "correct horse battery staple")
    snap = Snapshot(id=secrets.token_hex(32), time=now_iso(), source=source, source_type="files", run=secrets.token_hex(16),
                    host="h", tree=[], stats={"entries": 0, "errors": 1, "size": 0})
    repo.save_snapshot(snap)
    return snap.short_id


def test_snapshots_marks_partial_and_empty_snapshots(ws: Workspace) -> None:
    ws.ok("init")
    full = ws.ok("backup", "--json").json()["snapshots"][0]["short_id"]
    os.mkfifo(ws.data / "a" / "fifo")
    r = ws.run("backup", "--json")
    assert r.code == EXIT_PARTIAL
    partial = r.json()["snapshots"][0]["short_id"]
    empty = _store_empty_snapshot(ws)
    rows = {s["short_id"]: s["status"] for s in ws.ok("snapshots", "--json").json()}
    assert rows == {full: "complete", partial: "partial", empty: "empty"}
    text = ws.ok("snapshots").out
    lines = {line.split()[0]: line for line in text.splitlines() if line[:8] in rows}
    assert "empty" in lines[empty] and "partial" in lines[partial]
    assert "empty" not in lines[full] and "partial" not in lines[full]


def test_restore_latest_and_drill_skip_an_empty_snapshot_and_say_so(ws: Workspace) -> None:
    ws.ok("init")
    real = ws.ok("backup", "--json").json()["snapshots"][0]["short_id"]
    empty = _store_empty_snapshot(ws)
    target = ws.root / "r"
    r = ws.ok("restore", "latest", "-s", "data", "--target", str(target))
    assert f"restored snapshot {real}" in r.out
    assert empty in r.err and "empty" in r.err
    assert tree_state(target / str(ws.data).lstrip("/"))["a/text.txt"][0] == "file"
    r = ws.run("drill", "--json")
    assert r.code == 0, r.err
    drilled = r.json()["sources"][0]["snapshot"]
    assert drilled.startswith(real)
    assert empty in r.err and "empty" in r.err


def test_restore_by_id_infers_the_source(ws: Workspace) -> None:
    ws.ok("init")
    snap = ws.ok("backup", "--json").json()["snapshots"][0]["short_id"]
    target = ws.root / "r"
    r = ws.ok("restore", snap, "--target", str(target))
    assert f"restored snapshot {snap} of data" in r.out
    assert (target / str(ws.data).lstrip("/") / "a/text.txt").read_text() == "hello world\n" * 5000


def test_restore_option_a_source_does_not_know_is_a_usage_error(ws: Workspace) -> None:
    ws.ok("init")
    ws.ok("backup")
    target = ws.root / "r"
    r = ws.run("restore", "latest", "-s", "data", "--target", str(target), "-o", "pause_sync=false")
    assert r.code == EXIT_USAGE
    assert "-o pause_sync" in one_error_line(r.err) and "files" in r.err
    assert not target.exists()


def test_every_restore_option_a_source_reads_is_declared() -> None:
    """A key read from ctx.options.extra but missing from restore_options would be refused."""
    import importlib
    import re

    from drkit.sources import SOURCE_TYPES

    root = Path(__file__).resolve().parents[2] / "drkit" / "sources"
    read = {m for p in root.glob("*.py") for m in re.findall(r'options\.extra\.get\("([a-z_]+)"', p.read_text())}
    declared: set[str] = set()
    for target in SOURCE_TYPES.values():
        module, cls = target.split(":")
        declared |= getattr(importlib.import_module(module), cls).restore_options
    assert read and read <= declared, read - declared
