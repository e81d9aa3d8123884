"""Restore: read a snapshot back and put it in place.

:func:`run_restore` is the service the CLI calls: it takes a shared repository lock
before it reads anything, finds the snapshot, and hands a :class:`SnapshotReader` to
the source, which puts the data back (files under a target directory, a datastore
in place, a Git push ...). It returns a :class:`RestoreOutcome`; the CLI only
presents it.

The files-style restore (:meth:`SnapshotReader.write_entries`) works pack by pack,
like restic's restorer: it plans which blob goes to which file offsets, then fetches
each needed pack once (whole, or only the needed ranges), decrypts and verifies each
blob against its keyed id, and writes it to every place that needs it. Files are
written to a temporary and renamed into place only when every one of their chunks
arrived intact: a damaged object never leaves wrong bytes behind under the real
name; the file is reported, and the restore fails. Ctrl-C (or SIGTERM) stops it
within a second: queued work is dropped, temporaries are removed, and only complete
files remain under real names.

Safety rules (see :mod:`drkit.services.restorefs`, which enforces them): nothing a
snapshot says makes the restore write outside its target; every directory is reached
through directory fds without following links; a non-empty target is refused unless
``force``. Owners and set-uid/set-gid/sticky bits are restored only as root (as tar
does). The restored tree is synced once at the end.
"""

from __future__ import annotations

import fnmatch
import io
import logging
import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator, Mapping

from drkit.services import backup_run
from drkit.errors import IntegrityError, ObjectNotFound, Refused, StorageError, UsageError
from drkit.progress import ProgressSink
from drkit.repository import layout
from drkit.repository.blob import BlobError
from drkit.repository.repo import Repository
from drkit.repository.snapshot import Snapshot
from drkit.repository.tree import DIR, FILE, SYMLINK, Entry, iter_tree
from drkit.services.restorefs import Parts, TargetTree, split_path
from drkit.sources.base import RestoreResult

if TYPE_CHECKING:
    from drkit.sources.base import Source

log = logging.getLogger("drkit.restore")

_MERGE_GAP = 1024 * 1024
_ZERO_MIN = 64 * 1024


@dataclass(frozen=True)
class RestoreOptions:
    """What to restore and how; the same object is ``ctx.options`` for the source.

    ``extra`` holds source-specific ``-o KEY=VALUE`` options (documented per source
    under docs/sources/)."""

    target: Path | None = None
    include: tuple[str, ...] = ()
    force: bool = False
    dry_run: bool = False
    in_place: bool = False
    volumes: tuple[str, ...] = ()
    namespace: str | None = None
    """local-path, longhorn: restore as new claims in this namespace."""
    claim: str | None = None
    """longhorn: restore the one selected volume as a claim of this name."""
    push_to: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | None, **fields: Any) -> "RestoreOptions":
        """Build from a mapping (tests, library callers): the known keys become fields,
        the rest goes to ``extra``."""
        data = dict(options or {})
        known = {k: data.pop(k) for k in ("in_place", "volumes", "namespace", "claim", "push_to") if k in data}
        if "volumes" in known:
            known["volumes"] = tuple(known["volumes"] or ())
        return cls(**fields, **known, extra=data)


@dataclass
class RestoreOutcome:
    """What :func:`run_restore` did: the snapshot, the source's result, the lines the
    restore said on the way, and how long it took."""

    snapshot: Snapshot
    source: str
    options: RestoreOptions
    result: RestoreResult
    lines: list[str]
    seconds: float


def run_restore(
    repo: Repository,
    source: "Source",
    snapshot_ref: str,
    options: RestoreOptions,
    *,
    env: Mapping[str, str] | None = None,
    progress: ProgressSink | None = None,
    on_line: Callable[[str], None] | None = None,
) -> RestoreOutcome:
    """Restore snapshot *snapshot_ref* (an id prefix or ``latest``) of *source*.

    Takes a shared lock first (a concurrent prune cannot delete what is being read).
    Raises SnapshotNotFound, UsageError (wrong source type, nowhere to restore),
    RepositoryLocked, Refused (unsafe target or entry), IntegrityError (damaged data:
    raised after everything else was restored)."""
    if options.target is None and not (options.in_place or options.push_to or options.namespace):
        raise UsageError("say where to restore: --target DIR (or --in-place / --namespace / --push-to where the "
                         "source supports it)")
    started = time.monotonic()
    with repo.lock_for("restore"):
        snap = backup_run.find_snapshot(repo, snapshot_ref, source.name)  # latest, an id, or run:ID
        if snap.source_type != source.type_name:
            raise UsageError(f"snapshot {snap.short_id} is of type {snap.source_type}, "
                             f"but source {source.name!r} is {source.type_name}")
        repo.load_index()
        if options.include:
            require_include_matches(repo, snap, options.include)
        if progress:
            progress.start_source(f"restore {source.name}", snap.stats.get("size"))
        reader = SnapshotReader(repo, snap, options=options, env=env,
                                on_bytes=progress.advance if progress else None, on_line=on_line)
        try:
            result = source.restore(reader)
        finally:
            if progress:
                progress.end_source()
    return RestoreOutcome(snap, source.name, options, result, reader.lines, time.monotonic() - started)


