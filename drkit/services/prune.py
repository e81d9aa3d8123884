"""Prune: delete data no snapshot references, and repack mostly-empty packs.

Prune is a pure plan, then its execution (restic's ``PlanPrune`` / ``Execute``):

- :func:`gather` reads what the repository holds (under the caller's exclusive lock):
  the blobs the snapshots use, every indexed pack with its entries, every stored pack
  with its size and the store's write time, and the packs that still-stored superseded
  index files list;
- :func:`plan_prune` is a pure function of those facts (and of the clock, the object
  names that may not be deleted, and the copies found unreadable): which packs to keep,
  drop and repack, which unindexed packs ("orphans") to delete and which are too young
  to, and which copies must be read before anything is deleted. It is printable
  (:meth:`PrunePlan.lines`, ``prune --dry-run``) and tested from tables;
- :func:`make_plan` asks the store what :func:`plan_prune` needs to know (retention,
  whether the copies that stay are readable) and plans again with the answers;
- :func:`execute` carries out a safe plan; :func:`prune` does it all under the lock.

What a hostile writer or storage operator cannot make prune do (issue #15):

1. **delete data a snapshot uses**: every blob the remaining snapshots use (their trees
   and file chunks) must be in an indexed, stored pack, or prune refuses before deleting
   anything (:class:`~drkit.errors.UnsafeToPrune`; ``rebuild-index`` then re-reads the
   packs themselves). An index file whose ``supersedes`` list hides the real index
   files therefore makes prune refuse, not delete.
2. **delete the last good copy**: a pack is dropped or repacked while another pack
   holds a copy of one of its used blobs only after that other copy has been read and
   checked (decrypted, decompressed, id verified); an unreadable copy does not count,
   and the plan is made again without it.
3. **delete a pack a concurrent writer has just uploaded**: a stored pack no index lists
   is deleted only when the store says it was written more than :data:`ORPHAN_GRACE`
   ago (unknown age: kept), and never while a still-stored superseded index file lists it.
4. **forget what it could not read**: a manifest or tree that cannot be read stops
   prune (:class:`~drkit.errors.DamageFound`).

Execution order, so that a crash at any step leaves every snapshot restorable:
write the repacked blobs into new packs, then one index covering every kept and new
pack, superseding every older index file; only then delete the old index files, then
the dropped and repacked packs and the old orphans.

**Immutable storage** (a :class:`~drkit.storage.base.RetentionAware` backend with its
retention on, i.e. S3 Object Lock): an object whose retention date is still ahead is
never deleted. A pack to drop or repack is kept as it is (still indexed, so nothing is
uploaded twice) and a later prune drops it once its retention has passed; a superseded
index file stays (``Repository.load_index`` skips superseded files), as does the interim
index file a repack writes. Prune still succeeds and reports how many objects it kept
because they were locked. A partly used pack under retention is not repacked: it is
kept (and extended) whole while it holds a live blob.
Then (kopia's approach) every object still referenced -- config, key slots, snapshot
manifests, index files in use and every pack holding a used blob -- whose retention
ends within ``days / 2`` gets its retention extended to ``now + days``. So as long as
prune runs at least every ``days / 2``, no live object is ever unprotected, while
unreferenced ones are left to expire.

Stale temporaries (old multipart uploads on S3, ``.tmp-*`` files on SFTP and local
disks) are removed at the end when the backend offers ``remove_stale_temporaries``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from drkit.errors import DamageFound, DrkitError, IntegrityError, ObjectNotFound, Refused, UnsafeToPrune
from drkit.repository import layout
from drkit.repository.blob import BlobError, saved_type
from drkit.repository.index import Index
from drkit.repository.pack import PackEntry, blob_views
from drkit.repository.repo import Repository
from drkit.repository.saver import BlobSaver
from drkit.repository.tree import iter_tree
from drkit.storage.base import RetentionAware, retention_of
from drkit.storage.observe import unwrap

log = logging.getLogger("drkit.prune")

RETENTION_WORKERS = 8
"""Parallel HeadObject/PutObjectRetention requests when checking retention."""


@dataclass
class PruneReport:
    packs_before: int = 0
    packs_deleted: int = 0
    packs_repacked: int = 0
    orphans_deleted: int = 0
    orphans_kept_young: int = 0
    """Unindexed packs kept: written within the grace period (a backup may be running)."""
    orphans_kept_listed: int = 0
    """Unindexed packs kept: a still-stored superseded index file lists them."""
    bytes_freed: int = 0
    blobs_used: int = 0
    blobs_unused: int = 0
    kept_locked: int = 0
    """Objects (packs, index files) prune would have deleted but kept: under retention."""
    retention_extended: int = 0
    """Referenced objects whose retention was (or, dry run, would be) extended."""
    temporaries_removed: int = 0
    dry_run: bool = False

    def to_json(self) -> dict[str, object]:
        return self.__dict__.copy()


def used_blobs(repo: Repository) -> set[bytes]:
    """Every blob referenced by a snapshot; raises DamageFound if one is unreadable.

    Snapshots with the same tree (the same list of tree blobs: a source that did not
    change) name the same blobs, so each tree is read once; a damaged one is reported
    for every snapshot that has it."""
    problems: list[str] = []
    snaps = repo.list_snapshots(on_error=lambda name, detail: problems.append(f"{name}: {detail}"))
    used: set[bytes] = set()
    read: dict[tuple[str, ...], str | None] = {}  # tree -> why it could not be read (None: it was)
    for snap in snaps:
        tree = tuple(snap.tree)
        if tree not in read:
            read[tree] = None
            used.update(bytes.fromhex(t) for t in tree)
            try:
                for entry in iter_tree(repo, snap):
                    used.update(bytes.fromhex(c) for c in entry.chunks)
            except DrkitError as exc:
                read[tree] = str(exc)
        why = read[tree]
        if why is not None:
            problems.append(f"snapshot {snap.short_id}: {why}")
    if problems:
        raise DamageFound(
            count=len(problems),
            hint="prune needs every snapshot readable: run 'drkit verify', then 'drkit forget' the damaged snapshots ("
            + "; ".join(problems[:3])
            + ")",
        )
    return used


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class RetentionGuard:
    """Retention dates of objects (HeadObject), fetched in parallel and cached.

    ``storage`` is None when the repository has no retention: then nothing is retained
    and nothing is extended.
    """

    storage: RetentionAware | None
    now: datetime
    _until: dict[str, datetime | None] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)
    locked: set[str] = field(default_factory=set)

    def prefetch(self, names: list[str]) -> None:
        todo = [n for n in dict.fromkeys(names) if n not in self._until]
        if self.storage is None or not todo:
            return
        with ThreadPoolExecutor(RETENTION_WORKERS, thread_name_prefix="drkit-retention") as pool:
            for name, until in zip(todo, pool.map(self._fetch, todo), strict=True):
                self._until[name] = until

    def _fetch(self, name: str) -> datetime | None:
        assert self.storage is not None
        try:
            return self.storage.retained_until(name)
        except ObjectNotFound:
            self.missing.add(name)
            return None

    def until(self, name: str) -> datetime | None:
        if self.storage is None:
            return None
        if name not in self._until:
            self._until[name] = self._fetch(name)
        return self._until[name]

    def retained(self, name: str) -> bool:
        """True (and remembered in ``locked``) if *name* may not be deleted yet."""
        until = self.until(name)
        if until is not None and until > self.now:
            self.locked.add(name)
            return True
        return False

    def extend(self, names: list[str], *, dry_run: bool) -> int:
        """Extend to ``now + days`` every one of *names* whose retention ends within
        ``days / 2`` (or that has none). Returns how many were (or would be) extended."""
        if self.storage is None:
            return 0
        retention = self.storage.retention
        assert retention is not None
        target = self.now + timedelta(days=retention.days)
        horizon = self.now + timedelta(days=retention.days) / 2
        self.prefetch(names)
        due = [n for n in dict.fromkeys(names) if n not in self.missing and (self._until.get(n) or self.now) < horizon]
        if not dry_run and due:
            storage = self.storage
            with ThreadPoolExecutor(RETENTION_WORKERS, thread_name_prefix="drkit-retention") as pool:
                list(pool.map(lambda n: storage.extend_retention(n, target), due))
            for name in due:
                self._until[name] = target
        return len(due)


ORPHAN_GRACE = timedelta(hours=24)
"""A stored pack no index lists is deleted only once the store has held it this long:
a backup on another host may have uploaded it and not yet written its index."""

CopyRef = tuple[str, bytes]
"""(pack id, blob id): one stored copy of a blob."""


@dataclass(frozen=True)
class StoredPack:
    size: int
    mtime: datetime | None = None
    """When the store wrote it (its own clock); None when the backend cannot tell."""


@dataclass
class PruneFacts:
    """What :func:`gather` read; everything :func:`plan_prune` decides from."""

    used: set[bytes]
    indexed: dict[str, list[PackEntry]]
    """Pack id -> every blob the effective index files list in it (duplicates included)."""
    indexed_sizes: dict[str, int]
    stored: dict[str, StoredPack]
    index_files: list[str] = field(default_factory=list)
    superseded_files: list[str] = field(default_factory=list)
    listed_by_superseded: set[str] = field(default_factory=set)
    """Packs a still-stored superseded index file lists."""
    current: dict[bytes, str] = field(default_factory=dict)
    """The loaded index's location of each blob (preferred among good copies)."""


