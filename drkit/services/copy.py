"""Copy snapshots from one repository to another (the off-site leg of 3-2-1).

Two repositories never share keys: each has its own master key, so its own chunker
seed (chunk boundaries) and its own id key (chunk ids). A chunk id of the source
means nothing in the destination. Copying a snapshot therefore reads every file's
content from the source (each blob decrypted and checked against its keyed id), and
writes it into the destination exactly as a backup would: re-chunked with the
destination's chunker, deduplicated against the destination's index, compressed,
encrypted under the destination's key, packed, indexed, and only then the manifest.

What is kept: the snapshot's time, source name and type, run id, host, tags, paths,
source metadata, run metadata and the entries' metadata (modes, owners, mtimes,
symlink targets). What is new: the snapshot id (ids are per repository) and
``meta.copied_from = {repository, snapshot, time, origins}`` (``origins``: where
that snapshot itself was copied from, for copies of copies), which is how a later
copy knows the snapshot is already there, under whatever name ("copying twice adds
nothing": no new snapshot and no new data; neither does copying a copy back). ``stats`` keep the source-side figures; ``bytes_added``, ``bytes_stored``,
``blobs_new`` and ``packs`` describe what the copy added to the destination.

File contents already copied before are not read again: a file whose path had the same
source chunks in the previous copied snapshot of the same source reuses the
destination chunks of that copy (checked to be in the destination's index). The three
trees are read side by side, in walk order, one entry of each at a time.

Locks: shared on both repositories (copy is a reader of one and a backup-like writer
of the other; prune on either waits).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Callable, Iterator, cast

from drkit.errors import DrkitError, IntegrityError, PartialFailure, SnapshotNotFound, UsageError
from drkit.repository.repo import Repository
from drkit.repository.saver import BlobSaver
from drkit.repository.snapshot import Snapshot
from drkit.progress import ProgressSink
from drkit.repository.tree import DIR, FILE, SYMLINK, Entry, iter_tree, split_lines, tree_chunks
from drkit.services.backup import ParentCursor, SnapshotWriter
from drkit.services.restore import BlobStream

log = logging.getLogger("drkit.copy")

COPIED_FROM = "copied_from"

# Stats that describe what a write added to *its* repository: recomputed by the copy.
_WRITE_STATS = ("bytes_added", "bytes_stored", "blobs_new", "packs")


@dataclass(frozen=True)
class _SourceRef:
    """What :class:`SnapshotWriter` needs of a source: its name (the copy has no Source)."""

    name: str
    type_name: str


class _CopyWriter(SnapshotWriter):
    """A SnapshotWriter that records entries with their original metadata.

    Uses the writer's chunk-and-save path (``store``) and entry log (``record``),
    so copied data goes through exactly the code a backup uses."""

    def copy_dir_or_link(self, entry: Entry) -> None:
        if entry.type == DIR:
            self.stats.dirs += 1
        else:
            self.stats.symlinks += 1
        self.record(_clean(entry))

    def copy_file(self, entry: Entry, stream: IO[bytes]) -> Entry:
        """Store *stream* as the content of *entry*; IntegrityError if its size differs."""
        new = _clean(entry)
        new.chunks, size = self.store(stream)
        if size != entry.size:
            raise IntegrityError(
                name=entry.path,
                detail=f"content read from the source has {size} bytes, the snapshot says {entry.size}",
            )
        self.stats.files_new += 1
        return self.record(new)

    def reuse_file(self, entry: Entry, chunks: list[str]) -> Entry:
        new = _clean(entry)
        new.chunks = list(chunks)
        self.stats.files_unmodified += 1
        self.stats.size += entry.size
        if self._on_bytes:
            self._on_bytes(entry.size)
        return self.record(new)


def _clean(entry: Entry) -> Entry:
    """A copy of *entry* without chunk ids (those are per repository)."""
    return Entry.from_dict({**entry.__dict__, "chunks": []})


@dataclass
class CopyItem:
    """The outcome for one source snapshot."""

    snapshot: Snapshot
    status: str
    """``copied``, ``skipped`` (already in the destination) or ``failed``."""
    copy_id: str | None = None
    reason: str = ""
    bytes_read: int = 0
    bytes_reused: int = 0
    bytes_added: int = 0
    bytes_stored: int = 0
    seconds: float = 0.0
    error: DrkitError | None = None

    def to_json(self) -> dict[str, Any]:
        s = self.snapshot
        out: dict[str, Any] = {
            "snapshot": s.id,
            "short_id": s.short_id,
            "source": s.source,
            "time": s.time,
            "status": self.status,
            "copy": self.copy_id,
        }
        if self.status == "copied":
            out.update(
                bytes_read=self.bytes_read,
                bytes_reused=self.bytes_reused,
                bytes_added=self.bytes_added,
                bytes_stored=self.bytes_stored,
                seconds=round(self.seconds, 3),
            )
        if self.reason:
            out["reason"] = self.reason
        if self.error is not None:
            out["error"] = self.error.message
        return out


@dataclass
class CopyReport:
    source_repository: str
    destination_repository: str
    items: list[CopyItem] = field(default_factory=list)

    @property
    def copied(self) -> list[CopyItem]:
        return [i for i in self.items if i.status == "copied"]

    @property
    def skipped(self) -> list[CopyItem]:
        return [i for i in self.items if i.status == "skipped"]

    @property
    def failed(self) -> list[CopyItem]:
        return [i for i in self.items if i.status == "failed"]

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.source_repository,
            "to": self.destination_repository,
            "copied": len(self.copied),
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "snapshots": [i.to_json() for i in self.items],
        }


def copied_from(snap: Snapshot) -> tuple[str, str] | None:
    """(repository id, snapshot id) a snapshot was copied from, or None."""
    origin = snap.meta.get(COPIED_FROM) if isinstance(snap.meta, dict) else None
    if isinstance(origin, dict) and isinstance(origin.get("repository"), str) and isinstance(origin.get("snapshot"), str):
        return origin["repository"], origin["snapshot"]
    return None


def identities(snap: Snapshot, repository_id: str) -> set[tuple[str, str]]:
    """Every (repository id, snapshot id) that names the same snapshot: itself, the
    snapshot it was copied from, and that one's origins (copies of copies)."""
    out = {(repository_id, snap.id)}
    origin = snap.meta.get(COPIED_FROM) if isinstance(snap.meta, dict) else None
    direct = copied_from(snap)
    if direct is not None and isinstance(origin, dict):
        out.add(direct)
        for item in origin.get("origins") or []:
            if isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item):
                out.add((item[0], item[1]))
    return out


