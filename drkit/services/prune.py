"""Prune: delete data no snapshot references, and repack mostly-empty packs.

Under an exclusive lock:

1. find every blob the remaining snapshots use (their trees and file chunks);
   refuse if any manifest or tree cannot be read (we would not know what it needs);
2. packs with no used blob are dropped; packs whose unused share is at least
   ``repack_threshold`` have their used blobs re-stored into new packs;
3. write the new packs, then one index covering every kept and new pack, superseding
   every older index file (including superseded ones still stored);
4. only then delete the old index files, then the dropped and repacked packs, and
   packs no index ever listed (left by interrupted backups).

A crash at any step leaves a repository in which every snapshot restores.

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

from drkit.errors import DamageFound, DrkitError, ObjectNotFound, Refused
from drkit.repository import layout
from drkit.repository.blob import BlobError
from drkit.repository.index import Index
from drkit.repository.pack import PackEntry
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
    """Every blob referenced by a snapshot; raises DamageFound if one is unreadable."""
    problems: list[str] = []
    snaps = repo.list_snapshots(on_error=lambda name, detail: problems.append(f"{name}: {detail}"))
    used: set[bytes] = set()
    for snap in snaps:
        used.update(bytes.fromhex(t) for t in snap.tree)
        try:
            for entry in iter_tree(repo, snap):
                used.update(bytes.fromhex(c) for c in entry.chunks)
        except DrkitError as exc:
            problems.append(f"snapshot {snap.short_id}: {exc}")
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


def _all_pack_entries(repo: Repository) -> dict[str, list[PackEntry]]:
    """Every blob of every indexed pack, duplicates included (the in-memory index keeps
    one location per blob), from the index files that are not superseded."""
    out: dict[str, list[PackEntry]] = {}
    for index_id in sorted(repo.index.files):
        packs, _ = repo.read_index_file(index_id)
        for pack_id, _size, entries in packs:
            if pack_id in repo.index.pack_sizes:
                out[pack_id] = entries
    for pack_id in repo.index.pack_sizes:
        out.setdefault(pack_id, [])
    return out


def _homes(repo: Repository, by_pack: dict[str, list[PackEntry]], used: set[bytes]) -> dict[bytes, str]:
    """For every used blob, the one pack whose copy stays.

    Packs whose every used blob has a copy in another surviving pack are redundant;
    they are retired smallest first, so the copies that stay sit in the packs that
    are needed anyway. The index's current location is preferred among survivors."""
    holders: dict[bytes, list[str]] = {}
    live_bytes: dict[str, int] = {}
    for pack_id, entries in by_pack.items():
        live_bytes[pack_id] = 0
        for e in entries:
            if e.id in used:
                holders.setdefault(e.id, []).append(pack_id)
                live_bytes[pack_id] += e.length
    alive = set(by_pack)
    for pack_id in sorted(by_pack, key=lambda p: (live_bytes[p], p)):
        ids = [e.id for e in by_pack[pack_id] if e.id in used]
        if ids and all(any(h != pack_id and h in alive for h in holders[i]) for i in ids):
            alive.discard(pack_id)
    homes: dict[bytes, str] = {}
    for chunk_id, packs in holders.items():
        loc = repo.index.get(chunk_id)
        homes[chunk_id] = loc.pack if loc is not None and loc.pack in alive else next(p for p in packs if p in alive)
    return homes


