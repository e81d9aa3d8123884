"""Repair: make a damaged repository sound again, losing only what is really lost.

restic's ``repair index``, ``repair packs`` and ``repair snapshots`` in one command,
split like prune into a plan (read-only, printable) and its execution:

- **plan** (:func:`plan_repair`): read every stored pack, check it against its SHA-256
  name, parse its trailer and decrypt, decompress and hash-check every blob. A pack
  with any failure is *damaged*; each of its blobs that still decodes (AES-GCM
  authenticates it, its keyed hash matches) is *salvageable*; a blob referenced by a
  snapshot that is neither in an intact pack nor salvageable is *lost*. Snapshots that
  reference a lost blob are *affected*, with the paths that go.
- **execute** (:func:`execute_repair`), under an exclusive lock, in an order where a
  crash at any step leaves a repository that is no worse than before and a re-run
  that finishes the job:

  1. copy every damaged pack aside to a local evidence directory (nothing is deleted
     before its copy is on disk);
  2. store the salvaged blobs in new packs;
  3. write one index of the intact and new packs (built from their trailers), which
     supersedes every older index file, then delete those: lost blobs are no longer
     indexed, so the next backup stores that content afresh;
  4. rewrite each affected snapshot without the files (or tree parts) whose data is
     lost, marked ``meta.repaired`` (``drkit snapshots`` shows ``[repaired]``), then
     delete the old manifest;
  5. delete the damaged packs from the repository (prune's retention guard: what the
     store still retains stays, unindexed, until a later prune; every deletion checks
     that our exclusive lock still holds).

Afterwards ``drkit verify --read-data`` finds nothing: every indexed pack is intact
and every blob a snapshot references is indexed. Data no snapshot references any more
is left to ``drkit prune``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from drkit.errors import DrkitError, IdentityRequired, IntegrityError, ObjectNotFound
from drkit.repository import layout
from drkit.repository.blob import BLOB_TREE, BlobError, saved_type
from drkit.repository.index import Index
from drkit.repository.pack import PackEntry, blob_views
from drkit.repository.repo import Repository
from drkit.repository.saver import BlobSaver
from drkit.repository.snapshot import Snapshot, now_iso
from drkit.repository.tree import FILE, Entry, encode_entries
from drkit.services.prune import RetentionGuard, utc_now
from drkit.storage.base import retention_of

log = logging.getLogger("drkit.repair")

REMOVED_PATHS_KEPT = 100
"""How many removed paths a repaired manifest lists (the count is always exact)."""


@dataclass
class DamagedPack:
    pack_id: str
    detail: str
    salvageable: list[PackEntry] = field(default_factory=list)
    lost: list[PackEntry] = field(default_factory=list)
    stored: bool = True
    """False when the pack is indexed but missing from storage."""


@dataclass
class AffectedSnapshot:
    snapshot: Snapshot
    removed: list[str] = field(default_factory=list)
    """Paths of entries that go (their data is lost)."""
    lost_tree_blobs: int = 0
    kept: list[Entry] = field(default_factory=list)


@dataclass
class RepairPlan:
    intact: list[tuple[str, int, list[PackEntry]]] = field(default_factory=list)
    damaged: list[DamagedPack] = field(default_factory=list)
    lost: set[bytes] = field(default_factory=set)
    affected: list[AffectedSnapshot] = field(default_factory=list)
    index_files: list[str] = field(default_factory=list)
    damaged_index_files: list[str] = field(default_factory=list)

    @property
    def needed(self) -> bool:
        """True when executing would change anything."""
        return bool(self.damaged or self.affected or self.damaged_index_files)


@dataclass
class RepairReport:
    dry_run: bool
    packs_damaged: list[dict[str, Any]] = field(default_factory=list)
    blobs_salvaged: int = 0
    blobs_lost: int = 0
    snapshots_rewritten: list[dict[str, Any]] = field(default_factory=list)
    index_files_replaced: int = 0
    evidence_dir: str | None = None
    kept_under_retention: list[str] = field(default_factory=list)
    """Objects left in place because the store still retains them (a later prune removes them)."""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def plan_repair(repo: Repository, *, on_pack: Callable[[int], None] | None = None) -> RepairPlan:
    """Read everything and decide what repair would do; changes nothing.

    Call under a lock. Raises IdentityRequired on a recipient-mode backup host (blobs
    cannot be checked there)."""
    if not repo.can_read_content:
        raise IdentityRequired()
    plan = RepairPlan()
    repo.load_index(on_error=lambda name, detail: plan.damaged_index_files.append(name))
    plan.index_files = sorted(repo.index.files | repo.superseded_index_files)
    indexed = repo.index.entries_by_pack()
    stored: set[str] = set()
    intact_blobs: set[bytes] = set()
    for info in repo.storage.list(layout.DATA):
        pack_id = layout.id_of(info.name)
        if pack_id is None:
            continue
        stored.add(pack_id)
        try:
            data = repo.storage.get(info.name)
        except ObjectNotFound:
            continue
        damaged = _check_pack(repo, pack_id, data, indexed.get(pack_id, []))
        if damaged is None:
            entries = repo.pack_entries(pack_id, data)
            plan.intact.append((pack_id, len(data), entries))
            intact_blobs.update(e.id for e in entries)
        else:
            plan.damaged.append(damaged)
        if on_pack:
            on_pack(len(data))
    for pack_id, entries in indexed.items():
        if pack_id not in stored:
            plan.damaged.append(DamagedPack(pack_id, "pack is missing", lost=list(entries), stored=False))
    salvaged = {e.id for d in plan.damaged for e in d.salvageable}
    available = intact_blobs | salvaged
    # Trees are read from what is sound: intact packs, then salvageable blobs in place.
    readable = Index()
    for pack_id, size, entries in plan.intact:
        readable.add_pack(pack_id, size, entries)
    for d in plan.damaged:
        if d.stored and d.salvageable:
            readable.add_pack(d.pack_id, 0, d.salvageable)
    readable.files = repo.index.files
    repo.index = readable
    for snap in repo.list_snapshots(on_error=lambda name, detail: log.warning("damaged manifest %s: %s", name, detail)):
        affected = _check_snapshot(repo, snap, available)
        if affected is not None:
            plan.affected.append(affected)
    plan.lost = {e.id for d in plan.damaged for e in d.lost if e.id not in available}
    return plan


def _check_pack(repo: Repository, pack_id: str, data: bytes, indexed: list[PackEntry]) -> DamagedPack | None:
    """None when the pack is intact; else which of its blobs still decode."""
    problems: list[str] = []
    if hashlib.sha256(data).hexdigest() != pack_id:
        problems.append("content does not match its name (SHA-256)")
    try:
        entries = repo.pack_entries(pack_id, data)
    except IntegrityError as exc:
        problems.append(str(exc.fields.get("detail", exc)))
        entries = []
    candidates = {e.id: e for e in indexed}
    candidates.update({e.id: e for e in entries})  # the trailer wins where both exist
    good: list[PackEntry] = []
    bad: list[PackEntry] = []
    for e, sealed in blob_views(data, sorted(candidates.values(), key=lambda e: e.offset)):
        try:
            if e.offset + e.length > len(data):
                raise BlobError("outside the pack")
            repo.codec.decode(e.blob_type, e.id, sealed)
            good.append(e)
        except BlobError as exc:
            bad.append(e)
            problems.append(f"blob {e.id.hex()[:16]}: {exc}")
    if not problems:
        return None
    return DamagedPack(pack_id, "; ".join(dict.fromkeys(problems)), salvageable=good, lost=bad)


def _check_snapshot(repo: Repository, snap: Snapshot, available: set[bytes]) -> AffectedSnapshot | None:
    """None when every blob *snap* references is available; else what stays and what goes."""
    tree_ids = [bytes.fromhex(t) for t in snap.tree]
    lost_trees = sum(1 for t in tree_ids if t not in available)
    chunks: list[bytes | None] = []
    for t in tree_ids:
        if t not in available:
            chunks.append(None)
            continue
        try:
            chunks.append(repo.read_blob(t))
        except DrkitError:
            chunks.append(None)
            lost_trees += 1
    out = AffectedSnapshot(snap, lost_tree_blobs=lost_trees)
    for entry in _salvage_entries(chunks):
        if entry.type == FILE and any(bytes.fromhex(c) not in available for c in entry.chunks):
            out.removed.append(entry.path)
        else:
            out.kept.append(entry)
    if not out.removed and not lost_trees:
        return None
    return out


def _salvage_entries(chunks: Iterable[bytes | None]) -> Iterator[Entry]:
    """Entries from tree chunks where some are lost (None): every line that still
    parses as a whole entry is kept; fragments cut by a lost chunk are dropped (an
    entry is one JSON object, so a fragment never parses as one)."""
    pending = b""
    for chunk in chunks:
        if chunk is None:
            entry = _parse(pending)
            if entry is not None:
                yield entry
            pending = b""
            continue
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            entry = _parse(line)
            if entry is not None:
                yield entry
    entry = _parse(pending)
    if entry is not None:
        yield entry


def _parse(line: bytes) -> Entry | None:
    if not line.strip():
        return None
    try:
        entry = Entry.from_json(line.decode("ascii"))
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        return None
    return entry if isinstance(entry.path, str) and entry.path else None


def default_evidence_root(env: dict[str, str] | Any) -> Path:
    """Where damaged packs are kept: $XDG_STATE_HOME/drkit/repair, else
    ~/.local/state/drkit/repair."""
    state = env.get("XDG_STATE_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".local", "state")
    return Path(state) / "drkit" / "repair"


def execute_repair(
    repo: Repository,
    plan: RepairPlan,
    evidence_root: Path,
    *,
    workers: int = 0,
) -> RepairReport:
    """Carry out *plan* (see the module docstring for the order). Call under an
    exclusive lock, with the index *plan_repair* loaded. Raises StorageError, OSError
    (evidence directory not writable: then nothing in the repository was changed)."""
    report = _describe(plan, dry_run=False)
    if not plan.needed:
        return report
    guard = RetentionGuard(retention_of(repo.storage), utc_now())
    # 1. evidence first
    to_delete = [d for d in plan.damaged if d.stored]
    if to_delete:
        evidence = evidence_root / f"{str(repo.config.get('id', 'repo'))[:8]}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
        evidence.mkdir(parents=True, exist_ok=True)
        os.chmod(evidence, 0o700)
        for d in to_delete:
            _keep_copy(repo, d, evidence)
        report.evidence_dir = str(evidence)
    # 2. salvage into new packs, with only intact packs indexed
    intact = Index()
    for pack_id, size, entries in plan.intact:
        intact.add_pack(pack_id, size, entries)
    repo.index = intact
    new_packs: list[tuple[str, int, list[PackEntry]]] = []
    salvage = [d for d in to_delete if d.salvageable]
    if salvage:
        saver = BlobSaver(repo, workers=workers, index_every_packs=10**9)
        with saver:
            for d in salvage:
                data = repo.storage.get(layout.pack_name(d.pack_id))
                for e, sealed in blob_views(data, d.salvageable):
                    if saver.known(e.id):
                        continue
                    plain = repo.codec.decode(e.blob_type, e.id, sealed)
                    saver.save(plain, saved_type(e.blob_type))
                    report.blobs_salvaged += 1
        interim = set(repo.index.files)
        new_packs = [(p, repo.index.pack_sizes[p], entries) for p, entries in repo.index.entries_by_pack().items()
                     if p not in {i[0] for i in plan.intact}]
    else:
        interim = set()
    # 3. one index for what is sound; older files go
    everything = list(plan.intact) + new_packs
    replaced = sorted(set(plan.index_files) | {layout.id_of(n) or "" for n in plan.damaged_index_files} | interim)
    replaced = [i for i in replaced if i]
    new_id = repo.write_index(everything, supersedes=replaced)
    repo.index.files = {new_id}
    for index_id in replaced:
        if index_id != new_id:
            _delete(repo, guard, layout.index_name(index_id), report)
    report.index_files_replaced = len([i for i in replaced if i != new_id])
    # 4. snapshots without what is lost
    rewritten = []
    with BlobSaver(repo, workers=workers) as saver:
        for a in plan.affected:
            rewritten.append((a, _rewrite_tree(repo, saver, a)))
    for a, (tree, size) in rewritten:
        new = _repaired_manifest(a, tree, size)
        repo.save_snapshot(new)
        repo.delete_snapshot(a.snapshot.id)
        for row in report.snapshots_rewritten:
            if row["id"] == a.snapshot.id:
                row["new_id"] = new.id
    # 5. the damaged packs leave the repository
    for d in to_delete:
        _delete(repo, guard, layout.pack_name(d.pack_id), report)
    return report


def _keep_copy(repo: Repository, d: DamagedPack, evidence: Path) -> None:
    """Write the damaged pack's bytes (as stored) under *evidence*, fsynced."""
    data = repo.storage.get(layout.pack_name(d.pack_id))
    path = evidence / d.pack_id
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    (evidence / f"{d.pack_id}.txt").write_text(d.detail + "\n")


