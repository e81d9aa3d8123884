"""k3s-node on a K3s data dir laid out as on a real node: what is saved, modes,
symlinks, restore to a target and in place, refusals."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from drkit.errors import Refused, UsageError
from drkit.sources import build_source
from drkit.sources.k3s_common import find_k3s_server
from drkit.sources.k3s_node import K3sNodeSource
from tests.fixtures.k3s_layout import TOKEN, K3sLayout, fake_proc, make_k3s_layout
from tests.fixtures.recording import RecordingBackup, RecordingRestore


def _setup(tmp_path: Path, **kw: object) -> tuple[K3sLayout, K3sNodeSource, RecordingBackup]:
    layout = make_k3s_layout(tmp_path / "node", **kw)  # type: ignore[arg-type]
    src = build_source({"name": "node", "type": "k3s-node", "data_dir": str(layout.data_dir),
                        "config_dir": str(layout.config_dir)}, key="s")
    assert isinstance(src, K3sNodeSource)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    ctx = RecordingBackup("node", scratch)
    src.backup(ctx)
    return layout, src, ctx


def test_backup_saves_token_tls_cred_manifests_config_with_modes(tmp_path: Path) -> None:
    layout, _, ctx = _setup(tmp_path)
    paths = {e.path: e for e in ctx.entries}
    assert ctx.content["data/server/token"] == (TOKEN + "\n").encode()
    for expected in ["data/server/tls/server-ca.key", "data/server/tls/etcd/client.key", "data/server/cred/passwd",
                     "data/server/manifests/coredns.yaml", "config/config.yaml",
                     "config/config.yaml.d/50-hardening.yaml", "config/registries.yaml"]:
        assert expected in paths, expected
        real = layout.data_dir / expected[5:] if expected.startswith("data/") else layout.config_dir / expected[7:]
        assert ctx.content[expected] == real.read_bytes()
        assert paths[expected].mode == (real.stat().st_mode & 0o7777)
    assert paths["data/server/tls/server-ca.key"].mode == 0o600
    assert paths["data/server/cred"].mode == 0o700
    assert paths["data/server/tls/ca.crt"].type == "symlink" and paths["data/server/tls/ca.crt"].target == "server-ca.crt"
    # the datastore itself is not part of this source
    assert not any("/db/" in p for p in paths)
    # directories come before their contents
    order = [e.path for e in ctx.entries]
    assert order.index("data/server") < order.index("data/server/tls") < order.index("data/server/tls/etcd/client.key")
    assert ctx.meta["secrets_encryption"] is True and ctx.run_meta["secrets_encryption"] is True
    assert ctx.run_meta["node_name"] == "node1" and ctx.run_meta["token_saved"] is True
    # the token never shows up in metadata
    assert TOKEN not in repr(ctx.meta) + repr(ctx.run_meta)


def test_secrets_encryption_off_is_recorded(tmp_path: Path) -> None:
    _, _, ctx = _setup(tmp_path, secrets_encryption=False)
    assert ctx.meta["secrets_encryption"] is False


def test_missing_token_is_a_clear_error(tmp_path: Path) -> None:
    src = build_source({"name": "node", "type": "k3s-node", "data_dir": str(tmp_path / "nothing")}, key="s")
    with pytest.raises(UsageError, match="token not found"):
        src.backup(RecordingBackup("node", tmp_path))


def test_restore_to_target_keeps_relative_paths_and_check(tmp_path: Path) -> None:
    layout, src, ctx = _setup(tmp_path)
    target = tmp_path / "out"
    result = src.restore(RecordingRestore(ctx, target))
    assert (target / "data/server/token").read_text() == TOKEN + "\n"
    assert (target / "config/config.yaml").read_bytes() == (layout.config_dir / "config.yaml").read_bytes()
    assert ((target / "data/server/tls/server-ca.key").stat().st_mode & 0o777) == 0o600
    assert any("secrets-encryption" in line for line in result.lines)
    check = src.check_restored(target, ctx.snapshot())
    assert check.ok, check.problems
    (target / "data/server/token").write_text("")
    assert not src.check_restored(target, ctx.snapshot()).ok


def test_in_place_refused_while_k3s_runs_and_restores_when_stopped(tmp_path: Path) -> None:
    layout, src, ctx = _setup(tmp_path)
    running = fake_proc(tmp_path / "p1", k3s_running=True)
    src.running_check = lambda: find_k3s_server(running)  # type: ignore[method-assign]
    layout.token.write_text("K10changed::server:other\n")
    with pytest.raises(Refused, match="K3s is running"):
        src.restore(RecordingRestore(ctx, None, options={"in_place": True}))
    assert layout.token.read_text() == "K10changed::server:other\n"

    stopped = fake_proc(tmp_path / "p2", k3s_running=False)
    src.running_check = lambda: find_k3s_server(stopped)  # type: ignore[method-assign]
    (layout.config_dir / "registries.yaml").unlink()
    os.chmod(layout.data_dir / "server/tls/server-ca.key", 0o644)
    result = src.restore(RecordingRestore(ctx, None, options={"in_place": True}))
    assert layout.token.read_text() == TOKEN + "\n"
    assert (layout.config_dir / "registries.yaml").exists()
    assert ((layout.data_dir / "server/tls/server-ca.key").stat().st_mode & 0o777) == 0o600
    assert os.readlink(layout.data_dir / "server/tls/ca.crt") == "server-ca.crt"
    assert result.files == sum(1 for e in ctx.entries if e.type == "file")
    assert not list(layout.data_dir.rglob(".*.tmp")) and not list(layout.data_dir.rglob("*.drkit-tmp"))
    # the token it replaced was different: kept aside; unchanged files were not copied
    kept = Path(result.details["replaced_kept_in"])
    assert kept.parent == layout.data_dir.parent and (kept.stat().st_mode & 0o777) == 0o700
    assert (kept / "data/server/token").read_text() == "K10changed::server:other\n"
    assert result.details["replaced"] == ["data/server/token"]
    # a second in-place restore changes nothing and keeps nothing
    again = src.restore(RecordingRestore(ctx, None, options={"in_place": True}))
    assert "replaced" not in again.details


def test_in_place_dry_run_changes_nothing(tmp_path: Path) -> None:
    layout, src, ctx = _setup(tmp_path)
    layout.token.write_text("other\n")
    result = src.restore(RecordingRestore(ctx, None, options={"in_place": True}, dry_run=True))
    assert layout.token.read_text() == "other\n"
    assert any(str(layout.token) in line for line in result.lines)
