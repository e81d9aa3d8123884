"""Verify: prove the repository is sound, or name exactly what is not.

Levels:

- structure (always): every index file and manifest decrypts; every snapshot's tree
  reads; every blob a snapshot references is in the index; every indexed pack exists
  with the indexed size.
- ``read_data``: additionally download packs (all, or a random ``subset`` fraction),
  check each against its SHA-256 name, parse its trailer, compare it with the index,
  and decrypt, decompress and hash-check every blob in it.

Every problem names the damaged object and the snapshots it affects.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from drkit.errors import DrkitError, IntegrityError, ObjectNotFound
from drkit.repository import layout
from drkit.repository.blob import BLOB_TREE, BlobError
from drkit.repository.pack import PackEntry, blob_views
from drkit.repository.repo import Repository
from drkit.repository.snapshot import Snapshot
from drkit.repository.tree import iter_tree
from drkit.services.forget import future_snapshots
from drkit.services.seen import check_and_remember


@dataclass
class Problem:
    object: str
    detail: str
    snapshots: list[str] = field(default_factory=list)

    def line(self) -> str:
        affects = f" (affects snapshots: {', '.join(self.snapshots)})" if self.snapshots else ""
        return f"{self.object}: {self.detail}{affects}"


@dataclass
class VerifyReport:
    snapshots: int = 0
    packs: int = 0
    packs_read: int = 0
    blobs: int = 0
    orphan_packs: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    rollback: list[str] = field(default_factory=list)
    """Signs that storage lost or rolled back what this host saw before (see services/seen.py)."""
    future_snapshots: list[str] = field(default_factory=list)
    """Ids of snapshots dated in the future (flagged; retention never counts them)."""
    content_checked: bool = True
    """False on a recipient-mode backup host: manifests, trees and blob contents
    cannot be opened there (pack hashes and trailers still are)."""

    @property
    def ok(self) -> bool:
        return not self.problems and not self.rollback

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "snapshots": self.snapshots,
            "packs": self.packs,
            "packs_read": self.packs_read,
            "blobs": self.blobs,
            "orphan_packs": self.orphan_packs,
            "problems": [{"object": p.object, "detail": p.detail, "snapshots": p.snapshots} for p in self.problems],
            "content_checked": self.content_checked,
            "future_snapshots": self.future_snapshots,
            "rollback": self.rollback,
        }


def _label(s: Snapshot) -> str:
    return f"{s.short_id} ({s.source})"


def verify_repository(
    repo: Repository,
    *,
    read_data: bool = False,
    subset: float | None = None,
    workers: int = 4,
    on_pack: Callable[[int], None] | None = None,
    seed: int | None = None,
    state_dir: Path | None = None,
) -> VerifyReport:
    """Check the repository; returns a report (it does not raise for damage). With
    *state_dir*, also compare it with what this host saw before (rollback, deletion)
    and remember what it sees now."""
    report = VerifyReport()
    with repo.lock_for("verify"):
        repo.load_index(on_error=lambda name, detail: report.problems.append(Problem(name, detail)))
        report.content_checked = repo.can_read_content
        if repo.can_read_content:
            snaps = repo.list_snapshots(on_error=lambda name, detail: report.problems.append(Problem(name, detail)))
        else:
            snaps = []
            report.snapshots = len(repo.snapshot_ids())
        report.snapshots = report.snapshots or len(snaps)
        report.future_snapshots = [s.id for s in future_snapshots(snaps)]
        report.rollback = check_and_remember(repo, state_dir, snapshots=snaps)
        referenced: set[bytes] = set()
        by_pack: dict[str, set[str]] = defaultdict(set)  # pack -> the snapshots using a blob in it
        trees: dict[tuple[str, ...], _TreeUse] = {}
        for snap in snaps:
            tree = tuple(snap.tree)
            use = trees.get(tree)
            if use is None:
                use = trees[tree] = _walk_tree(repo, snap, referenced)
            label = _label(snap)
            for pack_id in use.packs:
                by_pack[pack_id].add(label)
            report.problems.extend(Problem(obj or layout.snapshot_name(snap.id), detail, [label]) for obj, detail in use.problems)
        report.blobs = len(referenced)

        stored = {layout.id_of(o.name): o.size for o in repo.storage.list(layout.DATA)}
        indexed = repo.index.packs()
        report.packs = len(indexed)
        report.orphan_packs = sorted(p for p in stored if p and p not in repo.index.pack_sizes)
        for pack_id in indexed:
            size = repo.index.pack_sizes[pack_id]
            if pack_id not in stored:
                report.problems.append(Problem(layout.pack_name(pack_id), "pack is missing", sorted(by_pack.get(pack_id, ()))))
            elif stored[pack_id] != size:
                report.problems.append(
                    Problem(layout.pack_name(pack_id), f"size {stored[pack_id]} differs from indexed size {size}", sorted(by_pack.get(pack_id, ())))
                )
        if read_data:
            candidates = [p for p in indexed if p in stored]
            if subset is not None and subset < 1.0:
                rng = random.Random(seed)
                count = max(1, round(len(candidates) * subset)) if candidates else 0
                candidates = rng.sample(candidates, count)
            entries = repo.index.entries_by_pack()

            def check(pack_id: str) -> list[Problem]:
                return _read_pack(repo, pack_id, entries.get(pack_id, []), sorted(by_pack.get(pack_id, ())))

            with ThreadPoolExecutor(workers) as pool:
                for pack_id, found in zip(candidates, pool.map(check, candidates), strict=True):
                    report.problems.extend(found)
                    report.packs_read += 1
                    if on_pack:
                        on_pack(repo.index.pack_sizes.get(pack_id, 0))
    return report


@dataclass
class _TreeUse:
    """What one tree (a list of tree blobs, shared by the snapshots of a source that did
    not change) uses: the packs holding its blobs, and its problems as (object, detail)
    (object None: the manifest of the snapshot it is reported for)."""

    packs: set[str] = field(default_factory=set)
    problems: list[tuple[str | None, str]] = field(default_factory=list)


def _walk_tree(repo: Repository, snap: Snapshot, referenced: set[bytes]) -> _TreeUse:
    """Read *snap*'s tree once: the packs its blobs are in and what is wrong with it;
    every blob it names goes into *referenced*. Holds no set per blob: a repository's
    blobs times its snapshots was gigabytes."""
    use = _TreeUse()
    tree_ids = [bytes.fromhex(t) for t in snap.tree]
    referenced.update(tree_ids)
    index = repo.index
    located = [(tid, index.get(tid)) for tid in tree_ids]
    use.packs.update(loc.pack for _, loc in located if loc is not None)
    missing = [tid for tid, loc in located if loc is None]
    if missing:
        use.problems.append((f"blob {missing[0].hex()}", "tree blob is not in the index"))
        return use
    try:
        for entry in iter_tree(repo, snap):
            for hex_id in entry.chunks:
                cid = bytes.fromhex(hex_id)
                referenced.add(cid)
                loc = index.get(cid)
                if loc is None:
                    use.problems.append((f"blob {hex_id}", f"data of {entry.path} is not in the index"))
                else:
                    use.packs.add(loc.pack)
    except IntegrityError as exc:
        use.problems.append((str(exc.fields.get("name", "tree")), str(exc.fields.get("detail", exc))))
    except (ValueError, DrkitError) as exc:
        use.problems.append((None, f"tree unreadable: {exc}"))
    return use


def _read_pack(repo: Repository, pack_id: str, indexed: list[PackEntry], affected: list[str]) -> list[Problem]:
    name = layout.pack_name(pack_id)
    try:
        data = repo.read_pack(pack_id)
        trailer = repo.pack_entries(pack_id, data)
    except IntegrityError as exc:
        return [Problem(name, str(exc.fields.get("detail", exc)), affected)]
    except ObjectNotFound:
        return [Problem(name, "pack is missing", affected)]
    problems = []
    in_trailer = {e.id: e for e in trailer}
    for e in indexed:
        t = in_trailer.get(e.id)
        if t is None or (t.offset, t.length) != (e.offset, e.length):
            problems.append(Problem(name, f"index entry for blob {e.id.hex()[:16]} does not match the pack trailer", affected))
    if not repo.can_read_content:
        return problems
    for e, sealed in blob_views(data, trailer):
        try:
            repo.codec.decode(e.blob_type, e.id, sealed)
        except BlobError as exc:
            kind = "tree" if e.blob_type == BLOB_TREE else "data"
            problems.append(Problem(name, f"{kind} {exc}", affected))
    return problems