@dataclass
class PrunePlan:
    """What prune will do; printable (:meth:`lines`) and free of side effects."""

    keep: list[str] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)
    repack: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    """Unindexed stored packs older than the grace period: deleted."""
    young_orphans: list[str] = field(default_factory=list)
    """Unindexed stored packs within the grace period (or of unknown age): kept."""
    held_orphans: list[str] = field(default_factory=list)
    """Unindexed stored packs a superseded index file still lists: kept."""
    locked: list[str] = field(default_factory=list)
    """Object names prune would delete but may not yet (retention, or a caller's veto)."""
    unindexed: list[bytes] = field(default_factory=list)
    """Used blobs no index file lists: the plan is unsafe (prune refuses)."""
    missing: list[bytes] = field(default_factory=list)
    """Used blobs indexed only in packs that are gone or copies that are unreadable:
    the plan is unsafe too."""
    vetoed: frozenset[str] = frozenset()
    """Every object name the plan was told may not be deleted."""
    home: dict[bytes, str] = field(default_factory=dict)
    """For every used blob, the pack whose copy stays."""
    check_copies: list[CopyRef] = field(default_factory=list)
    """Copies to read and check before deleting a pack holding another copy."""
    remove_superseded: list[str] = field(default_factory=list)
    """Superseded index files that can go even when no pack is deleted."""
    blobs_used: int = 0
    blobs_unused: int = 0
    bytes_freed: int = 0

    @property
    def safe(self) -> bool:
        return not self.unindexed and not self.missing

    def refusal(self) -> str:
        """Why the plan is unsafe, in one line ('' when it is safe)."""
        if self.unindexed:
            return (f"{len(self.unindexed)} blob(s) that snapshots use are in no index "
                    f"(first: {self.unindexed[0].hex()[:16]}); refusing to delete anything")
        if self.missing:
            return (f"{len(self.missing)} blob(s) that snapshots use are indexed only in missing packs or unreadable copies "
                    f"(first: {self.missing[0].hex()[:16]}); refusing to delete anything")
        return ""

    @property
    def changes_packs(self) -> bool:
        return bool(self.drop or self.repack or self.orphans)

    def lines(self) -> list[str]:
        """The plan as human lines (what ``prune --dry-run`` prints)."""
        out: list[str] = []
        for what, packs in (("drop", self.drop), ("repack", self.repack), ("delete orphan", self.orphans)):
            out += [f"{what:<14} {layout.pack_name(p)}" for p in sorted(packs)]
        out += [f"{'keep (young)':<14} {layout.pack_name(p)}: not indexed yet, within the grace period" for p in sorted(self.young_orphans)]
        out += [f"{'keep (listed)':<14} {layout.pack_name(p)}: listed by a superseded index file" for p in sorted(self.held_orphans)]
        out += [f"{'keep (locked)':<14} {name}: under retention" for name in sorted(self.locked)]
        out += [f"{'check copy':<14} blob {blob.hex()[:16]} in {layout.pack_name(pack)}" for pack, blob in self.check_copies]
        out += [f"{'unindexed':<14} blob {blob.hex()}: used by a snapshot, in no index file" for blob in self.unindexed]
        out += [f"{'missing':<14} blob {blob.hex()}: used by a snapshot, only in missing packs or unreadable copies" for blob in self.missing]
        out.append(
            f"plan: keep {len(self.keep)} pack(s), drop {len(self.drop)}, repack {len(self.repack)}, "
            f"delete {len(self.orphans)} orphan(s) (keep {len(self.young_orphans) + len(self.held_orphans)}); "
            f"{self.blobs_used} blob(s) used, {self.blobs_unused} unused"
        )
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "keep": sorted(self.keep),
            "drop": sorted(self.drop),
            "repack": sorted(self.repack),
            "orphans": sorted(self.orphans),
            "young_orphans": sorted(self.young_orphans),
            "held_orphans": sorted(self.held_orphans),
            "locked": sorted(self.locked),
            "unindexed": [b.hex() for b in self.unindexed],
            "missing": [b.hex() for b in self.missing],
            "check_copies": [[p, b.hex()] for p, b in self.check_copies],
        }


