"""Backup -> restore round trips through the real CLI: bytes, modes, symlinks, mtimes,
deduplication across files and runs, partial restores, and restore's refusals."""

from __future__ import annotations

import os
from pathlib import Path

from drkit.errors import EXIT_EXISTS, EXIT_REFUSED, EXIT_USAGE
from tests.foundation.conftest import Workspace, tree_state


def restored_root(target: Path, data: Path) -> Path:
    return target / str(data).lstrip("/")


def test_round_trip_restores_everything_exactly(ws: Workspace) -> None:
    ws.ok("init")
    backup = ws.ok("backup", "--json").json()
    snap = backup["snapshots"][0]
    assert snap["source"] == "data" and len(snap["id"]) == 64
    assert snap["bytes_read"] > 3 * 1024 * 1024
    target = ws.root / "restore"
    ws.ok("restore", "latest", "--source", "data", "--target", str(target))
    want = tree_state(ws.data)
    del want["skip.tmp"]  # excluded by the config
    got = tree_state(restored_root(target, ws.data))
    assert got == want
    assert got["a/text.txt"][3] == 1_600_000_000_123_456_789
    assert got["a/secret"][2] == "0o600"
    assert got["a/link"] == ("link", "text.txt")
    assert got["a/dangling"] == ("link", "/nonexistent/target")


def test_dedup_within_and_across_runs(ws: Workspace) -> None:
    ws.ok("init")
    first = ws.ok("backup", "--json").json()["snapshots"][0]
    # random.bin and copy.bin are identical: stored once (3 MiB random, text compresses)
    assert first["bytes_added"] < 3.3 * 1024 * 1024
    second = ws.ok("backup", "--json").json()["snapshots"][0]
    assert second["bytes_read"] == 0, "unchanged files must not be read again"
    assert second["stats"]["files_unmodified"] == first["stats"]["files_new"]
    assert second["bytes_stored"] < 4096, "an unchanged tree adds (almost) nothing"
    # Change 64 KiB in the middle of a 32 MiB file: only the chunks around it are new.
    # Chunks are at most 8 MiB and the seed is random per repository, so the bound is
    # two maximal chunks (16 MiB), still half of what storing the file again costs.
    big = ws.data / "a/b/big.bin"
    big.write_bytes(os.urandom(32 * 1024 * 1024))
    ws.ok("backup")
    with open(big, "r+b") as f:
        f.seek(16 * 1024 * 1024)
        f.write(os.urandom(64 * 1024))
    third = ws.ok("backup", "--json").json()["snapshots"][0]
    assert third["stats"]["files_changed"] == 1
    assert third["bytes_read"] == 32 * 1024 * 1024
    assert third["bytes_added"] <= 16 * 1024 * 1024 + 64 * 1024
    target = ws.root / "r3"
    ws.ok("restore", third["id"][:10], "--source", "data", "--target", str(target))
    assert (restored_root(target, ws.data) / "a/b/big.bin").read_bytes() == big.read_bytes()


def test_every_snapshot_keeps_its_own_content(ws: Workspace) -> None:
    ws.ok("init")
    ids = []
    for i in range(3):
        (ws.data / "a/text.txt").write_text(f"version {i}\n" * 1000)
        ids.append(ws.ok("backup", "--json").json()["snapshots"][0]["id"])
    for i, sid in enumerate(ids):
        target = ws.root / f"r{i}"
        ws.ok("restore", sid, "-s", "data", "--target", str(target))
        assert (restored_root(target, ws.data) / "a/text.txt").read_text() == f"version {i}\n" * 1000
    listed = ws.ok("snapshots", "--json").json()
    assert [s["id"] for s in listed] == ids
    assert all({"id", "source", "time", "run", "tags"} <= set(s) for s in listed)


def test_include_restores_a_part(ws: Workspace) -> None:
    ws.ok("init")
    ws.ok("backup")
    target = ws.root / "part"
    ws.ok("restore", "latest", "-s", "data", "--target", str(target), "--include", f"{ws.data}/a/b")
    root = restored_root(target, ws.data)
    assert (root / "a/b/random.bin").exists()
    assert not (root / "a/text.txt").exists()


