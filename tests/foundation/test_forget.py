"""Retention policies on a synthetic history, and forget/prune through the CLI."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from drkit.repository.snapshot import Snapshot
from drkit.services.forget import Policy, apply_policy
from drkit.units import parse_keep_within as parse_duration
from tests.foundation.conftest import Workspace


def history(days: int, per_day: int = 4, source: str = "data") -> list[Snapshot]:
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    out = []
    for d in range(days):
        for h in range(per_day):
            t = start + timedelta(days=d, hours=6 * h)
            out.append(Snapshot(id=f"{source}-{d:03d}-{h}", time=t.isoformat(), source=source, source_type="files", run="r", host="h", tree=[]))
    return out


def kept(snaps: list[Snapshot], policy: Policy) -> list[str]:
    return sorted(d.snapshot.id for d in apply_policy(snaps, policy) if d.keep)


def test_keep_last() -> None:
    assert kept(history(3), Policy(last=2)) == ["data-002-2", "data-002-3"]


def test_keep_daily_takes_newest_of_each_day() -> None:
    assert kept(history(10), Policy(daily=3)) == ["data-007-3", "data-008-3", "data-009-3"]


def test_keep_weekly_and_monthly_use_calendar_buckets() -> None:
    snaps = history(70, per_day=1)  # 2026-01-01 .. 2026-03-11
    weekly = kept(snaps, Policy(weekly=2))
    # 2026-03-11 is a Wednesday (ISO week 11); the newest of week 10 is Sunday 2026-03-08.
    assert weekly == ["data-066-0", "data-069-0"]
    monthly = kept(snaps, Policy(monthly=2))
    assert monthly == ["data-058-0", "data-069-0"]  # last of February, newest of March


def test_keep_yearly_and_hourly() -> None:
    snaps = history(2, per_day=4)
    assert kept(snaps, Policy(yearly=5)) == ["data-001-3"]
    assert kept(snaps, Policy(hourly=3)) == ["data-001-1", "data-001-2", "data-001-3"]


def test_keep_within_counts_from_the_clock_not_from_the_newest_snapshot() -> None:
    snaps = history(10, per_day=1)  # 2026-01-01 .. 2026-01-10
    now = datetime(2026, 1, 10, 12, tzinfo=timezone.utc)
    within = Policy(within=parse_duration("2d"))
    assert sorted(d.snapshot.id for d in apply_policy(snaps, within, now) if d.keep) == ["data-008-0", "data-009-0"]
    # Backups stopped long ago: the window is empty, and the newest snapshot is still kept.
    later = now + timedelta(days=100)
    decisions = apply_policy(snaps, within, later)
    assert [(d.snapshot.id, d.reasons) for d in decisions if d.keep] == [("data-009-0", ["newest"])]


def test_future_dated_snapshots_are_kept_flagged_and_take_no_slot() -> None:
    snaps = history(3, per_day=1)
    now = datetime(2026, 1, 3, 12, tzinfo=timezone.utc)
    future = Snapshot(id="future", time="2099-01-01T00:00:00", source="data", source_type="files", run="r", host="h", tree=[])
    decisions = {d.snapshot.id: d for d in apply_policy(snaps + [future], Policy(last=1, within=parse_duration("1d")), now)}
    assert decisions["future"].keep and decisions["future"].reasons == ["future-dated"]
    assert decisions["data-002-0"].keep and decisions["data-002-0"].reasons == ["last", "within"]
    assert not decisions["data-001-0"].keep


def test_rules_combine_and_groups_are_per_source() -> None:
    snaps = history(5, per_day=1) + history(5, per_day=1, source="db")
    result = kept(snaps, Policy(last=1, daily=2))
    assert result == ["data-003-0", "data-004-0", "db-003-0", "db-004-0"]


def test_keep_tags() -> None:
    snaps = history(3, per_day=1)
    snaps[0].tags = ["before-upgrade"]
    assert kept(snaps, Policy(last=1, tags=["before-upgrade"])) == ["data-000-0", "data-002-0"]


@pytest.mark.parametrize("text,minutes", [("7d", 7 * 1440), ("2w3d", 17 * 1440), ("12h", 720), ("1y6M", 365 * 1440 + 180 * 1440)])
def test_parse_duration(text: str, minutes: int) -> None:
    assert parse_duration(text) == timedelta(minutes=minutes)


@pytest.mark.parametrize("text", ["", "7", "d7", "7x", "1d 2h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_forget_and_prune_free_space_and_keep_survivors_restorable(ws: Workspace) -> None:
    import os

    ws.ok("init")
    ids = []
    for i in range(4):
        (ws.data / f"gen{i}.bin").write_bytes(os.urandom(1024 * 1024))
        if i:
            (ws.data / f"gen{i - 1}.bin").unlink()
        ids.append(ws.ok("backup", "--json").json()["snapshots"][0]["id"])
    size = lambda: sum(p.stat().st_size for p in (ws.repo / "data").rglob("*") if p.is_file())  # noqa: E731
    before = size()
    dry = ws.ok("forget", "--keep-last", "1", "--dry-run", "--json").json()
    assert len(dry["removed"]) == 3 and len(ws.ok("snapshots", "--json").json()) == 4
    r = ws.ok("forget", "--keep-last", "1", "--prune", "--json").json()
    assert sorted(x["id"] for x in r["removed"]) == sorted(ids[:3])
    assert r["prune"]["bytes_freed"] > 2 * 1024 * 1024
    assert size() < before - 2 * 1024 * 1024
    ws.ok("verify", "--read-data")
    target = ws.root / "r"
    ws.ok("restore", "latest", "-s", "data", "--target", str(target))
    root = target / str(ws.data).lstrip("/")
    assert (root / "gen3.bin").read_bytes() == (ws.data / "gen3.bin").read_bytes()
    assert not (root / "gen0.bin").exists()


def test_forget_without_policy_is_refused(ws: Workspace) -> None:
    ws.ok("init")
    ws.ok("backup")
    r = ws.run("forget")
    assert r.code == 2 and "refusing" in r.err
    assert len(ws.ok("snapshots", "--json").json()) == 1


def test_prune_drops_a_pack_whose_blobs_all_live_in_other_packs(ws: Workspace) -> None:
    """Two runs can store the same blob (e.g. racing backups); prune removes the copy."""
    from drkit.repository.blob import BLOB_DATA
    from drkit.repository.pack import PackBuilder
    from drkit.repository.repo import Repository
    from drkit.storage import LocalStorage

    ws.ok("init")
    ws.ok("backup")
    repo = Repository.open(LocalStorage(ws.repo), "correct horse battery staple")
    repo.load_index()
    data = (ws.data / "a/text.txt").read_bytes()
    chunk_id = repo.hasher(data)
    assert chunk_id in repo.index
    builder = PackBuilder()
    builder.add(BLOB_DATA, chunk_id, repo.codec.encode(BLOB_DATA, chunk_id, data), len(data))
    pack_id, raw = builder.finish(repo.cipher)
    repo.storage.put(f"data/{pack_id[:2]}/{pack_id}", raw)
    repo.write_index([(pack_id, len(raw), builder.entries)])
    report = ws.ok("prune", "--json").json()
    assert report["packs_deleted"] == 1
    assert not (ws.repo / "data" / pack_id[:2] / pack_id).exists()
    ws.ok("verify", "--read-data")
    target = ws.root / "r"
    ws.ok("restore", "latest", "-s", "data", "--target", str(target))
    assert (target / str(ws.data).lstrip("/") / "a/text.txt").read_bytes() == data


def test_a_backup_through_the_index_cache_after_a_prune_stores_again_what_prune_deleted(
        ws: Workspace, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The cache (drkit/repository/indexcache.py) must never make a backup reuse a blob
    that a prune deleted: the data comes back after a prune, and the backup through the
    cache stores it again (verify reads every blob; restore gives the bytes)."""
    import json
    import os
    import shutil

    cache_dir = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("DRKIT_CACHE_DIR", str(cache_dir))
    ws.ok("init")
    shutil.rmtree(ws.data)
    ws.data.mkdir()
    payload = os.urandom(2 * 1024 * 1024)
    (ws.data / "comes-back.bin").write_bytes(payload)
    ws.ok("backup")
    repo_id = json.loads((ws.repo / "config").read_text())["id"]
    assert [p.name for p in (cache_dir / "index").iterdir()] == [repo_id]
    (ws.data / "comes-back.bin").unlink()
    ws.ok("backup")
    r = ws.ok("forget", "--keep-last", "1", "--prune", "--json").json()
    assert r["prune"]["bytes_freed"] > 1024 * 1024  # its pack is gone
    (ws.data / "comes-back.bin").write_bytes(payload)
    added = ws.ok("backup", "--json").json()["snapshots"][0]["bytes_added"]
    assert added >= len(payload)  # stored again, not taken for indexed
    ws.ok("verify", "--read-data")
    target = ws.root / "restored"
    ws.ok("restore", "latest", "-s", "data", "--target", str(target))
    assert (target / str(ws.data).lstrip("/") / "comes-back.bin").read_bytes() == payload
    cached = next((cache_dir / "index").iterdir())
    stamp = cached.stat().st_mtime_ns
    # --no-cache reads every index file and leaves the cache alone.
    (ws.data / "new.txt").write_text("x")
    ws.ok("backup", "--no-cache")
    assert cached.stat().st_mtime_ns == stamp