def _delete(repo: Repository, guard: RetentionGuard, name: str, report: RepairReport) -> None:
    """Delete *name* unless the store still retains it (S3 Object Lock: prune's guard;
    it then stays, unindexed, and a later prune removes it). Checks our lock first."""
    if guard.retained(name):
        report.kept_under_retention.append(name)
        return
    repo.check_locks()
    try:
        repo.storage.delete(name)
    except ObjectNotFound:
        pass


def _rewrite_tree(repo: Repository, saver: BlobSaver, a: AffectedSnapshot) -> tuple[list[str], int]:
    """Store the kept entries as a new tree; returns (tree blob ids, total file size)."""
    import io

    buf = io.BytesIO(b"".join(encode_entries(a.kept)))
    from drkit.repository.chunker import cut_blocks

    ids = []
    for data in cut_blocks(repo.chunker(), buf):
        chunk_id, _ = saver.save(data, BLOB_TREE)
        ids.append(chunk_id.hex())
    return ids, sum(e.size for e in a.kept if e.type == FILE)


def _repaired_manifest(a: AffectedSnapshot, tree: list[str], size: int) -> Snapshot:
    old = a.snapshot
    stats = dict(old.stats)
    stats.update(entries=len(a.kept), size=size)
    meta = dict(old.meta)
    meta["repaired"] = {
        "time": now_iso(),
        "original": old.id,
        "removed_count": len(a.removed),
        "removed": a.removed[:REMOVED_PATHS_KEPT],
        "lost_tree_blobs": a.lost_tree_blobs,
    }
    return old.rewritten(tree=tree, stats=stats, meta=meta, parent=old.parent)