def prune(
    repo: Repository,
    *,
    repack_threshold: float = 0.5,
    dry_run: bool = False,
    may_delete: Callable[[str], bool] = lambda name: True,
    workers: int = 0,
    now: Callable[[], datetime] | None = None,
) -> PruneReport:
    """Remove unreferenced data; idempotent (a second run finds nothing to do).

    *may_delete(name)* lets a caller veto deleting an object (it is then kept, and still
    indexed if it is a pack). Objects under retention of a
    :class:`~drkit.storage.base.RetentionAware` storage are vetoed automatically, and the
    retention of referenced objects is extended (see the module docstring). *now* is
    the clock retention dates are compared with (default: :func:`utc_now`). Raises DamageFound if a snapshot cannot
    be read, RepositoryLocked if another process holds a lock, StorageError."""
    report = PruneReport(dry_run=dry_run)
    with repo.lock(exclusive=True, command="prune"):
        guard = RetentionGuard(retention_of(repo.storage), (now or utc_now)())

        def deletable(name: str) -> bool:
            return may_delete(name) and not guard.retained(name)

        repo.load_index()
        old_index_files = sorted(repo.index.files)
        superseded_files = sorted(repo.superseded_index_files)
        used = used_blobs(repo)
        by_pack = _all_pack_entries(repo)
        report.packs_before = len(by_pack)
        keep: list[str] = []
        drop: list[str] = []
        repack: list[str] = []

        home = _homes(repo, by_pack, used)

        def live(e: PackEntry, pack_id: str) -> bool:
            # Used, and this pack is the copy that stays: a second copy of a blob (two
            # runs stored it) is dead weight like an unused blob.
            return home.get(e.id) == pack_id

        for pack_id, entries in by_pack.items():
            total = sum(e.length for e in entries) or 1
            unused = sum(e.length for e in entries if not live(e, pack_id))
            report.blobs_used += sum(1 for e in entries if live(e, pack_id))
            report.blobs_unused += sum(1 for e in entries if not live(e, pack_id))
            if unused == 0:
                keep.append(pack_id)
            elif not any(live(e, pack_id) for e in entries):
                drop.append(pack_id)
            elif unused / total >= repack_threshold:
                repack.append(pack_id)
            else:
                keep.append(pack_id)
        stored = {layout.id_of(o.name): o.size for o in repo.storage.list(layout.DATA)}
        orphans = [p for p in stored if p and p not in by_pack]
        # Retention: what cannot be deleted yet stays as it is.
        guard.prefetch([layout.pack_name(p) for p in drop + repack + orphans])
        locked_packs = {p for p in drop + repack if not deletable(layout.pack_name(p))}
        keep += sorted(locked_packs)
        drop = [p for p in drop if p not in locked_packs]
        repack = [p for p in repack if p not in locked_packs]
        orphans = [p for p in orphans if deletable(layout.pack_name(p))]
        report.packs_deleted = len(drop)
        report.packs_repacked = len(repack)
        report.orphans_deleted = len(orphans)
        report.bytes_freed = sum(stored.get(p, 0) for p in drop + repack + orphans)

        # Superseded index files still stored (kept by an earlier prune under retention)
        # can go as soon as their retention has passed: a loaded file supersedes them.
        guard.prefetch([layout.index_name(i) for i in superseded_files])
        removable = [i for i in superseded_files if deletable(layout.index_name(i))]
        if not dry_run and (drop or repack or orphans):
            guard.prefetch([layout.index_name(i) for i in old_index_files])
            _rewrite(repo, keep, drop, repack, orphans, by_pack, used, old_index_files, superseded_files, deletable, workers,
                     retention_on=guard.storage is not None)
        elif not dry_run:
            for index_id in removable:
                repo.storage.delete(layout.index_name(index_id))

        # Protect what stays referenced (kopia's approach).
        if guard.storage is not None:
            referenced = [layout.CONFIG]
            referenced += [o.name for o in repo.storage.list(layout.KEYS) if layout.id_of(o.name)]
            referenced += [layout.snapshot_name(i) for i in repo.snapshot_ids()]
            referenced += [layout.index_name(i) for i in sorted(repo.index.files)]
            referenced += [layout.pack_name(p) for p, entries in repo.index.entries_by_pack().items()
                           if any(e.id in used for e in entries)]
            report.retention_extended = guard.extend(referenced, dry_run=dry_run)
        report.kept_locked = len(guard.locked)
        if guard.locked:
            log.info("prune kept %d object(s) still under retention; a later prune removes them", len(guard.locked))
        if not dry_run:
            report.temporaries_removed = _remove_stale_temporaries(repo)
    return report


def _rewrite(
    repo: Repository,
    keep: list[str],
    drop: list[str],
    repack: list[str],
    orphans: list[str],
    by_pack: dict[str, list[PackEntry]],
    used: set[bytes],
    old_index_files: list[str],
    superseded_files: list[str],
    deletable: Callable[[str], bool],
    workers: int,
    *,
    retention_on: bool,
) -> None:
    """Steps 2-4: repack, write the new index, then delete (only what *deletable* allows).

    With retention on, the repack's interim index file (written moments ago, so
    certainly retained) is left superseded rather than asked about; a later prune
    deletes it once its retention has passed."""
    # New index view: only kept packs; repacked blobs are stored again below.
    kept_index = Index()
    for pack_id in keep:
        kept_index.add_pack(pack_id, repo.index.pack_sizes[pack_id], by_pack[pack_id])
    repo.index = kept_index
    if repack:
        with BlobSaver(repo, workers=workers, index_every_packs=10**9) as saver:
            for pack_id in repack:
                data = repo.read_pack(pack_id)
                view = memoryview(data)
                for e in by_pack[pack_id]:
                    if e.id not in used or saver.known(e.id):
                        continue
                    try:
                        plain = repo.codec.decode(e.blob_type, e.id, view[e.offset : e.offset + e.length])
                    except BlobError as exc:
                        raise Refused(f"pack {layout.pack_name(pack_id)} holds a damaged blob in use: {exc}", hint="run 'drkit verify --read-data'") from None
                    saver.save(plain, e.blob_type)
    # One index covering everything that stays, superseding every old file: those
    # loaded, those already superseded but still stored (so that deleting the file
    # that superseded them cannot bring them back) and the repack's interim files.
    everything = [(p, repo.index.pack_sizes[p], entries) for p, entries in repo.index.entries_by_pack().items()]
    interim = sorted(set(repo.index.files) - set(old_index_files))
    replaced = sorted(set(old_index_files) | set(superseded_files) | set(interim))
    new_id = repo.write_index(everything, supersedes=replaced)
    repo.index.files = {new_id}
    for index_id in replaced:
        if index_id == new_id or (retention_on and index_id in interim):
            continue
        if deletable(layout.index_name(index_id)):
            repo.storage.delete(layout.index_name(index_id))
    for pack_id in drop + repack + orphans:
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
