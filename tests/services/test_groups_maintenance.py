"""Format v3 groups (docs/format.md, "Grouped small files (v3)") seen by the commands
that maintain a repository rather than write backups: ``prune`` (a group's stored bytes
count once per pack; the share of its members no snapshot uses, by raw size, is unused;
a repack stores the used members again as ordinary data blobs), ``rebuild-index`` and ``repair`` (the
members come back from the trailers with type 2; a salvage stores them as data blobs),
``copy`` (into version-3 and version-2 repositories, reading each group once rather
than once per member) and ``stats`` (a group's stored bytes counted once for all its
members). Every repository here is built by real backups with the worker processes on,
so the groups are the ones a backup writes, and every check ends in a restore compared
byte for byte (and mode and mtime) with what was backed up."""

from __future__ import annotations

import os
import random
import shutil
import struct
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

import drkit.repository.repo as repo_module
from drkit.repository import layout
from drkit.repository.blob import BLOB_DATA, BLOB_GROUP, BLOB_TREE
from drkit.repository.index import BlobLocation
from drkit.repository.pack import MAGIC_V2, PackEntry
from drkit.repository.repo import Repository
from drkit.repository.saver import RUN_FILE_MAX
from drkit.repository.snapshot import Snapshot
from drkit.repository.tree import iter_tree
from drkit.services.backup import BackupOptions, run_backup
from drkit.services.browse import stats
from drkit.services.copy import copy_snapshots
from drkit.services.prune import PruneFacts, PrunePlan, StoredPack, plan_prune, prune
from drkit.services.repair import repair
from drkit.services.restore import SnapshotReader
from drkit.services.verify import verify_repository
from drkit.sources.files import FilesSource
from drkit.storage import LocalStorage
from tests.repository.test_groups import _put as put_file
from tests.cli import CliResult, invoke

PASSWORD = "groups under maintenance"
PACK_SIZE = 1024 * 1024
"""The smallest pack size a config allows: a few groups to a pack, several packs."""
State = dict[str, tuple[bytes, int, int]]
GroupKey = tuple[str, int, int]
"""(pack id, offset, length): one group, the range its listed members share."""


