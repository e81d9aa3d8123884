"""A hostile writer or storage operator must not turn the admin's own prune, forget or
verify against the data (issue #15). Each test builds the hostile repository, runs the
admin's command, and checks that every real snapshot still restores exactly and that a
refusal is one clear line with its exit code."""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
import time
from pathlib import Path

from drkit.errors import EXIT_DAMAGE
from drkit.repository import layout
from drkit.repository.blob import BLOB_DATA, BLOB_TREE
from drkit.repository.pack import MAGIC, PackBuilder
from drkit.repository.repo import Repository
from drkit.repository.snapshot import Snapshot
from drkit.storage import LocalStorage
from tests.foundation.conftest import Result, Workspace, tree_state

PASSWORD = "correct horse battery staple"
DAY = 24 * 3600


def open_repo(ws: Workspace) -> Repository:
    repo = Repository.open(LocalStorage(ws.repo), PASSWORD)
    repo.load_index()
    return repo


def pack_files(ws: Workspace) -> dict[str, Path]:
    return {p.name: p for p in (ws.repo / "data").rglob("*") if p.is_file() and not p.name.startswith(".")}


def age(path: Path, seconds: float) -> None:
    """Make *path* look written *seconds* ago (the store's clock is its mtime)."""
    t = time.time() - seconds
    os.utime(path, (t, t))