def _describe(plan: RepairPlan, *, dry_run: bool) -> RepairReport:
    report = RepairReport(dry_run=dry_run)
    report.packs_damaged = [
        {"pack": d.pack_id, "detail": d.detail, "salvageable": len(d.salvageable), "lost": len(d.lost), "stored": d.stored}
        for d in plan.damaged
    ]
    report.blobs_salvaged = sum(len(d.salvageable) for d in plan.damaged) if dry_run else 0
    report.blobs_lost = len(plan.lost)
    report.snapshots_rewritten = [
        {"id": a.snapshot.id, "short_id": a.snapshot.short_id, "source": a.snapshot.source,
         "removed": a.removed, "lost_tree_blobs": a.lost_tree_blobs}
        for a in plan.affected
    ]
    report.index_files_replaced = len(plan.index_files) if dry_run else 0
    return report


def repair(
    repo: Repository,
    *,
    evidence_root: Path,
    dry_run: bool = False,
    workers: int = 0,
    on_pack: Callable[[int], None] | None = None,
) -> RepairReport:
    """Plan and (unless *dry_run*) execute a repair under an exclusive lock.
    Idempotent: on a sound repository it changes nothing."""
    with repo.lock_for("repair"):
        plan = plan_repair(repo, on_pack=on_pack)
        if dry_run:
            return _describe(plan, dry_run=True)
        return execute_repair(repo, plan, evidence_root, workers=workers)