@pytest.fixture(autouse=True)
def workers_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker processes (which seal groups) start after the first batch of small
    files instead of after 64 (or 8) of them."""
    for module in ("drkit.repository.sealprocs", "drkit.repository.saver"):
        monkeypatch.setattr(f"{module}.MIN_BATCHES", 1)
        monkeypatch.setattr(f"{module}.MIN_NEW_BATCHES", 1)


# -- helpers -------------------------------------------------------------------------


def _init(path: Path, monkeypatch: pytest.MonkeyPatch, version: int = 3) -> Repository:
    """A new repository of format *version* (small packs), opened."""
    with monkeypatch.context() as m:
        if version != repo_module.FORMAT_VERSION:
            m.setattr(repo_module, "FORMAT_VERSION", version)
        Repository.init(LocalStorage(str(path)), PASSWORD, pack_size=PACK_SIZE)
    repo = _open(path)
    assert repo.version == version and repo.writes_groups == (version >= 3)
    return repo


def _open(path: Path) -> Repository:
    repo = Repository.open(LocalStorage(str(path)), PASSWORD)
    repo.load_index()
    return repo


def _backup(repo: Repository, data: Path, source: str = "data") -> Snapshot:
    run = run_backup(repo, [FilesSource(source, FilesSource.Options(paths=[str(data)]))],
                     BackupOptions(env={"DRKIT_BACKUP_PROCESSES": "2"}))
    assert not run.failed and not run.outcomes[0].warnings
    snap: Snapshot = run.snapshots[0]
    return snap


def _put(root: Path, rel: str, data: bytes, *, mode: int | None = None, mtime_ns: int | None = None) -> None:
    put_file(root, rel, data, {}, mode, mtime_ns)


def _small_file(rng: random.Random, d: int, i: int) -> bytes:
    """A unique small file (1.5 to 14 KiB): a third text, the rest random bytes."""
    size = rng.randrange(1500, 14000)
    if i % 3 == 0:
        line = f"dir {d} file {i}: some text that compresses\n".encode()
        return (line * (size // len(line) + 1))[:size]
    return rng.randbytes(size)


def _small_tree(root: Path, dirs: int, per_dir: int, seed: int) -> dict[str, bytes]:
    """*dirs* directories of *per_dir* unique small files each (one run, so one group,
    per directory once the workers read), odd modes and distinct mtimes."""
    rng = random.Random(seed)
    contents: dict[str, bytes] = {}
    for d in range(dirs):
        for i in range(per_dir):
            rel = f"d{d:02d}/f{i:03d}"
            contents[rel] = _small_file(rng, d, i)
            _put(root, rel, contents[rel], mode=0o640 if i % 5 == 0 else None,
                 mtime_ns=1_700_000_000_000_000_000 + d * 1_000_003 + i * 7)
    assert max(map(len, contents.values())) <= RUN_FILE_MAX
    return contents


def _file_state(root: Path) -> State:
    """(content, mode, mtime) of every regular file under *root*, by relative path."""
    out: State = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = (f.read(), st.st_mode, st.st_mtime_ns)
    return out


def _restore(repo: Repository, snap: Snapshot, target: Path, data: Path, processes: int = 0) -> State:
    SnapshotReader(repo, snap, target=target, processes=processes).write_entries(target)
    return _file_state(target / str(data).lstrip("/"))


def _groups(repo: Repository) -> dict[GroupKey, list[bytes]]:
    """The groups the index lists: (pack, offset, length) -> the listed members."""
    groups: dict[GroupKey, list[bytes]] = defaultdict(list)
    for chunk_id, loc in repo.index.items():
        if loc.blob_type == BLOB_GROUP:
            groups[(loc.pack, loc.offset, loc.length)].append(chunk_id)
    return dict(groups)


def _used(repo: Repository, snaps: list[Snapshot]) -> set[bytes]:
    """Every blob *snaps* reference (trees and file chunks)."""
    used: set[bytes] = set()
    for snap in snaps:
        used.update(bytes.fromhex(t) for t in snap.tree)
        for entry in iter_tree(repo, snap):
            used.update(bytes.fromhex(c) for c in entry.chunks)
    return used


def _pack_files(root: Path) -> dict[str, int]:
    """{pack id: size} of the pack files on disk."""
    return {p.name: p.stat().st_size for p in (root / "data").rglob("*") if p.is_file() and not p.name.startswith(".")}


def _verify_clean(path: Path, state: Path) -> None:
    report = verify_repository(_open(path), read_data=True, state_dir=state)
    assert report.ok and not report.problems, report.problems


def _cli(config_dir: Path, repo_path: Path, *args: object) -> CliResult:
    """``drkit -c CONFIG ARGS`` for the repository at *repo_path*."""
    config = config_dir / f"drkit-{repo_path.name}.yaml"
    if not config.exists():
        config.write_text(yaml.safe_dump({"repository": {"url": str(repo_path)}, "sources": []}))
        config.chmod(0o600)
    return invoke("-c", config, *args, env={"DRKIT_PASSWORD": PASSWORD})


# -- prune -----------------------------------------------------------------------------


def _expected_decisions(by_pack: dict[str, list[PackEntry]], used: set[bytes],
                        threshold: float) -> tuple[set[str], set[str], set[str]]:
    """(keep, drop, repack) as docs/format.md says prune decides, with no chunk listed
    twice: a pack's stored bytes are its distinct ranges (a group's once), the unused
    part of a range is the share of its entries' raw bytes that no snapshot uses, and a
    pack is repacked when its unused bytes are at least *threshold* of its stored bytes."""
    keep, drop, repack = set(), set(), set()
    for pack_id, entries in by_pack.items():
        raw: dict[tuple[int, int], list[int]] = {}
        for e in entries:
            sizes = raw.setdefault((e.offset, e.length), [0, 0])
            sizes[1] += e.raw_length or 1
            sizes[0] += (e.raw_length or 1) if e.id in used else 0
        total = sum(length for _, length in raw)
        unused = sum(length * (every - needed) // every for (_, length), (needed, every) in raw.items())
        if unused == 0:
            keep.add(pack_id)
        elif not any(e.id in used for e in entries):
            drop.add(pack_id)
        elif unused / total >= threshold:
            repack.add(pack_id)
        else:
            keep.add(pack_id)
    return keep, drop, repack


def _prune_tree(root: Path) -> dict[str, bytes]:
    """48 directories of 25 small files: one group per directory once the workers
    read, a few groups to a pack."""
    return _small_tree(root, dirs=48, per_dir=25, seed=11)


def _second_state(root: Path) -> None:
    """Delete about half of the files so that, once the first snapshot is forgotten,
    packs of every kind appear (a pack holds about seven groups): directories 0-9 go
    whole (wholly unused groups: packs to drop); 10-23 lose every other file (groups
    still partly used: packs to keep); 24-37 stay (packs all used); 38-47 alternate
    between gone and kept (packs half of whose groups are unused: to repack at a low
    threshold), and three files of d39 change."""
    rng = random.Random(99)
    for d in range(48):
        if d < 10 or (d >= 38 and d % 2 == 0):
            shutil.rmtree(root / f"d{d:02d}")
        elif d < 24:
            for i in range(1, 25, 2):
                (root / f"d{d:02d}/f{i:03d}").unlink()
    for i in (2, 9, 17):
        _put(root, f"d39/f{i:03d}", rng.randbytes(5000 + i), mtime_ns=1_800_000_000_000_000_000 + i)


@pytest.mark.parametrize("threshold", [0.2, None], ids=["repack-threshold-0.2", "default-threshold"])
def test_prune_with_partly_used_groups_keeps_every_used_member_and_restores_exactly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threshold: float | None) -> None:
    """Two snapshots of 1,200 small files (about half deleted and a few changed in the
    second), the first forgotten, then prune. Checked: the plan's keep/drop/repack is the
    one the format's byte accounting gives (a group counted once per pack, its unused
    members' share unused): packs of wholly used groups are kept, wholly unused ones are
    dropped, at 0.2 a pack whose groups are only partly used is repacked (a group
    needed whole while any member is used would keep it at any threshold); the repack
    stores each used member again as a type-0 blob and leaves every kept pack's rows as
    they were; every blob the
    remaining snapshot uses is indexed and reads back; the snapshot restores byte for
    byte with modes and mtimes; ``verify --read-data`` is clean; a second prune finds
    nothing to do. Then, with every snapshot forgotten, prune deletes every pack."""
    data, path = tmp_path / "data", tmp_path / "repo"
    contents = _prune_tree(data)
    repo = _init(path, monkeypatch)
    first = _backup(repo, data)
    groups = _groups(repo)
    members = sum(map(len, groups.values()))
    assert len(groups) >= 30 and members >= 0.9 * len(contents), (len(groups), members)
    packs_with_groups: dict[str, int] = defaultdict(int)
    for pack_id, _, _ in groups:
        packs_with_groups[pack_id] += 1
    assert max(packs_with_groups.values()) >= 3, "several groups to a pack"

    _second_state(data)
    want = _file_state(data)
    assert 0.4 * len(contents) < len(contents) - len(want) < 0.6 * len(contents)
    second = _backup(repo, data)
    repo.delete_snapshot(first.id)

    repo = _open(path)
    used = _used(repo, [second])
    before = dict(repo.index.items())
    assert used <= set(before)
    by_pack = repo.index.entries_by_pack()
    packs_before = set(by_pack)
    sizes_before = _pack_files(path)
    assert set(sizes_before) == packs_before
    args: dict[str, Any] = {} if threshold is None else {"repack_threshold": threshold}
    keep, drop, repack = _expected_decisions(by_pack, used, 0.5 if threshold is None else threshold)
    ranges: dict[str, dict[tuple[int, int], set[bool]]] = {}
    for p, es in by_pack.items():
        for e in es:
            ranges.setdefault(p, {}).setdefault((e.offset, e.length), set()).add(e.id in used)
    partly_used = {p for p, rs in ranges.items() if all(r == {True, False} for r in rs.values())}
    assert partly_used, "a pack whose every group has used and unused members"
    all_used = {p for p, es in by_pack.items() if all(e.id in used for e in es) and any(e.blob_type == BLOB_GROUP for e in es)}
    assert all_used and all_used <= keep, "a pack of groups whose members are all used is kept"
    assert drop, "a pack of wholly unused groups"
    if threshold is not None:
        assert partly_used & repack, "at a low threshold, a pack of only partly used groups is repacked"
        assert any(before[cid].pack in repack and before[cid].blob_type == BLOB_GROUP for cid in used), \
            "the repack stores used group members again"

    plans: list[PrunePlan] = []
    report = prune(repo, on_plan=plans.append, **args)
    (plan,) = plans
    assert (set(plan.keep), set(plan.drop), set(plan.repack)) == (keep, drop, repack)
    assert not plan.orphans and plan.safe
    assert (report.packs_deleted, report.packs_repacked) == (len(drop), len(repack))
    assert report.blobs_used == len(used)
    assert report.bytes_freed == sum(sizes_before[p] for p in drop | repack)

    after_packs = set(_pack_files(path))
    assert not (drop | repack) & after_packs, "dropped and repacked packs are deleted"
    assert keep <= after_packs
    fresh = _open(path)
    after = dict(fresh.index.items())
    assert used <= set(after), "no blob the remaining snapshot uses is lost"
    for cid in used:
        old, new = before[cid], after[cid]
        if old.pack in repack:
            assert new.pack not in packs_before, "a repacked blob sits in a new pack"
            assert new.blob_type == (BLOB_TREE if old.blob_type == BLOB_TREE else BLOB_DATA)
            assert new.raw_length == old.raw_length
        else:
            assert new == old, "a kept pack's rows stay as they were"
    assert any(loc.blob_type == BLOB_GROUP for loc in after.values()), "kept packs keep their groups"
    for cid in used:
        assert fresh.hasher(fresh.read_blob(cid)) == cid
    assert _restore(fresh, fresh.find_snapshot("latest"), tmp_path / "target", data) == want
    _verify_clean(path, tmp_path / "state")

    again: list[PrunePlan] = []
    prune(_open(path), on_plan=again.append, **args)
    assert not again[0].changes_packs, again[0].lines()
    assert set(_pack_files(path)) == after_packs

    # Nothing left to keep: every pack goes, those holding groups too.
    fresh = _open(path)
    for snap in fresh.list_snapshots():
        fresh.delete_snapshot(snap.id)
    report = prune(fresh)
    assert report.packs_deleted == len(after_packs) and not report.packs_repacked
    assert _pack_files(path) == {}
    assert len(_open(path).index) == 0


# Pure plans: the byte accounting on facts built by hand.

_A, _B, _C, _D = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)


def _id(name: str) -> bytes:
    return name.encode().ljust(32, b"_")


def _group(prefix: str, count: int, offset: int, length: int) -> list[PackEntry]:
    """*count* members of one group at (offset, length), 100 bytes each."""
    return [PackEntry(BLOB_GROUP, _id(f"{prefix}{n}"), offset, length, 100) for n in range(count)]


def _blob(name: str, offset: int, length: int, blob_type: int = BLOB_DATA) -> PackEntry:
    return PackEntry(blob_type, _id(name), offset, length, length)


def _facts(indexed: dict[str, list[PackEntry]], used: set[bytes]) -> PruneFacts:
    return PruneFacts(used=used, indexed=indexed, indexed_sizes={p: 10_000 for p in indexed},
                      stored={p: StoredPack(10_000, datetime(2026, 1, 1, tzinfo=timezone.utc)) for p in indexed})


def _plan(facts: PruneFacts, threshold: float = 0.5) -> PrunePlan:
    return plan_prune(facts, now=datetime(2026, 12, 1, tzinfo=timezone.utc), repack_threshold=threshold)


def test_the_plan_counts_a_group_once_and_its_unused_members_as_unused() -> None:
    """plan_prune on hand-built facts: a pack of two groups with one used member each is
    90% unused (its groups counted once each, 9 of 10 members unused), so repacked at
    any threshold up to 0.9; a pack of one fully used group of 10 members and one unused
    blob of the group's size is half unused (repacked at 0.5, kept at 0.6; counted per
    member it would be 1/11); an unused 10-member group beside a used blob three times
    its size is a quarter unused (kept at 0.5, repacked at 0.2); a pack of unused groups
    is dropped. The used and unused counts are per member."""
    g1, g2 = _group("g1-", 10, 8, 1000), _group("g2-", 10, 1008, 1000)
    full, lone = _group("full-", 10, 8, 1000), _blob("lone", 1008, 1000)
    dead, big = _group("dead-", 10, 8, 1000), _blob("big", 1008, 3000)
    gone = _group("gone-", 5, 8, 500) + _group("gone2-", 3, 508, 700)
    used = {g1[3].id, g2[9].id, big.id} | {e.id for e in full}
    facts = _facts({_A: g1 + g2, _B: full + [lone], _C: dead + [big], _D: gone}, used)

    plan = _plan(facts, 0.5)
    assert (plan.keep, plan.drop, sorted(plan.repack)) == ([_C], [_D], sorted([_A, _B]))
    assert (plan.blobs_used, plan.blobs_unused) == (len(used), 20 + 11 + 11 + 8 - len(used))
    assert plan.home == {e.id: p for p, es in facts.indexed.items() for e in es if e.id in used}
    plan = _plan(facts, 0.6)
    assert (sorted(plan.keep), plan.drop, plan.repack) == (sorted([_B, _C]), [_D], [_A])
    plan = _plan(facts, 0.2)
    assert (plan.keep, plan.drop, sorted(plan.repack)) == ([], [_D], sorted([_A, _B, _C]))
    plan = _plan(facts, 0.95)
    assert (sorted(plan.keep), plan.drop, plan.repack) == (sorted([_A, _B, _C]), [_D], [])


def test_a_group_that_duplicates_blobs_elsewhere_is_weighed_by_its_own_bytes() -> None:
    """Two packs hold the same two used chunks: A as one group of 300 bytes, B as two
    blobs of 200 bytes each. The copies that stay go to one pack and the other is
    dropped, the smaller one retired first: A (300 bytes, counted once; 600 if counted
    per member, which would retire B instead). The copies that stay are read first."""
    m0, m1 = _id("m0"), _id("m1")
    a = [PackEntry(BLOB_GROUP, m0, 8, 300, 100), PackEntry(BLOB_GROUP, m1, 8, 300, 100)]
    b = [PackEntry(BLOB_DATA, m0, 8, 200, 100), PackEntry(BLOB_DATA, m1, 208, 200, 100)]
    plan = _plan(_facts({_A: a, _B: b}, {m0, m1}))
    assert (plan.keep, plan.drop, plan.repack) == ([_B], [_A], [])
    assert plan.home == {m0: _B, m1: _B}
    assert plan.check_copies == sorted([(_B, m0), (_B, m1)])


# -- rebuild-index and repair ------------------------------------------------------------


def test_rebuild_index_and_repair_of_a_damaged_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A version-3 repository of 500 small files, two snapshots (the second without the
    files of one group G). ``drkit rebuild-index`` after every index file is deleted
    lists every blob again exactly as before (members with type 2, the group's range,
    their own raw length) and the first snapshot restores exactly. Then one byte inside
    G (in a pack that holds other groups) is flipped and ``repair`` runs: G's members
    are lost, every other blob of that pack (members of intact groups, trees) is
    salvaged into new packs, the members as type-0 data blobs; the damaged pack leaves
    the repository (a copy is kept as evidence); the second snapshot, which used only
    intact members, is untouched and restores exactly; the first is rewritten without
    exactly G's files and restores the rest exactly; ``verify --read-data`` is clean."""
    data, path = tmp_path / "data", tmp_path / "repo"
    contents = _small_tree(data, dirs=20, per_dir=25, seed=23)
    first_state = _file_state(data)
    repo = _init(path, monkeypatch)
    first = _backup(repo, data)

    # rebuild-index from the trailers alone
    indexed = dict(repo.index.items())
    assert sum(loc.blob_type == BLOB_GROUP for loc in indexed.values()) >= 0.8 * len(contents)
    for index_file in (path / "index").iterdir():
        index_file.unlink()
    assert len(_open(path).index) == 0
    r = _cli(tmp_path, path, "rebuild-index")
    assert r.code == 0, r.text
    assert f"indexed {len(indexed)} blobs" in r.out, r.out
    rebuilt = _open(path)
    assert dict(rebuilt.index.items()) == indexed, "every row comes back as it was (members: type 2)"
    assert _restore(rebuilt, first, tmp_path / "rebuilt", data, processes=2) == first_state

    # a second snapshot without the files of one group G, in a pack holding others
    groups = _groups(rebuilt)
    by_pack: dict[str, list[GroupKey]] = defaultdict(list)
    for key in sorted(groups):
        by_pack[key[0]].append(key)
    pack_id = max(by_pack, key=lambda p: (len(by_pack[p]), p))
    assert len(by_pack[pack_id]) >= 3
    g_key = by_pack[pack_id][1]
    g_members = set(groups[g_key])
    g_files = {rel for rel, payload in contents.items() if rebuilt.hasher(payload) in g_members}
    assert len(g_files) == len(g_members) >= 5
    for rel in g_files:
        (data / rel).unlink()
    second_state = _file_state(data)
    second = _backup(rebuilt, data)
    pack_rows = [e for e in rebuilt.index.entries_by_pack()[pack_id]]
    others = [e for e in pack_rows if e.id not in g_members]
    assert any(e.blob_type == BLOB_GROUP for e in others)

    pack_path = path / layout.pack_name(pack_id)
    damaged = bytearray(pack_path.read_bytes())
    damaged[g_key[1] + g_key[2] // 2] ^= 0x04
    pack_path.chmod(0o644)
    pack_path.write_bytes(bytes(damaged))

    evidence = tmp_path / "evidence"
    report = repair(_open(path), evidence_root=evidence)
    assert [d["pack"] for d in report.packs_damaged] == [pack_id]
    assert report.packs_damaged[0]["lost"] == len(g_members)
    assert report.blobs_salvaged == len(others) and report.blobs_lost == len(g_members)
    assert [s["id"] for s in report.snapshots_rewritten] == [first.id]
    assert {p for s in report.snapshots_rewritten for p in s["removed"]} == {str(data / rel) for rel in g_files}
    assert list(evidence.rglob(pack_id))[0].read_bytes() == bytes(damaged)
    assert not pack_path.exists()

    fresh = _open(path)
    assert pack_id not in fresh.index.packs()
    assert not g_members & {cid for cid, _ in fresh.index.items()}, "lost members are no longer indexed"
    for e in others:
        loc = fresh.index.get(e.id)
        assert loc is not None and loc.pack != pack_id
        assert loc.blob_type == (BLOB_TREE if e.blob_type == BLOB_TREE else BLOB_DATA), "salvaged members are data blobs"
        assert loc.raw_length == e.raw_length
    snaps = {s.id: s for s in fresh.list_snapshots()}
    assert second.id in snaps and first.id not in snaps
    assert _restore(fresh, snaps[second.id], tmp_path / "second", data) == second_state
    (repaired,) = [s for s in snaps.values() if s.id != second.id]
    assert repaired.meta["repaired"]["original"] == first.id
    assert _restore(fresh, repaired, tmp_path / "repaired", data, processes=2) == \
        {rel: st for rel, st in first_state.items() if rel not in g_files}
    _verify_clean(path, tmp_path / "state")


# -- copy ------------------------------------------------------------------------------


def _copy_tree(root: Path) -> dict[str, bytes]:
    """600 small files, a larger one, a duplicate and an empty file."""
    contents = _small_tree(root, dirs=24, per_dir=25, seed=31)
    extra = {"big/large.bin": random.Random(3).randbytes(150 * 1024), "big/empty": b"",
             "big/copy-of-d05-f001": contents["d05/f001"]}
    for rel, payload in extra.items():
        _put(root, rel, payload)
    return contents | extra


def test_copy_of_grouped_files_into_version_3_and_version_2_reads_each_group_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A version-3 source of 600 small files in groups is copied into a fresh version-3
    and a fresh version-2 repository. Both copies restore byte for byte (modes, mtimes);
    the version-2 repository holds no type-2 entry, in its index or its pack trailers;
    and the copy reads each group from the source's storage about once (the range
    reads of groups number the groups, not the members; their bytes the groups'
    bytes), not once per file."""
    data, src_path = tmp_path / "data", tmp_path / "src"
    contents = _copy_tree(data)
    want = _file_state(data)
    src = _init(src_path, monkeypatch)
    _backup(src, data)
    groups = _groups(src)
    grouped_files = sum(1 for payload in contents.values() if payload and src.hasher(payload) in
                        {cid for members in groups.values() for cid in members})
    assert grouped_files >= 500 and grouped_files >= 10 * len(groups), (grouped_files, len(groups))
    ranges = {(layout.pack_name(p), o, n) for p, o, n in groups}

    for version in (3, 2):
        dst_path = tmp_path / f"dst-v{version}"
        dst = _init(dst_path, monkeypatch, version=version)
        source = _open(src_path)  # (nothing fetched yet)
        reads: list[tuple[str, int, int | None]] = []
        real_get = source.storage.get

        def counting_get(name: str, offset: int = 0, length: int | None = None,
                         _real: Any = real_get, _reads: list[Any] = reads) -> bytes:
            _reads.append((name, offset, length))
            data: bytes = _real(name, offset, length)
            return data

        monkeypatch.setattr(source.storage, "get", counting_get)
        report = copy_snapshots(source, dst)
        assert [i.status for i in report.items] == ["copied"]
        assert report.items[0].bytes_read == sum(map(len, contents.values()))
        group_reads = [r for r in reads if r in ranges]
        assert {r for r in group_reads} == ranges, "every group is read"
        assert len(group_reads) <= len(groups) + 2, (len(group_reads), len(groups), grouped_files)
        assert sum(n for _, _, n in group_reads if n) <= sum(n for _, _, n in ranges) * 1.1

        copied = _open(dst_path)
        assert copied.version == version
        assert _restore(copied, copied.find_snapshot("latest"), tmp_path / f"target-v{version}", data) == want
        if version == 2:
            assert not any(loc.blob_type == BLOB_GROUP for _, loc in copied.index.items())
            for pack_id in copied.index.packs():
                trailer = copied.pack_entries(pack_id, copied.read_pack(pack_id))
                assert all(e.blob_type in (BLOB_DATA, BLOB_TREE) for e in trailer)
        _verify_clean(dst_path, tmp_path / f"state-v{version}")


# -- stats -----------------------------------------------------------------------------


def _stored_in_packs(path: Path) -> int:
    """The bytes of every pack file that blobs and groups occupy (without the magic,
    the sealed trailer and its length)."""
    total = 0
    for pack in (path / "data").rglob("*"):
        if pack.is_file() and not pack.name.startswith("."):
            raw = pack.read_bytes()
            assert raw.startswith(MAGIC_V2)
            total += len(raw) - len(MAGIC_V2) - 4 - struct.unpack_from("<I", raw, len(raw) - 4)[0]
    return total


def _distinct_ranges(locs: list[BlobLocation]) -> int:
    return sum(n for _, _, n in {(loc.pack, loc.offset, loc.length) for loc in locs})


def test_stats_counts_a_groups_bytes_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``drkit stats --json`` (and the service behind it) on a version-3 repository of
    two sources -- 360 small files with duplicates and larger files, and a second source
    of copies of a third of them: ``stored`` in total equals the bytes the packs' blobs
    and groups occupy on disk (each group once; counted per member it would be several
    times more), per source the distinct ranges its blobs occupy; ``raw`` is the sum of
    the files' sizes; ``deduplicated`` the sum of the distinct contents' sizes and the
    trees'."""
    data, half, path = tmp_path / "data", tmp_path / "half", tmp_path / "repo"
    contents = _small_tree(data, dirs=12, per_dir=30, seed=41)
    rng = random.Random(5)
    extra = {"large/a": rng.randbytes(100 * 1024), "large/b": rng.randbytes(200 * 1024),
             "dup/same-as-d01-f002": contents["d01/f002"], "dup/empty": b""}
    extra["large/a-copy"] = extra["large/a"]
    for rel, payload in extra.items():
        _put(data, rel, payload)
    contents |= extra
    copies = {rel: payload for rel, payload in contents.items() if rel.startswith(("d06/", "d07/", "d08/", "d09/"))}
    for rel, payload in copies.items():
        _put(half, rel, payload)
    repo = _init(path, monkeypatch)
    snaps = [_backup(repo, data), _backup(repo, half, "half")]
    assert len(_groups(repo)) >= 8

    repo = _open(path)
    per, total = stats(repo, repo.list_snapshots())
    r = _cli(tmp_path, path, "stats", "--json")
    assert r.code == 0, r.text
    assert r.json() == {"sources": {k: v.to_json() for k, v in sorted(per.items())}, "total": total.to_json()}

    index = dict(repo.index.items())
    trees = {name: {bytes.fromhex(t) for t in snap.tree} for name, snap in zip(("data", "half"), snaps, strict=True)}
    for name, files in (("data", contents), ("half", copies)):
        s = per[name]
        ids = trees[name] | {repo.hasher(p) for p in files.values() if p}
        assert (s.snapshots, s.files) == (1, len(files))
        assert s.raw == sum(map(len, files.values()))
        assert s.deduplicated == sum(len(p) for p in set(files.values())) + sum(index[t].raw_length for t in trees[name])
        assert s.blobs == len(ids)
        assert s.stored == _distinct_ranges([index[cid] for cid in ids])
    members = [loc for loc in index.values() if loc.blob_type == BLOB_GROUP]
    assert members and per["half"].stored < sum(loc.length for cid, loc in index.items() if cid in
                                                {repo.hasher(p) for p in copies.values()}) / 5
    on_disk = _stored_in_packs(path)
    assert total.stored == on_disk, (total.stored, on_disk)
    assert total.stored <= sum(_pack_files(path).values()) <= 1.05 * total.stored
    assert sum(loc.length for loc in index.values()) > 5 * on_disk, "counted per member it would be far more"
    assert total.raw == per["data"].raw + per["half"].raw
    assert total.deduplicated == sum(loc.raw_length for loc in index.values())
    assert total.blobs == len(index)