def select_snapshots(snaps: list[Snapshot], refs: list[str], sources: list[str]) -> list[Snapshot]:
    """The snapshots to copy: *refs* (ids, id prefixes, ``latest``) or all, then only
    those of *sources* when given. Oldest first. Raises SnapshotNotFound / UsageError."""
    pool = [s for s in snaps if not sources or s.source in sources]
    scope = f" for source(s) {', '.join(sources)}" if sources else ""
    missing = [n for n in sources if not any(s.source == n for s in snaps)]
    if missing:
        known = sorted({s.source for s in snaps})
        raise UsageError(
            f"no snapshot of source {', '.join(repr(n) for n in missing)} in the repository",
            hint="sources with snapshots: " + (", ".join(known) or "none"),
        )
    if not refs:
        return pool
    chosen: dict[str, Snapshot] = {}
    for ref in refs:
        if ref == "latest":
            latest: dict[str, Snapshot] = {}
            for s in pool:
                latest[s.source] = s  # pool is oldest first
            if not latest:
                raise SnapshotNotFound(ref=ref, scope=scope)
            chosen.update({s.id: s for s in latest.values()})
            continue
        matches = [s for s in pool if s.id.startswith(ref.lower())]
        if not matches:
            raise SnapshotNotFound(ref=ref, scope=scope)
        if len(matches) > 1:
            raise UsageError(f"snapshot id {ref!r} is ambiguous{scope}", hint="give more characters of the id")
        chosen[matches[0].id] = matches[0]
    return sorted(chosen.values(), key=lambda s: (s.time, s.id))