def one_error_line(r: Result) -> str:
    errors = [line for line in r.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, r.err
    return errors[0]


def backup_twice(ws: Workspace) -> list[dict[str, object]]:
    """Two snapshots with different data; returns their JSON (id, short_id...). Packs
    of 1 MiB, so that some packs hold only file data."""
    ws.write_config(pack_size_mib=1)
    ws.ok("init")
    first = ws.ok("backup", "--json").json()["snapshots"][0]
    (ws.data / "second.bin").write_bytes(os.urandom(300 * 1024))
    second = ws.ok("backup", "--json").json()["snapshots"][0]
    return [first, second]


def assert_restores_exactly(ws: Workspace, snapshot_id: str, want: dict[str, tuple]) -> None:
    target = ws.root / f"restore-{snapshot_id[:8]}-{len(list(ws.root.iterdir()))}"
    ws.ok("restore", snapshot_id, "-s", "data", "--target", str(target))
    got = tree_state(target / str(ws.data).lstrip("/"))
    files = {k: v[1] for k, v in want.items() if v[0] == "file" and not k.endswith(".tmp")}  # *.tmp is excluded
    assert {k: v[1] for k, v in got.items() if v[0] == "file"} == files


# -- 1. an orphan pack is adopted only after its blobs decrypt and check ------------------


def test_orphan_pack_with_a_copied_trailer_is_not_adopted_and_prune_keeps_the_real_pack(ws: Workspace) -> None:
    """A storage operator with no key copies a real trailer onto random bytes under a
    valid SHA-256 name. Backup must not adopt it; prune must not delete the real pack."""
    ws.ok("init")
    snap = ws.ok("backup", "--json").json()["snapshots"][0]
    want = tree_state(ws.data)
    real = max(pack_files(ws).values(), key=lambda p: p.stat().st_size)
    data = real.read_bytes()
    (tlen,) = struct.unpack("<I", data[-4:])
    trailer = data[-4 - tlen :]
    body = len(data) - len(MAGIC) - len(trailer)
    while True:  # a name after the real one: the old prune retired the smaller id first
        fake = MAGIC + os.urandom(body) + trailer
        fake_id = hashlib.sha256(fake).hexdigest()
        if fake_id > real.name:
            break
    fake_path = ws.repo / "data" / fake_id[:2] / fake_id
    fake_path.parent.mkdir(exist_ok=True)
    fake_path.write_bytes(fake)
    age(fake_path, 2 * DAY)

    ws.ok("backup")
    assert fake_id not in open_repo(ws).index.pack_sizes, "a pack whose blobs do not decrypt was adopted"
    assert fake_id in ws.ok("verify", "--json").json()["orphan_packs"]
    ws.ok("prune")
    assert real.exists()
    assert not fake_path.exists()
    ws.ok("verify", "--read-data")
    assert_restores_exactly(ws, str(snap["id"]), want)


def test_prune_never_drops_the_real_copy_for_an_unreadable_duplicate(ws: Workspace) -> None:
    """A hostile writer (it holds the index key) indexes a garbage pack claiming the
    same blobs as a real one. Prune reads the copy that would stay before deleting the
    other: the garbage goes, the real pack stays."""
    ws.write_config(pack_size_mib=1)
    ws.ok("init")
    snap = ws.ok("backup", "--json").json()["snapshots"][0]
    want = tree_state(ws.data)
    repo = open_repo(ws)
    by_pack = repo.index.entries_by_pack()
    real_id = next(p for p, entries in sorted(by_pack.items()) if all(e.blob_type == BLOB_DATA for e in entries))
    entries = by_pack[real_id]
    real_bytes = repo.read_pack(real_id)
    while True:
        garbage = MAGIC + os.urandom(len(real_bytes) - len(MAGIC))
        fake_id = hashlib.sha256(garbage).hexdigest()
        if fake_id > real_id:
            break
    repo.storage.put(layout.pack_name(fake_id), garbage)
    repo.write_index([(fake_id, len(garbage), entries)])

    ws.ok("prune")
    assert real_id in pack_files(ws)
    assert fake_id not in pack_files(ws)
    ws.ok("verify", "--read-data")
    assert_restores_exactly(ws, str(snap["id"]), want)


# -- 2. prune proves every referenced blob is indexed before deleting anything ------------


def test_an_index_superseding_all_others_cannot_make_prune_delete_data(ws: Workspace) -> None:
    """A write-only host adds one index that lists only the tree blobs and supersedes
    every other index file. The admin's prune refuses (exit 6, one line) and deletes
    nothing; rebuild-index recovers, and every snapshot restores."""
    snaps = backup_twice(ws)
    want_second = tree_state(ws.data)
    repo = open_repo(ws)
    trees_only: list = []
    for pack_id, entries in repo.index.entries_by_pack().items():
        trees = [e for e in entries if e.blob_type == BLOB_TREE]
        if trees:
            trees_only.append((pack_id, repo.index.pack_sizes[pack_id], trees))
    repo.write_index(trees_only, supersedes=sorted(repo.index.files))
    before = set(pack_files(ws))
    assert len(trees_only) < len(before), "the attack needs packs that hold only file data"
    index_before = set(os.listdir(ws.repo / "index"))

    r = ws.run("prune")
    assert r.code == EXIT_DAMAGE, r.err
    line = one_error_line(r)
    assert "in no index" in line and "refus" in line
    assert "rebuild-index" in r.err
    assert set(pack_files(ws)) == before
    assert set(os.listdir(ws.repo / "index")) == index_before
    r = ws.run("prune", "--dry-run")
    assert r.code == EXIT_DAMAGE and set(pack_files(ws)) == before
    assert "unindexed" in r.out and "deleted" not in r.out

    ws.ok("rebuild-index")
    ws.ok("prune")
    ws.ok("verify", "--read-data")
    (ws.data / "second.bin").unlink()
    assert_restores_exactly(ws, str(snaps[0]["id"]), tree_state(ws.data))
    assert_restores_exactly(ws, str(snaps[1]["id"]), want_second)


def test_a_pack_not_yet_indexed_survives_prune_until_its_grace_period_ends(ws: Workspace) -> None:
    """A slow backup on another host has uploaded a pack and not yet its index: prune
    keeps it (restic's rule: unindexed packs get a grace period), and removes it once
    it is older than the grace period."""
    ws.ok("init")
    ws.ok("backup")
    repo = open_repo(ws)
    payload = os.urandom(4096)
    chunk_id = repo.hasher(payload)
    builder = PackBuilder()
    builder.add(BLOB_DATA, chunk_id, repo.codec.encode(BLOB_DATA, chunk_id, payload), len(payload))
    pack_id, raw = builder.finish(repo.cipher)
    repo.storage.put(layout.pack_name(pack_id), raw)

    report = ws.ok("prune", "--json").json()
    assert report["orphans_deleted"] == 0 and report["orphans_kept_young"] == 1
    assert pack_id in pack_files(ws)
    age(pack_files(ws)[pack_id], 2 * DAY)
    report = ws.ok("prune", "--json").json()
    assert report["orphans_deleted"] == 1 and report["orphans_kept_young"] == 0
    assert pack_id not in pack_files(ws)


# -- 3. time-based retention is anchored to the clock; future-dated snapshots flagged -----


def test_a_snapshot_dated_2099_cannot_make_forget_remove_real_snapshots(ws: Workspace) -> None:
    """A hostile writer adds an empty snapshot dated 2099. 'forget --keep-within 30d
    --prune' (what docs/recipient-mode.md recommends) and 'forget --keep-last 1' keep
    the real ones; snapshots, verify and forget flag the future-dated one."""
    snaps = backup_twice(ws)
    want = tree_state(ws.data)
    host = ws.ok("snapshots", "--json").json()[0]["host"]
    fake = Snapshot(id=secrets.token_hex(32), time="2099-01-01T00:00:00Z", source="data", source_type="files",
                    run=secrets.token_hex(16), host=host, tree=[])
    open_repo(ws).save_snapshot(fake)

    r = ws.ok("forget", "--keep-within", "30d", "--prune")
    assert f"future-dated snapshot {fake.short_id}" in r.err
    ids = {s["id"] for s in ws.ok("snapshots", "--json").json()}
    assert ids == {snaps[0]["id"], snaps[1]["id"], fake.id}
    r = ws.ok("forget", "--keep-last", "1")
    ids = {s["id"] for s in ws.ok("snapshots", "--json").json()}
    assert ids == {snaps[1]["id"], fake.id}, "the newest real snapshot is kept; the future one takes no slot"

    r = ws.ok("snapshots")
    assert f"warning: snapshot {fake.short_id} is dated in the future (2099-01-01" in r.err
    r = ws.ok("verify", "--json")
    assert r.json()["future_snapshots"] == [fake.id]
    r = ws.ok("verify")
    assert f"snapshot {fake.short_id} is dated in the future" in r.err
    assert_restores_exactly(ws, str(snaps[1]["id"]), want)
    assert_restores_exactly(ws, "latest", want)  # never the future-dated one


# -- 5. locks: a host id, staleness by the lock's own refresh, refresh failure stops ------


def foreign_lock(ws: Workspace, **fields: object) -> str:
    """Store an exclusive lock as another process would; returns its id."""
    import json
    import socket
    from datetime import datetime, timedelta, timezone

    lock_id = secrets.token_hex(32)
    behind = (datetime.now(timezone.utc) - timedelta(hours=2)).isoformat()
    doc = {"host": socket.gethostname(), "host_id": secrets.token_hex(16), "pid": 2**22 + 4321, "user": "root",
           "exclusive": True, "time": behind, "refreshed": behind, "refresh_seconds": 300, "stale_seconds": 1800,
           "command": "prune"}
    doc.update(fields)
    (ws.repo / "locks").mkdir(exist_ok=True)
    (ws.repo / "locks" / lock_id).write_text(json.dumps(doc))
    return lock_id


def test_a_live_lock_of_a_host_whose_clock_is_behind_or_that_shares_our_hostname_is_respected(ws: Workspace) -> None:
    """Another machine (same hostname, as containers have; its clock two hours behind, so
    its fresh lock looks old; its pid means nothing here) holds the lock exclusively:
    backup waits (exit 4, one line) instead of calling it stale."""
    from drkit.errors import EXIT_LOCKED

    ws.ok("init")
    ws.ok("backup")
    lock_id = foreign_lock(ws)
    r = ws.run("backup")
    assert r.code == EXIT_LOCKED, r.err
    assert "locked exclusively" in one_error_line(r)
    assert ws.ok("unlock").out.count("kept live lock") == 1
    assert (ws.repo / "locks" / lock_id).exists()


def test_a_lock_is_stale_once_seen_unchanged_beyond_its_own_stale_time(ws: Workspace, monkeypatch) -> None:
    """Staleness by this host's own observation: the same lock, unchanged for longer than
    the stale time it declares plus the margin, is stale (whatever its timestamps say)."""
    from drkit.repository import locks

    ws.ok("init")
    lock_id = foreign_lock(ws, stale_seconds=60)
    clock = [1000.0]
    monkeypatch.setattr(locks.time, "time", lambda: clock[0])
    assert ws.run("backup").code == 4  # first seen now
    clock[0] += 60 + locks.STALE_MARGIN.total_seconds() - 5
    assert ws.run("backup").code == 4  # not yet
    clock[0] += 10
    ws.ok("backup")
    assert "removed lock" in ws.ok("unlock").out
    assert not (ws.repo / "locks" / lock_id).exists()


def test_retry_lock_waits_for_the_holder_and_gives_up_after_its_duration(ws: Workspace) -> None:
    import threading

    from drkit.repository.locks import Lock

    ws.ok("init")
    held = Lock(LocalStorage(ws.repo), exclusive=True, command="prune").acquire()
    r = ws.run("--retry-lock", "1s", "backup")
    assert r.code == 4 and "retried for 1s" in one_error_line(r)
    threading.Timer(0.5, held.release).start()
    ws.ok("--retry-lock", "30s", "backup")
    r = ws.run("--retry-lock", "soon", "backup")
    assert r.code == 2 and "--retry-lock" in r.err


def test_a_failed_lock_refresh_stops_the_run_before_its_next_write(ws: Workspace) -> None:
    """Once the lock cannot be refreshed, another host may take it for stale: the holder
    writes nothing more (LockLost, exit 4), and what it wrote before stays valid."""
    from datetime import timedelta

    from drkit.errors import EXIT_LOCKED, LockLost
    from drkit.repository.locks import Lock

    class LocksFail(LocalStorage):
        fail = False

        def put(self, name: str, data: bytes | memoryview) -> None:
            if self.fail and name.startswith("locks/"):
                raise OSError("connection reset")
            super().put(name, data)

    ws.ok("init")
    ws.ok("backup")
    storage = LocksFail(ws.repo)
    repo = Repository.open(storage, PASSWORD)
    repo.load_index()
    lock = Lock(storage, exclusive=False, command="backup", refresh_interval=timedelta(milliseconds=50)).acquire()
    repo._held_locks.append(lock)
    storage.fail = True
    deadline = time.monotonic() + 5
    while lock.lost is None and time.monotonic() < deadline:
        time.sleep(0.02)
    snaps_before = sorted(os.listdir(ws.repo / "snapshots"))
    fake = Snapshot(id=secrets.token_hex(32), time="2026-01-01T00:00:00Z", source="data", source_type="files", run="0" * 32, host="h", tree=[])
    try:
        repo.save_snapshot(fake)
        raise AssertionError("a snapshot was written under a lock that could not be refreshed")
    except LockLost as exc:
        assert exc.exit_code == EXIT_LOCKED and "connection reset" in exc.message
    assert sorted(os.listdir(ws.repo / "snapshots")) == snaps_before
    lock.release()


# -- 7. every failing source's hint is in a multi-source backup's summary -----------------


def test_each_failing_source_keeps_its_hint_in_the_summary(ws: Workspace) -> None:
    import yaml

    from drkit.errors import EXIT_PARTIAL

    doc = yaml.safe_load(ws.config.read_text())
    doc["sources"] += [
        {"name": "gitops", "type": "git", "url": str(ws.root / "no-such-repo")},
        {"name": "gitops-https", "type": "git", "url": "https://127.0.0.1:9/org/repo.git", "token_env": "DRKIT_TEST_UNSET_TOKEN"},
    ]
    ws.config.write_text(yaml.safe_dump(doc))
    ws.ok("init")
    r = ws.run("backup")
    assert r.code == EXIT_PARTIAL, r.err
    out = r.out.splitlines()
    local = out.index(next(line for line in out if line.startswith("gitops: FAILED")))
    https = out.index(next(line for line in out if line.startswith("gitops-https: FAILED")))
    assert "check url and credentials" in out[local + 1] and out[local + 1].startswith("  hint: ")
    assert "export it in the environment" in out[https + 1] and out[https + 1].startswith("  hint: ")
    hint = [line for line in r.err.splitlines() if line.startswith("hint: ")]
    assert len(hint) == 1 and "gitops: check url" in hint[0] and "gitops-https: export" in hint[0]
    assert len(ws.ok("snapshots", "--json").json()) == 1  # the good source was saved


# -- 6. the client remembers what it last saw, and notices rollback and deletion ----------


def test_deleting_the_newest_snapshot_and_its_index_on_storage_is_noticed(ws: Workspace) -> None:
    """The storage operator deletes the newest snapshot and the index file it added:
    every object left is authentic, so only the client's memory can tell. snapshots
    warns, verify fails (exit 6) naming both, then accepts the new state."""
    ws.ok("init")
    first = ws.ok("backup", "--json").json()["snapshots"][0]
    index_before = set(os.listdir(ws.repo / "index"))
    (ws.data / "new.bin").write_bytes(os.urandom(100_000))
    second = ws.ok("backup", "--json").json()["snapshots"][0]
    (ws.data / "new.bin").unlink()
    want = tree_state(ws.data)
    ws.ok("verify")
    added = set(os.listdir(ws.repo / "index")) - index_before
    assert len(added) == 1
    (ws.repo / "snapshots" / str(second["id"])).unlink()
    (ws.repo / "index" / added.pop()).unlink()

    r = ws.ok("snapshots")
    assert f"snapshot {second['short_id']}, the newest of source data this host saw" in r.err and "is gone" in r.err
    r = ws.run("verify")
    assert r.code == EXIT_DAMAGE, r.err
    assert "problem(s) found" in one_error_line(r)
    rolled = [line for line in r.err.splitlines() if line.startswith("rolled back: ")]
    assert len(rolled) == 2 and second["short_id"] in rolled[0] and "index file(s) this host saw" in rolled[1]
    ws.ok("verify")  # seen and reported once; the new state is now what this host knows
    assert_restores_exactly(ws, str(first["id"]), want)


def test_each_command_declares_its_lock_in_one_table() -> None:
    """borg's with_repository(exclusive=...), as data: readers and writers of new data
    share the repository; whatever deletes or rewrites existing objects holds it alone."""
    from drkit.repository.locks import COMMAND_LOCKS

    shared = sorted(c for c, exclusive in COMMAND_LOCKS.items() if not exclusive)
    assert shared == ["backup", "copy", "diff", "drill", "dump", "find", "ls", "restore", "stats", "verify"]
    assert sorted(c for c, exclusive in COMMAND_LOCKS.items() if exclusive) == [
        "forget", "prune", "rebuild-index", "repair", "tag", "upgrade-format"]
