"""k3s-sqlite against real SQLite: online copy under a concurrent writer process,
integrity checks, in-place restore with refusals and stale WAL removal."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path

import pytest

from drkit.errors import IntegrityError, Refused, UsageError
from drkit.sources import build_source
from drkit.sources.k3s_common import RunningProcess, find_k3s_server
from drkit.sources.k3s_sqlite import K3sSqliteSource, db_stats
from tests.fixtures.k3s_layout import create_kine_db, fake_proc, make_k3s_layout
from tests.fixtures.recording import RecordingBackup, RecordingRestore


def _writer(db: str, started: multiprocessing.synchronize.Event, stop: multiprocessing.synchronize.Event,
            committed: multiprocessing.sharedctypes.Synchronized) -> None:
    conn = sqlite3.connect(db, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    i = 0
    while not stop.is_set():
        i += 1
        conn.execute(
            "INSERT INTO kine(name, created, deleted, create_revision, prev_revision, lease, value)"
            " VALUES (?, 1, 0, 0, 0, 0, ?)",
            (f"/registry/writer/{i}", b"x" * 2000),
        )
        conn.commit()
        with committed.get_lock():
            committed.value = conn.execute("SELECT max(id) FROM kine").fetchone()[0]
        if i == 50:
            started.set()
    conn.close()


def _source(tmp_path: Path, db: Path) -> K3sSqliteSource:
    src = build_source({"name": "db", "type": "k3s-sqlite", "path": str(db), "config_dir": str(tmp_path / "noconf")},
                       key="sources[0]")
    assert isinstance(src, K3sSqliteSource)
    return src


def test_online_copy_under_concurrent_writer_holds_every_committed_row(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    create_kine_db(db, rows=2000)
    ctx_mp = multiprocessing.get_context("spawn")
    started, stop = ctx_mp.Event(), ctx_mp.Event()
    committed = ctx_mp.Value("q", 0)
    writer = ctx_mp.Process(target=_writer, args=(str(db), started, stop, committed))
    writer.start()
    try:
        assert started.wait(30), "writer did not start"
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        before = committed.value
        ctx = RecordingBackup("db", scratch)
        _source(tmp_path, db).backup(ctx)
        time.sleep(0.3)
        after = committed.value
    finally:
        stop.set()
        writer.join(30)
    assert after > before, "the writer kept writing during the backup"
    copy = tmp_path / "copy.db"
    copy.write_bytes(ctx.content["state.db"])
    stats = db_stats(copy)
    assert stats["integrity"] == "ok"
    conn = sqlite3.connect(copy)
    ids = {r[0] for r in conn.execute("SELECT id FROM kine")}
    conn.close()
    # every row committed before the backup began is in the copy, without gaps
    assert set(range(1, before + 1)) <= ids
    assert ids == set(range(1, max(ids) + 1))
    assert ctx.meta["kine_rows"] == len(ids) and ctx.meta["kine_max_id"] == max(ids)
    assert ctx.meta["page_count"] == stats["page_count"]
    assert ctx.run_meta["datastore"] == "sqlite" and ctx.run_meta["sqlite_page_count"] == stats["page_count"]


def test_missing_database_is_a_clear_error(tmp_path: Path) -> None:
    src = _source(tmp_path, tmp_path / "nope.db")
    with pytest.raises(UsageError, match="SQLite datastore not found"):
        src.backup(RecordingBackup("db", tmp_path))


def test_damaged_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    create_kine_db(db, rows=3000)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    data = bytearray(db.read_bytes())
    page = 4096
    # scribble over an index page in the middle (keep the header intact)
    for off in range(page * 20 + 100, page * 20 + 400):
        data[off] ^= 0x5A
    db.write_bytes(bytes(data))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(IntegrityError):
        _source(tmp_path, db).backup(RecordingBackup("db", scratch))


def test_run_without_token_source_is_refused(tmp_path: Path) -> None:
    src = _source(tmp_path, tmp_path / "state.db")
    with pytest.raises(Refused, match="no k3s-node source"):
        src.check_run([src])
    node = build_source({"name": "node", "type": "k3s-node"}, key="sources[1]")
    src.check_run([src, node])


def _backup_layout(tmp_path: Path) -> tuple[K3sSqliteSource, RecordingBackup, Path]:
    layout = make_k3s_layout(tmp_path / "node", rows=300)
    src = build_source({"name": "db", "type": "k3s-sqlite", "path": str(layout.db),
                        "config_dir": str(layout.config_dir)}, key="s")
    assert isinstance(src, K3sSqliteSource)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    ctx = RecordingBackup("db", scratch)
    src.backup(ctx)
    assert ctx.run_meta["node_name"] == "node1" and ctx.run_meta["secrets_encryption"] is True
    return src, ctx, layout.db


def test_restore_to_target_writes_state_db_and_check_passes(tmp_path: Path) -> None:
    src, ctx, _ = _backup_layout(tmp_path)
    target = tmp_path / "restored"
    result = src.restore(RecordingRestore(ctx, target))
    assert (target / "state.db").read_bytes() == ctx.content["state.db"]
    assert any("state.db" in line for line in result.lines)
    check = src.check_restored(target, ctx.snapshot())
    assert check.ok, check.problems
    assert "300 kine rows" in check.summary
    # a restored file with fewer rows fails the semantic check
    conn = sqlite3.connect(target / "state.db")
    conn.execute("DELETE FROM kine WHERE id > 250")
    conn.commit()
    conn.close()
    bad = src.check_restored(target, ctx.snapshot())
    assert not bad.ok and any("kine_rows" in p for p in bad.problems)


def test_in_place_refused_while_k3s_runs(tmp_path: Path) -> None:
    src, ctx, db = _backup_layout(tmp_path)
    procdir = fake_proc(tmp_path, k3s_running=True)
    src.running_check = lambda: find_k3s_server(procdir)  # type: ignore[method-assign]
    before = db.read_bytes()
    with pytest.raises(Refused, match=r"K3s is running \(pid 4242"):
        src.restore(RecordingRestore(ctx, None, options={"in_place": True}))
    assert db.read_bytes() == before


def test_in_place_replaces_db_and_moves_stale_wal_aside(tmp_path: Path) -> None:
    src, ctx, db = _backup_layout(tmp_path)
    procdir = fake_proc(tmp_path, k3s_running=False)
    src.running_check = lambda: find_k3s_server(procdir)  # type: ignore[method-assign]
    # the live DB moves on after the backup, leaving a WAL with newer rows
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("INSERT INTO kine(name, value) VALUES ('/registry/after', x'00')")
    conn.commit()
    wal = Path(str(db) + "-wal")
    assert wal.exists() and wal.stat().st_size > 0
    # the connection stays open: closing the last one would checkpoint and delete the WAL
    result = src.restore(RecordingRestore(ctx, None, options={"in_place": True}))
    conn.close()
    assert db.read_bytes()[:100] == ctx.content["state.db"][:100]
    assert not Path(str(db) + "-wal").exists()
    stats = db_stats(db)
    assert stats["integrity"] == "ok" and stats["kine_rows"] == 300
    assert any(line.startswith("snapshot taken on K3s") for line in result.lines)
    aside = result.details["moved_aside"]
    assert any(p.endswith(".drkit-replaced-" + p.rsplit("-", 1)[-1]) for p in aside)
    assert any("-wal.drkit-replaced" in p for p in aside)
    assert (db.stat().st_mode & 0o777) == ctx.entries[0].mode


def test_running_detection_reads_proc(tmp_path: Path) -> None:
    assert find_k3s_server(fake_proc(tmp_path / "a", k3s_running=True)) == RunningProcess(
        4242, "/usr/local/bin/k3s server")
    assert find_k3s_server(fake_proc(tmp_path / "b", k3s_running=False)) is None


def test_in_place_with_a_damaged_snapshot_leaves_the_live_db_alone(tmp_path: Path) -> None:
    src, ctx, db = _backup_layout(tmp_path)
    procdir = fake_proc(tmp_path, k3s_running=False)
    src.running_check = lambda: find_k3s_server(procdir)  # type: ignore[method-assign]
    data = bytearray(ctx.content["state.db"])
    for page in range(1, len(data) // 4096):  # every b-tree page but the first
        for off in range(page * 4096 + 8, page * 4096 + 64):
            data[off] ^= 0x3C
    ctx.content["state.db"] = bytes(data)
    before = sorted(p.name for p in db.parent.iterdir())
    live = db.read_bytes()
    with pytest.raises(IntegrityError):
        src.restore(RecordingRestore(ctx, None, options={"in_place": True}))
    assert db.read_bytes() == live
    assert sorted(p.name for p in db.parent.iterdir()) == before


def test_in_place_refused_while_another_process_has_the_db_open(tmp_path: Path) -> None:
    import subprocess
    import sys

    src, ctx, db = _backup_layout(tmp_path)
    procdir = fake_proc(tmp_path, k3s_running=False)
    src.running_check = lambda: find_k3s_server(procdir)  # type: ignore[method-assign]
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); "
         "c.execute('select count(*) from kine').fetchone(); print('open', flush=True); time.sleep(60)", str(db)],
        stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"open\n"
        live = db.read_bytes()
        with pytest.raises(Refused, match=f"open in pid {holder.pid}"):
            src.restore(RecordingRestore(ctx, None, options={"in_place": True}))
        assert db.read_bytes() == live
    finally:
        holder.kill()
        holder.wait()
    src.restore(RecordingRestore(ctx, None, options={"in_place": True}))