def copy_snapshots(
    src: Repository,
    dst: Repository,
    *,
    refs: list[str] | None = None,
    sources: list[str] | None = None,
    workers: int = 0,
    index_every_packs: int = 32,
    scratch_root: Path | None = None,
    progress: ProgressSink | None = None,
    on_item: Callable[[CopyItem], None] | None = None,
) -> CopyReport:
    """Copy the selected snapshots of *src* that *dst* does not hold yet.

    Idempotent: a snapshot whose copy is already in *dst* (found by
    ``meta.copied_from``) is skipped, and nothing is written for it. Each copy is
    durable on its own (packs, index, then manifest); an interrupted copy leaves
    earlier copies intact, and the next run reuses the packs it uploaded.

    Raises UsageError when both are the same repository, SnapshotNotFound for an
    unknown ref, RepositoryLocked when either is locked exclusively. When a snapshot
    cannot be read (damage in the source) the others are still copied, then
    IntegrityError (exit 6) names the damaged object and the snapshots not copied;
    the same for a source manifest that cannot be read.
    """
    src_id, dst_id = str(src.config["id"]), str(dst.config["id"])
    if src_id == dst_id:
        raise UsageError(
            "source and destination are the same repository",
            hint="--to must name another repository (a config file or a URL)",
        )
    report = CopyReport(src_id, dst_id)
    with src.lock(exclusive=False, command="copy (source)"), dst.lock(exclusive=False, command="copy (destination)"):
        src.load_index()
        dst.load_index()
        damaged: list[tuple[str, str]] = []
        snaps = src.list_snapshots(on_error=lambda name, detail: damaged.append((name, detail)))
        for name, detail in damaged:
            log.error("source: damaged manifest %s (%s): that snapshot cannot be copied", name, detail)
        selected = select_snapshots(snaps, list(refs or []), list(sources or []))
        existing = dst.list_snapshots(on_error=lambda name, detail: log.warning("destination: skipping damaged manifest %s: %s", name, detail))
        # The same snapshot under any name: copied from here, the original of a
        # snapshot here, or both copies of one original (a copy of a copy).
        in_dst: dict[tuple[str, str], Snapshot] = {}
        for d in existing:
            for ident in identities(d, dst_id):
                in_dst.setdefault(ident, d)
        present: dict[str, Snapshot] = {}
        for snap in snaps:
            hit = next((in_dst[i] for i in sorted(identities(snap, src_id)) if i in in_dst), None)
            if hit is not None:
                present[snap.id] = hit
        for snap in selected:
            item: CopyItem
            if snap.id in present:
                hit = present[snap.id]
                direct = copied_from(hit) == (src_id, snap.id)
                item = CopyItem(snap, "skipped", copy_id=hit.id,
                                reason="already in the destination" if direct else "the destination holds the same snapshot (copied via another repository)")
            else:
                item = _copy_one(src, dst, snap, src_id, snaps, present, workers, index_every_packs, scratch_root, progress)
                if item.status == "copied":
                    copy = dst.load_snapshot(item.copy_id) if item.copy_id else None
                    if copy is not None:
                        present[snap.id] = copy
            report.items.append(item)
            if on_item:
                on_item(item)
    failed = report.failed
    if damaged and not failed:
        names = ", ".join(n for n, _ in damaged)
        err0 = IntegrityError(
            name=damaged[0][0],
            detail=f"{damaged[0][1]}; {len(damaged)} snapshot manifest(s) of the source cannot be read and were not copied: {names}",
            hint="the other snapshots were copied; 'drkit verify' on the source lists the damage",
        )
        err0.outcome = report
        raise err0
    if failed:
        first = failed[0].error
        names = ", ".join(f"{i.snapshot.short_id} ({i.snapshot.source})" for i in failed)
        if isinstance(first, IntegrityError):
            err: DrkitError = IntegrityError(
                name=first.fields.get("name", "?"),
                detail=f"{first.fields.get('detail', '')}; not copied: {names}",
                hint="run 'drkit verify --read-data' on the source; the other snapshots were copied",
            )
        else:
            err = PartialFailure(f"copy incomplete: not copied: {names}: {first.message if first else ''}")
        err.outcome = report
        raise err
    return report