def _homes(
    by_pack: dict[str, list[PackEntry]], used: set[bytes], current: dict[bytes, str], unreadable: set[CopyRef]
) -> dict[bytes, str]:
    """For every used blob held by a good copy, the one pack whose copy stays.

    Packs whose every used blob has a copy in another surviving pack are redundant;
    they are retired smallest first, so the copies that stay sit in the packs that
    are needed anyway. The index's current location is preferred among survivors.
    Copies known to be unreadable are not copies."""
    holders: dict[bytes, list[str]] = {}
    live_bytes: dict[str, int] = {}
    for pack_id, entries in by_pack.items():
        for e in entries:
            if e.id in used and (pack_id, e.id) not in unreadable:
                holders.setdefault(e.id, []).append(pack_id)
        stored, unneeded = _stored_bytes(entries, lambda e: e.id in holders and pack_id in holders[e.id])  # noqa: B023 - used at once
        live_bytes[pack_id] = stored - unneeded
    alive = set(by_pack)
    for pack_id in sorted(by_pack, key=lambda p: (live_bytes[p], p)):
        ids = [e.id for e in by_pack[pack_id] if e.id in holders and pack_id in holders[e.id]]
        if ids and all(any(h != pack_id and h in alive for h in holders[i]) for i in ids):
            alive.discard(pack_id)
    homes: dict[bytes, str] = {}
    for chunk_id, packs in holders.items():
        where = current.get(chunk_id)
        homes[chunk_id] = where if where in alive and where in packs else next(p for p in packs if p in alive)
    return homes


