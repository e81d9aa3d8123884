"""Prune: delete data no snapshot references, and repack mostly-empty packs.

Under an exclusive lock:

1. find every blob the remaining snapshots use (their trees and file chunks);
   refuse if any manifest or tree cannot be read (we would not know what it needs);
2. packs with no used blob are dropped; packs whose unused share is at least
   ``repack_threshold`` have their used blobs re-stored into new packs;
3. write the new packs, then one index covering every kept and new pack;
4. only then delete the old index files, then the dropped and repacked packs, and
   packs no index ever listed (left by interrupted backups).

A crash at any step leaves a repository in which every snapshot restores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from drkit.errors import DamageFound, DrkitError, Refused
from drkit.repository import layout
from drkit.repository.blob import BlobError
from drkit.repository.index import Index
from drkit.repository.repo import Repository
from drkit.repository.saver import BlobSaver
from drkit.repository.tree import decode_lines


@dataclass
class PruneReport:
    packs_before: int = 0
    packs_deleted: int = 0
    packs_repacked: int = 0
    orphans_deleted: int = 0
    bytes_freed: int = 0
    blobs_used: int = 0
    blobs_unused: int = 0
    dry_run: bool = False

    def to_json(self) -> dict[str, object]:
        return self.__dict__.copy()


def used_blobs(repo: Repository) -> set[bytes]:
    """Every blob referenced by a snapshot; raises DamageFound if one is unreadable."""
    problems: list[str] = []
    snaps = repo.list_snapshots(on_error=lambda name, detail: problems.append(f"{name}: {detail}"))
    used: set[bytes] = set()
    for snap in snaps:
        tree = [bytes.fromhex(t) for t in snap.tree]
        used.update(tree)
        try:
            for entry in decode_lines(repo.read_blob(t) for t in tree):
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


def prune(
    repo: Repository,
    *,
    repack_threshold: float = 0.5,
    dry_run: bool = False,
    may_delete: Callable[[str], bool] = lambda name: True,
    workers: int = 0,
) -> PruneReport:
    """Remove unreferenced data. *may_delete(name)* lets immutable storage veto
    deleting an object (it is then kept and still indexed if it holds used blobs)."""
    report = PruneReport(dry_run=dry_run)
    with repo.lock(exclusive=True, command="prune"):
        repo.load_index()
        old_index_files = sorted(repo.index.files)
        used = used_blobs(repo)
        by_pack = repo.index.entries_by_pack()
        report.packs_before = len(by_pack)
        keep: list[str] = []
        drop: list[str] = []
        repack: list[str] = []
        for pack_id, entries in by_pack.items():
            total = sum(e.length for e in entries) or 1
            unused = sum(e.length for e in entries if e.id not in used)
            report.blobs_used += sum(1 for e in entries if e.id in used)
            report.blobs_unused += sum(1 for e in entries if e.id not in used)
            name = layout.pack_name(pack_id)
            if unused == 0 or not may_delete(name):
                keep.append(pack_id)
            elif all(e.id not in used for e in entries):
                drop.append(pack_id)
            elif unused / total >= repack_threshold:
                repack.append(pack_id)
            else:
                keep.append(pack_id)
        stored = {layout.id_of(o.name): o.size for o in repo.storage.list(layout.DATA)}
        orphans = [p for p in stored if p and p not in by_pack and may_delete(layout.pack_name(p))]
        report.packs_deleted = len(drop)
        report.packs_repacked = len(repack)
        report.orphans_deleted = len(orphans)
        report.bytes_freed = sum(stored.get(p, 0) for p in drop + repack + orphans)
        if dry_run or not (drop or repack or orphans):
            return report

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
        # One index covering everything that stays, superseding every old file.
        everything = [(p, repo.index.pack_sizes[p], entries) for p, entries in repo.index.entries_by_pack().items()]
        new_files_before = set(repo.index.files)
        new_id = repo.write_index(everything, supersedes=old_index_files)
        for index_id in old_index_files + sorted(new_files_before - set(old_index_files)):
            if index_id != new_id:
                repo.storage.delete(layout.index_name(index_id))
        for pack_id in drop + repack + orphans:
            repo.storage.delete(layout.pack_name(pack_id))
    return report