class _EarlierCopy:
    """The latest earlier copy of the same source, for the files of the snapshot being
    copied whose content it already holds.

    The source's earlier snapshot and its copy are read alongside the new snapshot
    (:class:`~drkit.services.backup.ParentCursor`: every tree is in walk order), one
    entry of each at a time, so memory does not grow with the number of files. A file
    is reused when the earlier snapshot has the same path with the same source chunks
    and size, and its copy the same path and size: :meth:`chunks` then gives the copy's
    destination chunks. A lookup out of walk order finds nothing, and a tree that
    cannot be read ends the pairing with one warning: such files are read from the
    source again (the destination still stores no chunk twice)."""

    def __init__(self, src: Repository, dst: Repository, snap: Snapshot, all_src: list[Snapshot],
                 present: dict[str, Snapshot]) -> None:
        earlier = [s for s in all_src if s.source == snap.source and s.id in present and (s.time, s.id) < (snap.time, snap.id)]
        self._warned = False
        self.of = earlier[-1] if earlier else None
        no_lines: Iterator[bytes] = iter(())
        self._source = ParentCursor(split_lines(tree_chunks(src, self.of)) if self.of else no_lines, on_error=self._unreadable)
        self._copied = ParentCursor(split_lines(tree_chunks(dst, present[self.of.id])) if self.of else no_lines,
                                    on_error=self._unreadable)

    def _unreadable(self, exc: DrkitError) -> None:
        if not self._warned and self.of is not None:
            self._warned = True
            log.warning("cannot reuse the earlier copy %s (%s): reading the rest from the source", self.of.short_id,
                        exc.message)

    def chunks(self, entry: Entry) -> list[str] | None:
        """The destination chunks of file *entry* in the earlier copy, or None."""
        if not entry.chunks:
            return None
        before = self._source.find(entry.path)
        if before is None or before[0].chunks != entry.chunks or before[0].size != entry.size:
            return None
        copied = self._copied.find(entry.path)
        if copied is None or copied[0].size != entry.size or not copied[0].chunks:
            return None
        return copied[0].chunks


def _copy_one(
    src: Repository,
    dst: Repository,
    snap: Snapshot,
    src_id: str,
    all_src: list[Snapshot],
    present: dict[str, Snapshot],
    workers: int,
    index_every_packs: int,
    scratch_root: Path | None,
    progress: ProgressSink | None,
) -> CopyItem:
    started = time.monotonic()
    item = CopyItem(snap, "failed")
    scratch = Path(tempfile.mkdtemp(prefix="drkit-copy-", dir=scratch_root))
    if progress:
        progress.start_source(f"copy {snap.short_id} ({snap.source})", snap.stats.get("size"))
    saver = BlobSaver(dst, workers=workers, index_every_packs=index_every_packs)
    try:
        earlier = _EarlierCopy(src, dst, snap, all_src, present)
        writer = _CopyWriter(
            dst,
            saver,
            _SourceRef(snap.source, snap.source_type),
            parent=None,
            scratch_dir=scratch,
            run_meta=dict(snap.run_meta),
            on_bytes=progress.advance if progress else None,
        )
        with saver:  # finished when every entry is copied, aborted if one raised
            for entry in iter_tree(src, snap):
                if entry.type in (DIR, SYMLINK):
                    writer.copy_dir_or_link(entry)
                elif entry.type == FILE:
                    mapped = earlier.chunks(entry)
                    if mapped is not None and all(dst.index.get(bytes.fromhex(c)) is not None for c in mapped):
                        writer.reuse_file(entry, mapped)
                        item.bytes_reused += entry.size
                        continue
                    stream = BlobStream(src, entry.chunks)
                    try:
                        writer.copy_file(entry, cast(IO[bytes], stream))
                    finally:
                        stream.close()
                else:
                    raise IntegrityError(name=f"snapshot {snap.short_id}", detail=f"unknown entry type {entry.type!r} at {entry.path}")
            tree = writer.finish_tree()
        st = saver.stats
        stats = {k: v for k, v in snap.stats.items() if k not in _WRITE_STATS}
        stats.update(bytes_added=st.bytes_new_raw, bytes_stored=st.bytes_new_sealed, blobs_new=st.blobs_new, packs=st.packs)
        parent_copy = present.get(snap.parent) if snap.parent else None
        meta = dict(snap.meta)
        meta[COPIED_FROM] = {
            "repository": src_id,
            "snapshot": snap.id,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "origins": sorted([list(i) for i in identities(snap, src_id) if i != (src_id, snap.id)]),
        }
        copy = snap.rewritten(tree=tree, stats=stats, meta=meta, parent=parent_copy.id if parent_copy else None)
        dst.save_snapshot(copy)  # last: every blob it references is indexed by now
        item.status = "copied"
        item.copy_id = copy.id
        item.bytes_read = writer.stats.bytes_read
        item.bytes_added = st.bytes_new_raw
        item.bytes_stored = st.bytes_new_sealed
    except DrkitError as exc:
        item.error = exc
        item.reason = exc.message
        log.error("snapshot %s (%s) not copied: %s", snap.short_id, snap.source, exc.message)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        item.seconds = time.monotonic() - started
        if progress:
            progress.end_source()
    return item