# -- restore windows ---------------------------------------------------------------------


WINDOW = 1024 * 1024


def test_a_restore_window_counts_a_groups_bytes_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restore plans files in windows of at most ``window_bytes`` stored bytes and
    reads each window's blobs from a pack in a few merged range reads. 600 grouped
    small files (about 2.6 MB stored) restored with 1 MiB windows: a group counts once in
    its window, so the restore takes a few windows and a few dozen pack reads (counted
    once per member, each member would weigh its whole group and a window would close
    after a dozen files: hundreds of reads); the files come back exactly."""
    data, path = tmp_path / "data", tmp_path / "repo"
    _small_tree(data, dirs=24, per_dir=25, seed=47)
    want = _file_state(data)
    repo = _init(path, monkeypatch)
    snap = _backup(repo, data)
    groups = _groups(repo)
    stored = sum(n for _, _, n in groups)
    assert len(groups) >= 20 and stored > 2 * WINDOW

    reader = _open(path)
    reads: list[tuple[str, int, int | None]] = []
    real_get = reader.storage.get

    def counting_get(name: str, offset: int = 0, length: int | None = None) -> bytes:
        if name.startswith("data/") and length is not None:
            reads.append((name, offset, length))
        data: bytes = real_get(name, offset, length)
        return data

    monkeypatch.setattr(reader.storage, "get", counting_get)
    target = tmp_path / "target"
    SnapshotReader(reader, snap, target=target, processes=0, window_bytes=WINDOW).write_entries(target)
    assert _file_state(target / str(data).lstrip("/")) == want
    packs = len(reader.index.packs())
    assert len(reads) <= 4 * packs + len(snap.tree) + 8, (len(reads), packs, len(groups))
    assert sum(n for _, _, n in reads if n) <= 1.5 * sum(_pack_files(path).values())
