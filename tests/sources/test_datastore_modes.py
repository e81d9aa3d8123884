"""#14 case 3: datastore copies hold every Secret of the cluster: they are 0600 from
the scratch copy to the stored entry to the restored file, whatever the umask, and
also when an (old or hostile) snapshot recorded a wider mode."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from drkit.repository.repo import Repository
from drkit.repository.tree import FILE, Entry
from drkit.services.restore import RestoreOptions, SnapshotReader
from drkit.sources import build_source
from drkit.sources.base import Source
from drkit.sources.k3s_common import find_k3s_server
from drkit.sources.k3s_etcd import K3sEtcdSource
from drkit.sources.k3s_sqlite import K3sSqliteSource
from drkit.storage import LocalStorage
from tests.fixtures.k3s_layout import create_kine_db, fake_proc
from tests.fixtures.recording import RecordingBackup, RecordingRestore
from tests.hostile.snapshots import write_snapshot
from tests.servers.etcd import EtcdServer


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


class _ModeRecorder(RecordingBackup):
    """Also notes the mode of the scratch file each add_file is given."""

    scratch_modes: dict[str, int]

    def add_file(self, path, real_path, st=None):  # type: ignore[no-untyped-def, override]
        self.scratch_modes = getattr(self, "scratch_modes", {})
        self.scratch_modes[path] = _mode(Path(real_path))
        return super().add_file(path, real_path, st)


def _restore_old_snapshot(tmp_path: Path, src: Source, source_type: str, name: str, data: bytes) -> Path:
    repo = Repository.init(LocalStorage(tmp_path / "repo"), "pw")
    snap = write_snapshot(repo, [Entry(name, FILE, mode=0o644)], {name: data}, source=src.name,
                          source_type=source_type)
    target = tmp_path / "restored"
    src.restore(SnapshotReader(repo, snap, options=RestoreOptions(target=target)))
    return target / name


def test_sqlite_copy_is_0600_from_scratch_to_restored_file(tmp_path: Path, open_umask: None) -> None:
    db = tmp_path / "state.db"
    create_kine_db(db, rows=50)
    os.chmod(db, 0o644)
    src = build_source({"name": "db", "type": "k3s-sqlite", "path": str(db), "config_dir": str(tmp_path / "noconf")},
                       key="sources[0]")
    assert isinstance(src, K3sSqliteSource)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    ctx = _ModeRecorder("db", scratch)
    src.backup(ctx)
    assert ctx.scratch_modes["state.db"] == 0o600
    assert next(e for e in ctx.entries if e.path == "state.db").mode == 0o600
    # a snapshot that says 0644 (written before this fix, or by a hostile host)
    restored = _restore_old_snapshot(tmp_path, src, "k3s-sqlite", "state.db", ctx.content["state.db"])
    assert _mode(restored) == 0o600
    # in place, too
    next(e for e in ctx.entries if e.path == "state.db").mode = 0o644
    src.running_check = lambda: find_k3s_server(fake_proc(tmp_path, k3s_running=False))  # type: ignore[method-assign]
    src.restore(RecordingRestore(ctx, None, options={"in_place": True}))
    assert _mode(db) == 0o600


def test_etcd_copy_is_0600_from_scratch_to_restored_file(tmp_path: Path, etcd_server: EtcdServer,
                                                         open_umask: None) -> None:
    src = build_source({"name": "etcd", "type": "k3s-etcd", "endpoints": [etcd_server.client_url],
                        "config_dir": str(tmp_path / "noconf")}, key="s")
    assert isinstance(src, K3sEtcdSource)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    ctx = _ModeRecorder("etcd", scratch)
    src.backup(ctx)
    assert ctx.scratch_modes["etcd-snapshot.db"] == 0o600
    assert next(e for e in ctx.entries if e.path == "etcd-snapshot.db").mode == 0o600
    restored = _restore_old_snapshot(tmp_path, src, "k3s-etcd", "etcd-snapshot.db", ctx.content["etcd-snapshot.db"])
    assert _mode(restored) == 0o600