def test_restore_refuses_non_empty_target_without_force(ws: Workspace) -> None:
    ws.ok("init")
    ws.ok("backup")
    target = ws.root / "busy"
    target.mkdir()
    (target / "keep-me").write_text("precious")
    r = ws.run("restore", "latest", "-s", "data", "--target", str(target))
    assert r.code == EXIT_REFUSED and "not empty" in r.err
    assert sorted(os.listdir(target)) == ["keep-me"], "nothing may be written when refusing"
    ws.ok("restore", "latest", "-s", "data", "--target", str(target), "--force")
    assert (target / "keep-me").read_text() == "precious"
    assert (restored_root(target, ws.data) / "a/secret").read_text() == "s3cr3t\n"


def test_dry_run_writes_nothing(ws: Workspace) -> None:
    ws.ok("init")
    ws.ok("backup")
    target = ws.root / "dry"
    r = ws.ok("restore", "latest", "-s", "data", "--target", str(target), "--dry-run")
    assert "would restore" in r.out
    assert not target.exists()


def test_restore_refuses_paths_escaping_the_target(ws: Workspace) -> None:
    """A manifest crafted with '../' paths (e.g. by someone with write access to a
    repository and the key) must not write outside the target."""
    from drkit.cli.common import open_repository  # noqa: F401 - same code path as the CLI
    from drkit.config import Environment, load_config
    from drkit.repository.repo import Repository
    from drkit.services.backup import BackupOptions, run_backup
    from drkit.sources.base import Source
    from drkit.storage import LocalStorage

    class Evil(Source):
        type_name = "files"

        def backup(self, ctx) -> None:  # type: ignore[no-untyped-def]
            ctx.add_bytes("../../escaped.txt", b"owned")

    ws.ok("init")
    repo = Repository.open(LocalStorage(ws.repo), "correct horse battery staple")
    cfg = load_config(ws.config, Environment())
    run_backup(repo, [Evil("data", cfg.sources[0].options)], BackupOptions())
    target = ws.root / "t" / "inner"
    r = ws.run("restore", "latest", "-s", "data", "--target", str(target))
    assert r.code == EXIT_REFUSED and "escape" in r.err
    assert not (ws.root / "escaped.txt").exists() and not (ws.root / "t" / "escaped.txt").exists()


def test_init_refuses_an_existing_repository(ws: Workspace) -> None:
    ws.ok("init")
    before = sorted(p.name for p in (ws.repo / "keys").iterdir())
    r = ws.run("init")
    assert r.code == EXIT_EXISTS and "already exists" in r.err
    assert sorted(p.name for p in (ws.repo / "keys").iterdir()) == before


def test_restore_needs_a_target(ws: Workspace) -> None:
    ws.ok("init")
    ws.ok("backup")
    r = ws.run("restore", "latest", "-s", "data")
    assert r.code == EXIT_USAGE and "--target" in r.err


def test_restore_refuses_to_write_through_a_restored_symlink(ws: Workspace) -> None:
    """A snapshot whose symlink 'evil' points outside, followed by 'evil/owned', must
    not write outside the target (the symlink is restored, the file refused)."""
    from drkit.config import Environment, load_config
    from drkit.repository.repo import Repository
    from drkit.services.backup import BackupOptions, run_backup
    from drkit.sources.base import Source
    from drkit.storage import LocalStorage

    outside = ws.root / "outside"
    outside.mkdir()

    class Evil(Source):
        type_name = "files"

        def backup(self, ctx) -> None:  # type: ignore[no-untyped-def]
            ctx.add_dir("d")
            ctx.add_bytes("d/ok.txt", b"fine")
            ctx.add_symlink("d/evil", str(outside))
            ctx.add_bytes("d/evil/owned", b"owned")

    ws.ok("init")
    repo = Repository.open(LocalStorage(ws.repo), "correct horse battery staple")
    cfg = load_config(ws.config, Environment())
    run_backup(repo, [Evil("data", cfg.sources[0].options)], BackupOptions())
    r = ws.run("restore", "latest", "-s", "data", "--target", str(ws.root / "t"))
    assert r.code == EXIT_REFUSED and "symlink" in r.err
    assert list(outside.iterdir()) == []
