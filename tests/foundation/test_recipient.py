"""Recipient (public-key) mode: a backup host that holds only the recipient can write
backups but cannot read any data, manifest or file list, not even what it just wrote;
the identity holder restores every byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from drkit.errors import EXIT_WRONG_KEY, IdentityRequired
from drkit.repository.repo import Repository
from drkit.storage import LocalStorage
from tests.foundation.conftest import Workspace, tree_state


@pytest.fixture
def recipient_ws(ws: Workspace) -> tuple[Workspace, Path, str]:
    identity = ws.root / "admin-identity.json"
    recipient = ws.ok("key", "generate-identity", "--output", str(identity)).out.strip()
    assert recipient.startswith("drkit-recipient-v1:")
    assert identity.stat().st_mode & 0o777 == 0o600
    ws.ok("init", "--recipient", recipient)
    return ws, identity, recipient


def test_host_backs_up_but_cannot_read_anything(recipient_ws, monkeypatch) -> None:
    ws, identity, _ = recipient_ws
    snap = ws.ok("backup", "--json").json()["snapshots"][0]
    # Second run: no parent readable, yet deduplication still stores (almost) nothing.
    again = ws.ok("backup", "--json").json()["snapshots"][0]
    assert again["bytes_read"] > 0 and again["bytes_stored"] < 4096
    for args in (["snapshots"], ["restore", "latest", "-s", "data", "--target", str(ws.root / "r")], ["prune"], ["forget", "--keep-last", "1"]):
        r = ws.run(*args)
        assert r.code == EXIT_WRONG_KEY, args
        assert "identity" in r.err
    assert not (ws.root / "r").exists()
    # verify without the identity checks what it can and says what it could not.
    r = ws.ok("verify", "--read-data", "--json")
    assert r.json()["content_checked"] is False

    # Library level: no stored blob or manifest opens with the host's keys.
    repo = Repository.open(LocalStorage(ws.repo), "correct horse battery staple")
    repo.load_index()
    assert not repo.can_read_content
    with pytest.raises(IdentityRequired):
        repo.load_snapshot(snap["id"])
    for chunk_id, _loc in list(repo.index.items())[:20]:
        with pytest.raises(IdentityRequired):
            repo.read_blob(chunk_id)


def test_host_cannot_read_what_it_just_wrote(recipient_ws) -> None:
    ws, _, _ = recipient_ws
    from drkit.config import Environment, load_config
    from drkit.services.backup import BackupOptions, run_backup

    repo = Repository.open(LocalStorage(ws.repo), "correct horse battery staple")
    cfg = load_config(ws.config, Environment())
    run = run_backup(repo, cfg.sources, BackupOptions())
    with pytest.raises(IdentityRequired):
        repo.load_snapshot(run.snapshots[0].id)
    with pytest.raises(IdentityRequired):
        repo.read_blob(bytes.fromhex(run.snapshots[0].tree[0]))


def test_identity_holder_restores_every_byte(recipient_ws, monkeypatch) -> None:
    ws, identity, _ = recipient_ws
    ws.ok("backup")
    monkeypatch.delenv("DRKIT_PASSWORD")  # the admin host needs no passphrase
    listed = ws.ok("snapshots", "--json", "--identity", str(identity)).json()
    assert len(listed) == 1
    target = ws.root / "restore"
    ws.ok("restore", "latest", "-s", "data", "--target", str(target), "--identity", str(identity))
    want = tree_state(ws.data)
    del want["skip.tmp"]
    assert tree_state(target / str(ws.data).lstrip("/")) == want
    monkeypatch.setenv("DRKIT_IDENTITY_FILE", str(identity))
    assert ws.ok("verify", "--read-data", "--json").json()["content_checked"] is True
    ws.ok("forget", "--keep-last", "1", "--prune")


def test_wrong_identity_and_protected_identity(recipient_ws, monkeypatch) -> None:
    ws, identity, _ = recipient_ws
    ws.ok("backup")
    other = ws.root / "other.json"
    ws.ok("key", "generate-identity", "--output", str(other))
    r = ws.run("snapshots", "--identity", str(other))
    assert r.code == EXIT_WRONG_KEY and "identity" in r.err
    # An identity file is never overwritten.
    assert ws.run("key", "generate-identity", "--output", str(other)).code == 9
    # A passphrase-protected identity.
    monkeypatch.setenv("DRKIT_IDENTITY_PASSWORD", "id-pass")
    protected = ws.root / "protected.json"
    ws.ok("key", "generate-identity", "--output", str(protected), "--protect")
    assert "private" not in protected.read_text()
    monkeypatch.setenv("DRKIT_IDENTITY_PASSWORD", "bad-pass")
    r = ws.run("snapshots", "--identity", str(protected))
    assert r.code == EXIT_WRONG_KEY


def test_copy_and_drill_take_the_identity(recipient_ws, monkeypatch) -> None:
    ws, identity, _ = recipient_ws
    ws.ok("backup")
    assert ws.run("drill").code == 5  # the host cannot drill what it cannot read
    monkeypatch.delenv("DRKIT_PASSWORD")
    r = ws.ok("drill", "--json", "--identity", str(identity))
    assert "data" in r.out
    monkeypatch.setenv("DRKIT_TO_PASSWORD", "offsite passphrase")
    dest = ws.root / "offsite"
    from drkit.repository.repo import Repository
    from drkit.storage import LocalStorage

    Repository.init(LocalStorage(dest), "offsite passphrase")
    ws.ok("copy", "--to", str(dest), "--identity", str(identity))
    copy = Repository.open(LocalStorage(dest), "offsite passphrase")
    assert len(copy.list_snapshots()) == 1
