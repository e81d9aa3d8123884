"""Bad inputs: one clear line, the documented exit code, and nothing written."""

from __future__ import annotations

import os
from pathlib import Path

from drkit.errors import EXIT_LOCKED, EXIT_NO_REPOSITORY, EXIT_USAGE, EXIT_WRONG_KEY
from drkit.repository.locks import Lock
from drkit.storage import LocalStorage
from tests.foundation.conftest import Workspace


def listing(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_wrong_passphrase(ws: Workspace, monkeypatch) -> None:
    ws.ok("init")
    ws.ok("backup")
    before = listing(ws.repo)
    monkeypatch.setenv("DRKIT_PASSWORD", "not-the-right-passphrase")
    for args in (["backup"], ["snapshots"], ["restore", "latest", "-s", "data", "--target", str(ws.root / "r")]):
        r = ws.run(*args)
        assert r.code == EXIT_WRONG_KEY
        assert "wrong passphrase" in one_error_line(r.err)
    assert listing(ws.repo) == before
    assert not (ws.root / "r").exists()


def test_missing_repository(ws: Workspace) -> None:
    r = ws.run("backup")
    assert r.code == EXIT_NO_REPOSITORY
    assert str(ws.repo) in one_error_line(r.err)
    assert "drkit init" in r.err
    assert not ws.repo.exists() or listing(ws.repo) == {}


def test_malformed_config_names_the_key(ws: Workspace) -> None:
    cases = {
        "repository: {url: /x}\nsources:\n  - name: d\n    type: files\n    paths: relative\n": "sources[0].paths",
        "repository: {url: /x}\nsources:\n  - name: d\n    type: files\n    paths: [rel/path]\n": "sources[0].paths",
        "repository: {url: /x, compresion: 3}\n": "repository.compresion",
        "sources: []\n": "repository",
        "repository: {url: /x}\nsources:\n  - name: d\n    type: nosuch\n": "sources[0].type",
        "repository: {url: /x}\nsources:\n  - {name: d, type: files, paths: [/a]}\n  - {name: d, type: files, paths: [/b]}\n": "sources[1].name",
        "repository: [url\n": "not valid YAML",
    }
    for text, key in cases.items():
        ws.config.write_text(text)
        r = ws.run("snapshots")
        assert r.code == EXIT_USAGE, text
        assert key in one_error_line(r.err), (text, r.err)


def test_missing_config_file(ws: Workspace) -> None:
    ws.config.unlink()
    r = ws.run("snapshots")
    assert r.code == EXIT_USAGE and "not found" in one_error_line(r.err)


def test_two_passphrase_sources_are_refused(ws: Workspace, monkeypatch, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("correct horse battery staple\n")
    os.chmod(pw, 0o600)
    monkeypatch.setenv("DRKIT_PASSWORD_FILE", str(pw))
    r = ws.run("init")
    assert r.code == EXIT_USAGE and "more than one place" in one_error_line(r.err)
    assert not (ws.repo / "config").exists()
    monkeypatch.delenv("DRKIT_PASSWORD")
    ws.ok("init")
    monkeypatch.delenv("DRKIT_PASSWORD_FILE")
    monkeypatch.setenv("DRKIT_PASSWORD_COMMAND", f"cat {pw}")
    ws.ok("snapshots")


def test_prune_during_backup_is_refused_and_backup_during_prune_too(ws: Workspace) -> None:
    ws.ok("init")
    ws.ok("backup")
    storage = LocalStorage(ws.repo)
    with Lock(storage, exclusive=False, command="backup").acquire():
        before = listing(ws.repo)
        r = ws.run("prune")
        assert r.code == EXIT_LOCKED and "locked" in one_error_line(r.err)
        assert listing(ws.repo) == before
    with Lock(storage, exclusive=True, command="prune").acquire():
        r = ws.run("backup")
        assert r.code == EXIT_LOCKED and "exclusively" in one_error_line(r.err)
    assert not list((ws.repo / "locks").iterdir())


def test_unlock_removes_stale_locks_only(ws: Workspace) -> None:
    import json

    from drkit.localstate import host_id

    ws.ok("init")
    storage = LocalStorage(ws.repo)
    live = Lock(storage, exclusive=False, command="backup").acquire()
    dead = Lock(storage, exclusive=True, command="prune")
    doc = json.loads(dead._doc())
    doc["pid"] = 2**22 + 12345  # no such process on this host
    doc["host_id"] = host_id(Path(os.environ["DRKIT_STATE_DIR"]))  # this machine's id (made by 'init')
    storage.put(f"locks/{dead.id}", json.dumps(doc).encode())
    assert ws.run("backup").code == 0, "a dead process's exclusive lock does not block"
    r = ws.ok("unlock")
    assert "removed lock" in r.out and "kept live lock" in r.out
    remaining = [p.name for p in (ws.repo / "locks").iterdir()]
    assert remaining == [live.id]
    live.release()


def test_append_only_host_backs_up_but_never_deletes(ws: Workspace) -> None:
    from drkit.errors import EXIT_REFUSED
    from drkit.storage.appendonly import AppendOnlyStorage

    ws.write_config(append_only=True)
    ws.ok("init")
    ws.ok("backup")
    (ws.data / "a/more.txt").write_text("more")
    ws.ok("backup")
    assert not list((ws.repo / "locks").iterdir()), "its own locks are still removed"
    before = listing(ws.repo)
    for args in (["forget", "--keep-last", "1"], ["prune"]):
        r = ws.run(*args)
        assert r.code == EXIT_REFUSED and "append-only" in one_error_line(r.err)
    r = ws.run("forget", "--keep-last", "1", "--dry-run")
    assert r.code == 0 and "count-based" in r.err
    assert listing(ws.repo) == before
    storage = AppendOnlyStorage(LocalStorage(ws.repo))
    name = next(f"snapshots/{p.name}" for p in (ws.repo / "snapshots").iterdir())
    import pytest

    from drkit.errors import Refused

    with pytest.raises(Refused):
        storage.delete(name)
    with pytest.raises(Refused):
        storage.put(name, b"garbage")
    assert listing(ws.repo) == before