def require_include_matches(repo: Repository, snap: Snapshot, patterns: tuple[str, ...] | list[str]) -> None:
    """UsageError naming the first include pattern that matches no path of *snap*:
    a pattern that selects nothing would restore nothing and exit 0."""
    paths = [e.path for e in iter_tree(repo, snap)]
    for pat in patterns:
        if not any(fnmatch.fnmatchcase(p, pat) or fnmatch.fnmatchcase(p, pat.rstrip("/") + "/*") for p in paths):
            raise UsageError(
                f"--include {pat!r} matches nothing in snapshot {snap.short_id}",
                hint="patterns match the full original path, e.g. '*/a.conf' or '/srv/data/dir'; 'drkit ls' lists it",
            )


def safe_destination(target: Path, logical: str) -> Path:
    """Map a logical path to a destination under *target*; Refused if it escapes
    (``..``, NUL, a name over 255 bytes, a name like a restore temporary)."""
    return target.joinpath(*split_path(logical))


def include_matches(path: str, patterns: list[str]) -> bool:
    """True if *path* matches a pattern, is below a matching directory, or is a
    parent directory of a possible match (so the tree above it is created)."""
    if not patterns:
        return True
    for pat in patterns:
        if fnmatch.fnmatchcase(path, pat) or fnmatch.fnmatchcase(path, pat.rstrip("/") + "/*"):
            return True
        if pat.startswith(path.rstrip("/") + "/"):
            return True
    return False


@dataclass
class _FilePlan:
    entry: Entry
    parent: Parts
    name: str
    tmp: str = ""
    failed: str | None = None
    refused: str | None = None
    remaining: int = 0
    done: bool = False


@dataclass
class _BlobUse:
    chunk_id: bytes
    offset: int
    length: int
    blob_type: int
    raw_length: int
    targets: list[tuple[int, int]] = field(default_factory=list)  # (file no, offset in file)


class BlobStream(io.RawIOBase):
    """A verified sequential reader over a list of chunk ids (with read-ahead)."""

    def __init__(self, repo: Repository, chunks: list[str], *, readahead: int = 4) -> None:
        self._repo = repo
        self._ids = [bytes.fromhex(c) for c in chunks]
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="drkit-read")
        self._futures = [self._pool.submit(repo.read_blob, cid) for cid in self._ids[:readahead]]
        self._next = len(self._futures)
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            if not self._futures:
                return 0
            fut = self._futures.pop(0)
            if self._next < len(self._ids):
                self._futures.append(self._pool.submit(self._repo.read_blob, self._ids[self._next]))
                self._next += 1
            self._buf = memoryview(fut.result())
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        super().close()


