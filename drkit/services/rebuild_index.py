"""Rebuild the index from the packs alone (their trailers), e.g. after an index file
was lost or damaged, or to adopt packs an interrupted backup uploaded but never indexed.

Crash-safe: the new index is written before any old index file is deleted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from drkit.repository import layout
from drkit.repository.repo import Repository


@dataclass
class RebuildReport:
    packs: int = 0
    blobs: int = 0
    damaged: list[str] = field(default_factory=list)
    removed_index_files: int = 0
    new_index: str | None = None


def rebuild_index(repo: Repository, *, on_pack: Callable[[int], None] | None = None) -> RebuildReport:
    """Read every pack's trailer and replace all index files by one new index.

    Damaged packs are left out and reported. Takes an exclusive lock."""
    report = RebuildReport()
    with repo.lock_for("rebuild-index"):
        old = [i for i in (layout.id_of(o.name) for o in repo.storage.list(layout.INDEX)) if i]
        packs = []
        for pack in repo.scan_packs(on_error=lambda name, detail: report.damaged.append(f"{name}: {detail}")):
            packs.append(pack)
            report.packs += 1
            report.blobs += len(pack[2])
            if on_pack:
                on_pack(1)
        report.new_index = repo.write_index(packs, supersedes=old) if packs else None
        for index_id in old:
            if index_id != report.new_index:
                repo.storage.delete(layout.index_name(index_id))
                report.removed_index_files += 1
    return report