def _stored_bytes(entries: list[PackEntry], live: Callable[[PackEntry], bool]) -> tuple[int, int]:
    """(bytes the entries of a pack occupy, bytes of those no *live* entry needs). The
    members of a group (format v3) share its range, counted once; of a group some of
    whose members are live, the share of its other members (by their raw sizes) is
    not needed either: a repack stores the live ones again without them."""
    ranges: dict[tuple[int, int], list[int]] = {}
    for e in entries:
        sizes = ranges.setdefault((e.offset, e.length), [0, 0])  # raw bytes: live, all
        weight = e.raw_length or 1
        sizes[1] += weight
        if live(e):
            sizes[0] += weight
    total = sum(length for _, length in ranges)
    unused = sum(length * (every - needed) // every for (_, length), (needed, every) in ranges.items())
    return total, unused


def plan_prune(
    facts: PruneFacts,
    *,
    now: datetime,
    repack_threshold: float = 0.5,
    orphan_grace: timedelta = ORPHAN_GRACE,
    locked: set[str] | frozenset[str] = frozenset(),
    unreadable: set[CopyRef] | frozenset[CopyRef] = frozenset(),
) -> PrunePlan:
    """Decide what prune does. Pure: the same facts give the same plan.

    *locked* are object names that may not be deleted (retention, a caller's veto);
    *unreadable* are copies of blobs that failed to read (they do not count as copies)."""
    plan = PrunePlan(vetoed=frozenset(locked))
    # Only packs that are both indexed and stored hold anything.
    by_pack = {p: entries for p, entries in facts.indexed.items() if p in facts.stored}
    plan.home = _homes(by_pack, facts.used, facts.current, set(unreadable))
    listed = {e.id for entries in facts.indexed.values() for e in entries}
    plan.unindexed = sorted(b for b in facts.used if b not in listed)
    plan.missing = sorted(b for b in facts.used if b in listed and b not in plan.home)

    def live(e: PackEntry, pack_id: str) -> bool:
        # Used, and this pack is the copy that stays: a second copy of a blob (two
        # runs stored it) is dead weight like an unused blob.
        return plan.home.get(e.id) == pack_id

    for pack_id, entries in facts.indexed.items():
        if pack_id not in facts.stored:
            continue  # indexed but gone: nothing to delete (verify reports it)
        total, unused = _stored_bytes(entries, lambda e: live(e, pack_id))  # noqa: B023 - used at once
        total = total or 1
        n_live = sum(1 for e in entries if live(e, pack_id))
        plan.blobs_used += n_live
        plan.blobs_unused += len(entries) - n_live
        if unused == 0:
            plan.keep.append(pack_id)
        elif n_live == 0:
            plan.drop.append(pack_id)
        elif unused / total >= repack_threshold:
            plan.repack.append(pack_id)
        else:
            plan.keep.append(pack_id)
    # Retention (or a veto): what cannot be deleted yet stays as it is, still indexed.
    held = {p for p in plan.drop + plan.repack if layout.pack_name(p) in locked}
    plan.keep += sorted(held)
    plan.drop = [p for p in plan.drop if p not in held]
    plan.repack = [p for p in plan.repack if p not in held]
    plan.locked = sorted(layout.pack_name(p) for p in held)

    for pack_id, info in sorted(facts.stored.items()):
        if pack_id in facts.indexed:
            continue
        if pack_id in facts.listed_by_superseded:
            plan.held_orphans.append(pack_id)
        elif info.mtime is None or now - info.mtime < orphan_grace:
            plan.young_orphans.append(pack_id)
        elif layout.pack_name(pack_id) in locked:
            plan.locked.append(layout.pack_name(pack_id))
        else:
            plan.orphans.append(pack_id)

    # A pack going away may hold the other copy of a used blob: read that copy first.
    kept = set(plan.keep)
    checks: set[CopyRef] = set()
    for pack_id in plan.drop + plan.repack:
        for e in facts.indexed[pack_id]:
            home = plan.home.get(e.id)
            if home is not None and home != pack_id and home in kept:
                checks.add((home, e.id))
    plan.check_copies = sorted(checks - set(unreadable))
    plan.bytes_freed = sum(facts.stored[p].size for p in plan.drop + plan.repack + plan.orphans)
    plan.remove_superseded = [i for i in facts.superseded_files if layout.index_name(i) not in locked]
    plan.locked += sorted(layout.index_name(i) for i in facts.superseded_files if layout.index_name(i) in locked)
    return plan


def gather(repo: Repository) -> PruneFacts:
    """Read what :func:`plan_prune` needs. The caller holds an exclusive lock.
    Raises DamageFound if a snapshot's manifest or tree cannot be read."""
    repo.load_index()
    used = used_blobs(repo)
    indexed: dict[str, list[PackEntry]] = {}
    for index_id in sorted(repo.index.files):
        packs, _ = repo.read_index_file(index_id)
        for pack_id, _size, entries in packs:
            indexed.setdefault(pack_id, []).extend(entries)
    for pack_id in repo.index.pack_sizes:
        indexed.setdefault(pack_id, [])
    listed: set[str] = set()
    for index_id in sorted(repo.superseded_index_files):
        try:
            packs, _ = repo.read_index_file(index_id)
        except (IntegrityError, ObjectNotFound):
            continue
        listed.update(pack_id for pack_id, _size, _entries in packs)
    stored: dict[str, StoredPack] = {}
    for o in repo.storage.list(layout.DATA):
        stored_id = layout.id_of(o.name)
        if stored_id is not None:
            stored[stored_id] = StoredPack(o.size, o.mtime)
    current = {chunk_id: loc.pack for chunk_id, loc in repo.index.items()}
    return PruneFacts(
        used=used,
        indexed={p: _dedup(entries) for p, entries in indexed.items()},
        indexed_sizes=dict(repo.index.pack_sizes),
        stored=stored,
        index_files=sorted(repo.index.files),
        superseded_files=sorted(repo.superseded_index_files),
        listed_by_superseded=listed - set(indexed),
        current=current,
    )


def _dedup(entries: list[PackEntry]) -> list[PackEntry]:
    return list(dict.fromkeys(entries))


def unreadable_copies(repo: Repository, refs: list[CopyRef], facts: PruneFacts) -> set[CopyRef]:
    """Read and check each copy (decrypt, decompress, verify its id); return the bad ones."""
    bad: set[CopyRef] = set()
    for pack_id, blob in refs:
        entry = next((e for e in facts.indexed.get(pack_id, []) if e.id == blob), None)
        if entry is None:
            bad.add((pack_id, blob))
            continue
        try:
            sealed = repo.storage.get(layout.pack_name(pack_id), entry.offset, entry.length)
            repo.codec.decode(entry.blob_type, blob, sealed)
        except (BlobError, IntegrityError, ObjectNotFound) as exc:
            log.warning("copy of blob %s in %s is unreadable (%s): it does not count as a copy", blob.hex()[:16], pack_id[:16], exc)
            bad.add((pack_id, blob))
    return bad


MAX_PLANS = 4
"""Plans made at most, each without the copies the previous one found unreadable."""


def make_plan(
    repo: Repository,
    facts: PruneFacts,
    guard: RetentionGuard,
    *,
    repack_threshold: float = 0.5,
    may_delete: Callable[[str], bool] = lambda name: True,
    orphan_grace: timedelta = ORPHAN_GRACE,
) -> PrunePlan:
    """Plan, ask the store about the retention of what the plan would delete, plan again
    with that, then read the copies the plan relies on (and plan again without the bad
    ones). Reads, never writes."""
    def plan(locked: frozenset[str] = frozenset(), unreadable: frozenset[CopyRef] = frozenset()) -> PrunePlan:
        return plan_prune(facts, now=guard.now, repack_threshold=repack_threshold, orphan_grace=orphan_grace,
                          locked=locked, unreadable=unreadable)

    draft = plan()
    candidates = [layout.pack_name(p) for p in draft.drop + draft.repack + draft.orphans]
    candidates += [layout.index_name(i) for i in facts.index_files + facts.superseded_files]
    guard.prefetch(candidates)
    locked = frozenset(n for n in candidates if not may_delete(n) or guard.retained(n))
    unreadable: set[CopyRef] = set()
    for _ in range(MAX_PLANS):
        result = plan(locked, frozenset(unreadable))
        bad = unreadable_copies(repo, result.check_copies, facts)
        if not bad:
            return result
        unreadable |= bad
    raise UnsafeToPrune(detail=f"copies of used blobs kept turning out unreadable ({len(unreadable)} so far); refusing to delete anything")


def prune(
    repo: Repository,
    *,
    repack_threshold: float = 0.5,
    dry_run: bool = False,
    may_delete: Callable[[str], bool] = lambda name: True,
    workers: int = 0,
    now: Callable[[], datetime] | None = None,
    orphan_grace: timedelta = ORPHAN_GRACE,
    on_plan: Callable[[PrunePlan], None] | None = None,
) -> PruneReport:
    """Remove unreferenced data; idempotent (a second run finds nothing to do).

    *may_delete(name)* lets a caller veto deleting an object (it is then kept, and still
    indexed if it is a pack). Objects under retention of a
    :class:`~drkit.storage.base.RetentionAware` storage are vetoed automatically, and the
    retention of referenced objects is extended (see the module docstring). *now* is
    the clock retention dates and pack ages are compared with (default: :func:`utc_now`).
    *on_plan* sees the plan before anything is deleted (``--dry-run`` prints it).
    Raises DamageFound if a snapshot cannot be read, UnsafeToPrune if a used blob is in
    no indexed pack (nothing is deleted then), RepositoryLocked, StorageError."""
    with repo.lock_for("prune"):
        guard = RetentionGuard(retention_of(repo.storage), (now or utc_now)())
        facts = gather(repo)
        plan = make_plan(repo, facts, guard, repack_threshold=repack_threshold, may_delete=may_delete, orphan_grace=orphan_grace)
        if on_plan is not None:
            on_plan(plan)
        if not plan.safe:
            raise UnsafeToPrune(detail=plan.refusal())
        return execute(repo, plan, facts, guard, dry_run=dry_run, workers=workers)


def execute(
    repo: Repository, plan: PrunePlan, facts: PruneFacts, guard: RetentionGuard, *, dry_run: bool = False, workers: int = 0
) -> PruneReport:
    """Carry out a safe *plan* (see :attr:`PrunePlan.safe`); with *dry_run*, only report.
    The caller holds the exclusive lock the plan was made under."""
    if not plan.safe:
        raise UnsafeToPrune(detail=plan.refusal())
    report = PruneReport(dry_run=dry_run)
    report.packs_before = len([p for p in facts.indexed if p in facts.stored])
    report.packs_deleted = len(plan.drop)
    report.packs_repacked = len(plan.repack)
    report.orphans_deleted = len(plan.orphans)
    report.orphans_kept_young = len(plan.young_orphans)
    report.orphans_kept_listed = len(plan.held_orphans)
    report.bytes_freed = plan.bytes_freed
    report.blobs_used = plan.blobs_used
    report.blobs_unused = plan.blobs_unused
    skipped: set[str] = set()

    def deletable(name: str) -> bool:
        if name in plan.vetoed:
            skipped.add(name)
            return False
        return True

    if not dry_run and plan.changes_packs:
        _rewrite(repo, plan, facts, deletable, workers, retention_on=guard.storage is not None)
    elif dry_run and plan.changes_packs:
        skipped.update(layout.index_name(i) for i in facts.index_files if layout.index_name(i) in plan.vetoed)
    elif not dry_run:
        for index_id in plan.remove_superseded:
            repo.storage.delete(layout.index_name(index_id))

    # Protect what stays referenced (kopia's approach).
    if guard.storage is not None:
        names = [layout.CONFIG]
        names += [o.name for o in repo.storage.list(layout.KEYS) if layout.id_of(o.name)]
        names += [layout.snapshot_name(i) for i in repo.snapshot_ids()]
        names += [layout.index_name(i) for i in sorted(repo.index.files)]
        names += [layout.pack_name(p) for p, entries in repo.index.entries_by_pack().items() if any(e.id in facts.used for e in entries)]
        report.retention_extended = guard.extend(names, dry_run=dry_run)
    report.kept_locked = len(set(plan.locked) | skipped)
    if report.kept_locked:
        log.info("prune kept %d object(s) still under retention; a later prune removes them", report.kept_locked)
    if not dry_run:
        report.temporaries_removed = _remove_stale_temporaries(repo)
    return report


def _rewrite(
    repo: Repository,
    plan: PrunePlan,
    facts: PruneFacts,
    deletable: Callable[[str], bool],
    workers: int,
    *,
    retention_on: bool,
) -> None:
    """Repack, write the new index, then delete (only what *deletable* allows).

    With retention on, the repack's interim index file (written moments ago, so
    certainly retained) is left superseded rather than asked about; a later prune
    deletes it once its retention has passed."""
    old_index_files = facts.index_files
    # New index view: only kept packs; repacked blobs are stored again below.
    kept_index = Index()
    for pack_id in plan.keep:
        kept_index.add_pack(pack_id, facts.indexed_sizes.get(pack_id, facts.stored[pack_id].size), facts.indexed[pack_id])
    repo.index = kept_index
    if plan.repack:
        with BlobSaver(repo, workers=workers, index_every_packs=10**9) as saver:
            for pack_id in plan.repack:
                data = repo.read_pack(pack_id)
                for e, sealed in blob_views(data, facts.indexed[pack_id]):
                    if e.id not in facts.used or saver.known(e.id):
                        continue
                    try:
                        plain = repo.codec.decode(e.blob_type, e.id, sealed)
                    except BlobError as exc:
                        raise Refused(f"pack {layout.pack_name(pack_id)} holds a damaged blob in use: {exc}", hint="run 'drkit verify --read-data'") from None
                    saver.save(plain, saved_type(e.blob_type))
    # One index covering everything that stays, superseding every old file: those
    # loaded, those already superseded but still stored (so that deleting the file
    # that superseded them cannot bring them back) and the repack's interim files.
    everything = [(p, repo.index.pack_sizes[p], entries) for p, entries in repo.index.entries_by_pack().items()]
    interim = sorted(set(repo.index.files) - set(old_index_files))
    replaced = sorted(set(old_index_files) | set(facts.superseded_files) | set(interim))
    new_id = repo.write_index(everything, supersedes=replaced)
    repo.index.files = {new_id}
    for index_id in replaced:
        if index_id == new_id or (retention_on and index_id in interim):
            continue
        if deletable(layout.index_name(index_id)):
            repo.check_locks()
            repo.storage.delete(layout.index_name(index_id))
    for pack_id in plan.drop + plan.repack + plan.orphans:
        repo.check_locks()
        repo.storage.delete(layout.pack_name(pack_id))


def _remove_stale_temporaries(repo: Repository) -> int:
    """Best effort: a failure (e.g. no s3:ListBucketMultipartUploads) is logged, not raised."""
    clean = getattr(unwrap(repo.storage), "remove_stale_temporaries", None)
    if not callable(clean):
        return 0
    try:
        return int(clean())
    except DrkitError as exc:
        log.warning("could not remove stale temporaries: %s", exc.message)
        return 0