class SnapshotReader:
    """The :class:`~drkit.sources.base.RestoreContext` handed to a source."""

    def __init__(
        self,
        repo: Repository,
        snapshot: Snapshot,
        *,
        options: RestoreOptions | None = None,
        target: Path | None = None,
        env: Mapping[str, str] | None = None,
        workers: int = 4,
        on_bytes: Callable[[int], None] | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        """*target* is a shorthand for ``RestoreOptions(target=...)`` (library callers)."""
        if options is None:
            options = RestoreOptions(target=target)
        self.repo = repo
        self.snapshot = snapshot
        self.options = options
        self.target = options.target
        self.include = list(options.include)
        self.force = options.force
        self.dry_run = options.dry_run
        self.env: Mapping[str, str] = env if env is not None else dict(os.environ)
        self.lines: list[str] = []
        self._workers = workers
        self._on_bytes = on_bytes
        self._on_line = on_line

    def entries(self) -> Iterator[Entry]:
        return iter_tree(self.repo, self.snapshot)

    def open_entry(self, entry: Entry) -> IO[bytes]:
        return io.BufferedReader(BlobStream(self.repo, entry.chunks), buffer_size=1024 * 1024)

    def say(self, line: str) -> None:
        self.lines.append(line)
        if self._on_line:
            self._on_line(line)

    # -- files-style restore ---------------------------------------------------

    def check_target(self, target: Path) -> None:
        """Refuse a non-empty target unless force (raises Refused)."""
        if target.exists() and not target.is_dir():
            raise Refused(f"target {target} exists and is not a directory")
        if target.is_dir() and any(target.iterdir()) and not self.force:
            raise Refused(
                f"target {target} is not empty",
                hint="restore into an empty directory, or pass --force to overwrite files in it",
            )

    def write_entries(self, target: Path, *, include: list[str] | None = None,
                      entries: Iterator[Entry] | None = None) -> RestoreResult:
        """Restore the snapshot's entries (or *entries*, a selection of them) under
        *target*. Raises Refused before writing anything if a path would escape or the
        target is not empty (without force), and when an entry would lead outside the
        target or replace a directory; raises IntegrityError after restoring everything
        else if some files were damaged (those are not left behind). KeyboardInterrupt
        stops it promptly, leaving only complete files."""
        patterns = self.include if include is None else include
        self.check_target(target)
        source = self.entries() if entries is None else entries
        chosen = [e for e in source if include_matches(e.path, patterns)]
        plans = [(e, split_path(e.path)) for e in chosen]  # validate all first
        result = RestoreResult()
        if self.dry_run:
            for e, parts in plans:
                result.files += e.type == FILE
                result.dirs += e.type == DIR
                result.symlinks += e.type == SYMLINK
                result.bytes_written += e.size if e.type == FILE else 0
                result.lines.append(f"would restore {e.type} {target.joinpath(*parts)}")
            return result
        target.mkdir(parents=True, exist_ok=True)
        tree = TargetTree(target)
        try:
            dirs: list[tuple[Entry, Parts]] = []
            made: set[Parts] = set()
            files: list[_FilePlan] = []
            for e, parts in plans:
                if e.type == DIR:
                    tree.make_dir(parts, replace=self.force)
                    dirs.append((e, parts))
                    made.add(parts)
                    result.dirs += 1
                elif not parts:
                    raise Refused(f"refusing to restore {e.path!r}: a {e.type} cannot replace the target directory")
                elif parts in made:
                    raise Refused(f"refusing to replace directory {'/'.join(parts)} by a {e.type}")
                elif e.type == SYMLINK:
                    tree.symlink(parts, e)
                    result.symlinks += 1
                elif e.type == FILE:
                    tree.pin(parts[:-1])  # create the parents now, in entry order
                    tree.unpin(parts[:-1])
                    files.append(_FilePlan(e, parts[:-1], parts[-1]))
            self._restore_files(tree, files, result)
            for e, parts in reversed(dirs):
                tree.set_dir_meta(parts, e)
            tree.sync()
        finally:
            tree.close()
        refused = [p for p in files if p.refused]
        if refused:
            raise Refused(refused[0].refused or "", hint=f"{len(refused)} entr(y/ies) refused; the rest was restored")
        if result.failed:
            err = IntegrityError(
                name=", ".join(result.failed[:5]) + (" ..." if len(result.failed) > 5 else ""),
                detail=f"{len(result.failed)} file(s) not restored because their data is damaged or missing",
            )
            err.outcome = result  # what was restored, and why the rest failed
            raise err
        return result

    def _restore_files(self, tree: TargetTree, files: list[_FilePlan], result: RestoreResult) -> None:
        """Fetch each needed pack once (worker threads), verify every blob, pwrite it
        into temporary files; a file is put in place (meta, rename) by the thread that
        writes its last chunk, so metadata work overlaps with data work. On
        KeyboardInterrupt: drop queued packs, let running ones stop at their next blob,
        remove the temporaries, re-raise."""
        uses: dict[str, dict[bytes, _BlobUse]] = {}
        for no, plan in enumerate(files):
            offset = 0
            for hex_id in plan.entry.chunks:
                cid = bytes.fromhex(hex_id)
                loc = self.repo.index.get(cid)
                if loc is None:
                    plan.failed = f"chunk {hex_id[:16]} is not in the index"
                    break
                use = uses.setdefault(loc.pack, {}).get(cid)
                if use is None:
                    use = uses[loc.pack][cid] = _BlobUse(cid, loc.offset, loc.length, loc.blob_type, loc.raw_length)
                use.targets.append((no, offset))
                offset += loc.raw_length
                plan.remaining += 1
        lock = threading.Lock()
        stop = threading.Event()
        fds: dict[int, int] = {}

        def fd_for(no: int) -> int:
            """The open temporary of file *no* (created at its full size); call under lock."""
            fd = fds.get(no)
            if fd is None:
                plan = files[no]
                fd, plan.tmp = tree.create_temp(plan.parent, plan.entry.size)
                fds[no] = fd
            return fd

        def finish(no: int, fd: int) -> None:
            plan = files[no]
            try:
                tree.apply_meta_fd(fd, plan.entry, plan.entry.path)
            finally:
                os.close(fd)
            try:
                tree.commit(plan.parent, plan.tmp, plan.name)
            except Refused as exc:
                plan.refused = exc.message
                return
            plan.done = True

        def write(no: int, offset: int, data: bytes | memoryview) -> None:
            plan = files[no]
            if plan.failed or stop.is_set():
                return
            with lock:
                fd = fd_for(no)
            if not _all_zero(data):  # holes stay sparse (the file was ftruncated to size)
                view = memoryview(data)
                while view:
                    n = os.pwrite(fd, view, offset)
                    view = view[n:]
                    offset += n
            with lock:
                plan.remaining -= 1
                last = plan.remaining == 0 and not plan.failed
                if last:
                    fds.pop(no)
            if last:
                finish(no, fd)
            if self._on_bytes:
                self._on_bytes(len(data))

        def fail(targets: list[tuple[int, int]], why: str) -> None:
            for no, _ in targets:
                with lock:
                    files[no].failed = files[no].failed or why

        def do_pack(pack_id: str, blobs: dict[bytes, _BlobUse]) -> None:
            if stop.is_set():
                return
            ordered = sorted(blobs.values(), key=lambda u: u.offset)
            name = layout.pack_name(pack_id)
            # Each blob is authenticated (AES-GCM) and checked against its keyed id
            # below, so the pack's SHA-256 (a keyless bitrot check) is not needed here.
            try:
                pieces = [(u, sealed) for group, data in _fetch(self.repo.storage, name, ordered) for u, sealed in _split(group, data)]
            except (IntegrityError, ObjectNotFound, StorageError) as exc:
                for u in ordered:
                    fail(u.targets, f"{name}: {exc.message}")
                return
            for u, sealed in pieces:
                if stop.is_set():
                    return
                if sealed is None:
                    fail(u.targets, f"{name}: pack is truncated (blob {u.chunk_id.hex()[:16]} is cut off)")
                    continue
                try:
                    plain = self.repo.codec.decode_view(u.blob_type, u.chunk_id, sealed, u.raw_length)
                except BlobError as exc:
                    fail(u.targets, f"{name}: {exc}")
                    continue
                for no, off in u.targets:
                    write(no, off, plain)

        pool = ThreadPoolExecutor(self._workers, thread_name_prefix="drkit-restore")
        try:
            futures: list[Future[None]] = [pool.submit(do_pack, p, b) for p, b in uses.items()]
            pending = set(futures)
            while pending:  # a timed wait: Ctrl-C is seen at once, not after the queue drains
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
                for fut in done:
                    fut.result()
        except BaseException:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            for fd in fds.values():
                os.close(fd)
            fds.clear()
            raise  # tree.close() (the caller's finally) removes the temporaries
        pool.shutdown(wait=True)
        for fd in fds.values():  # temporaries of files that failed part-way
            os.close(fd)
        fds.clear()

        for no, plan in enumerate(files):
            if not plan.done and not plan.failed and not plan.refused and not plan.remaining:
                fd, plan.tmp = tree.create_temp(plan.parent, 0)  # a file without chunks (empty)
                finish(no, fd)
            if plan.done:
                result.files += 1
                result.bytes_written += plan.entry.size
                continue
            if plan.tmp:
                tree.discard(plan.parent, plan.tmp)
            if plan.refused:
                result.lines.append(f"REFUSED {plan.entry.path}: {plan.refused}")
                continue
            why = plan.failed or "not all chunks were written"
            result.failed.append(plan.entry.path)
            result.lines.append(f"FAILED {plan.entry.path}: {why}")
            log.error("not restored: %s: %s", plan.entry.path, why)


def _all_zero(data: bytes | memoryview) -> bool:
    """True for a block of at least _ZERO_MIN zero bytes (written as a hole)."""
    n = len(data)
    if n < _ZERO_MIN or data[0] or data[n - 1] or data[n // 2]:
        return False
    return bytes(data) == bytes(n) if isinstance(data, memoryview) else data == bytes(n)


def _fetch(storage: Any, name: str, ordered: list[_BlobUse]) -> Iterator[tuple[list[_BlobUse], memoryview]]:
    """Read the byte ranges of *ordered* blobs (sorted by offset) from pack *name*,
    merging ranges whose gap is small, so a mostly-needed pack is one read."""
    group: list[_BlobUse] = []
    start = end = 0
    for u in ordered:
        if group and u.offset - end > _MERGE_GAP:
            yield group, memoryview(storage.get(name, start, end - start))
            group = []
        if not group:
            start = u.offset
        group.append(u)
        end = max(end, u.offset + u.length)
    if group:
        yield group, memoryview(storage.get(name, start, end - start))


def _split(group: list[_BlobUse], data: memoryview) -> Iterator[tuple[_BlobUse, memoryview | None]]:
    """The sealed bytes of each blob of a merged read; None where the read came back
    short (a truncated pack: only the blobs cut off fail)."""
    start = group[0].offset
    for u in group:
        piece = data[u.offset - start : u.offset - start + u.length]
        yield u, piece if len(piece) == u.length else None
