"""Restore: read a snapshot back and put it in place.

The files-style restore (:meth:`SnapshotReader.write_entries`) works pack by pack,
like restic's restorer: it plans which blob goes to which file offsets, then fetches
each needed pack once (whole, or only the needed ranges), decrypts and verifies each
blob against its keyed id, and writes it to every place that needs it. Files are
written to a temporary name next to their destination and renamed into place only
when every one of their chunks arrived intact: a damaged object never leaves wrong
bytes behind under the real name; the file is reported, and the restore fails.

Safety rules: every entry's destination must stay inside the target directory (no
``..``, no absolute paths, no existing symlink on the way); a non-empty target is
refused unless ``force``.
"""

from __future__ import annotations

import fnmatch
import io
import logging
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Mapping

from drkit.errors import IntegrityError, ObjectNotFound, Refused, StorageError
from drkit.repository import layout
from drkit.repository.blob import BlobError
from drkit.repository.repo import Repository
from drkit.repository.snapshot import Snapshot
from drkit.repository.tree import DIR, FILE, SYMLINK, Entry
from drkit.services.backup import iter_tree
from drkit.sources.base import RestoreResult

log = logging.getLogger("drkit.restore")

TMP_SUFFIX = ".drkit-restore"
_MERGE_GAP = 1024 * 1024
_ZERO_MIN = 64 * 1024


def safe_destination(target: Path, logical: str) -> Path:
    """Map a logical path to a destination under *target*; Refused if it escapes."""
    rel = logical.lstrip("/")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts:
        return target
    if any(p == ".." for p in parts) or "\x00" in rel:
        raise Refused(f"refusing to restore {logical!r}: the path would escape the target directory")
    return target.joinpath(*parts)


def _check_no_symlink_parents(target: Path, dest: Path) -> None:
    cur = target
    for part in dest.relative_to(target).parts[:-1]:
        cur = cur / part
        try:
            if stat.S_ISLNK(os.lstat(cur).st_mode):
                raise Refused(f"refusing to restore {dest}: {cur} is a symlink (it could lead outside the target)")
        except FileNotFoundError:
            return


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
    dest: Path
    tmp: Path
    failed: str | None = None
    remaining: int = 0
    done: bool = False


@dataclass
class _BlobUse:
    chunk_id: bytes
    offset: int
    length: int
    blob_type: int
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
        target: Path | None,
        include: list[str] | None = None,
        force: bool = False,
        dry_run: bool = False,
        options: dict[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        workers: int = 4,
        on_bytes: Callable[[int], None] | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        self.repo = repo
        self.snapshot = snapshot
        self.target = target
        self.include = list(include or [])
        self.force = force
        self.dry_run = dry_run
        self.options = dict(options or {})
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

    def write_entries(self, target: Path, *, include: list[str] | None = None) -> RestoreResult:
        """Restore the snapshot's entries under *target*. Raises Refused before writing
        anything if a path would escape or the target is not empty (without force);
        raises IntegrityError after restoring everything else if some files were
        damaged (those are not left behind)."""
        patterns = self.include if include is None else include
        self.check_target(target)
        entries = [e for e in self.entries() if include_matches(e.path, patterns)]
        plans = [(e, safe_destination(target, e.path)) for e in entries]  # validate all first
        result = RestoreResult()
        if self.dry_run:
            for e, dest in plans:
                result.files += e.type == FILE
                result.dirs += e.type == DIR
                result.symlinks += e.type == SYMLINK
                result.bytes_written += e.size if e.type == FILE else 0
                result.lines.append(f"would restore {e.type} {dest}")
            return result
        target.mkdir(parents=True, exist_ok=True)
        dirs: list[tuple[Entry, Path]] = []
        files: list[_FilePlan] = []
        safe_parents: set[Path] = set()  # parents already checked: no lstat walk per entry
        for e, dest in plans:
            if dest.parent not in safe_parents:
                _check_no_symlink_parents(target, dest)
                safe_parents.add(dest.parent)
            if e.type == DIR:
                if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
                    dest.unlink()
                dest.mkdir(parents=True, exist_ok=True, mode=0o700)
                dirs.append((e, dest))
                result.dirs += 1
            elif e.type == SYMLINK:
                dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                if dest.is_symlink() or dest.exists():
                    if dest.is_dir() and not dest.is_symlink():
                        raise Refused(f"refusing to replace directory {dest} by a symlink")
                    dest.unlink()
                os.symlink(e.target, dest)
                _apply_meta(dest, e, symlink=True)
                result.symlinks += 1
            elif e.type == FILE:
                dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                files.append(_FilePlan(e, dest, dest.with_name(dest.name + TMP_SUFFIX)))
        self._restore_files(files, result)
        for e, dest in reversed(dirs):
            _apply_meta(dest, e)
        if result.failed:
            err = IntegrityError(
                name=", ".join(result.failed[:5]) + (" ..." if len(result.failed) > 5 else ""),
                detail=f"{len(result.failed)} file(s) not restored because their data is damaged or missing",
            )
            err.result = result  # type: ignore[attr-defined]  # what was restored, and why the rest failed
            raise err
        return result

    def _restore_files(self, files: list[_FilePlan], result: RestoreResult) -> None:
        """Fetch each needed pack once (worker threads), verify every blob, pwrite it
        into temporary files; a file is put in place (meta, rename) by the thread that
        writes its last chunk, so metadata work overlaps with data work."""
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
                    use = uses[loc.pack][cid] = _BlobUse(cid, loc.offset, loc.length, loc.blob_type)
                use.targets.append((no, offset))
                offset += loc.raw_length
                plan.remaining += 1
        lock = threading.Lock()
        fds: dict[int, int] = {}

        def fd_for(no: int) -> int:
            """The open temporary of file *no* (created at its full size); call under lock."""
            fd = fds.get(no)
            if fd is None:
                fd = _create_tmp(files[no])
                fds[no] = fd
            return fd

        def write(no: int, offset: int, data: bytes | memoryview) -> None:
            plan = files[no]
            if plan.failed:
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
                    os.close(fds.pop(no))
            if last:
                _finish_file(plan)
            if self._on_bytes:
                self._on_bytes(len(data))

        def fail(targets: list[tuple[int, int]], why: str) -> None:
            for no, _ in targets:
                with lock:
                    files[no].failed = files[no].failed or why

        def do_pack(pack_id: str, blobs: dict[bytes, _BlobUse]) -> None:
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
                if sealed is None:
                    fail(u.targets, f"{name}: pack is truncated (blob {u.chunk_id.hex()[:16]} is cut off)")
                    continue
                try:
                    plain = self.repo.codec.decode_view(u.blob_type, u.chunk_id, sealed)
                except BlobError as exc:
                    fail(u.targets, f"{name}: {exc}")
                    continue
                for no, off in u.targets:
                    write(no, off, plain)

        try:
            with ThreadPoolExecutor(self._workers, thread_name_prefix="drkit-restore") as pool:
                for fut in [pool.submit(do_pack, p, b) for p, b in uses.items()]:
                    fut.result()
        finally:
            for fd in fds.values():
                os.close(fd)
            fds.clear()

        for plan in files:
            if not plan.done and not plan.failed and not plan.remaining:
                os.close(_create_tmp(plan))  # a file without chunks (empty)
                _finish_file(plan)
            if plan.done:
                result.files += 1
                result.bytes_written += plan.entry.size
                continue
            try:
                plan.tmp.unlink()
            except FileNotFoundError:
                pass
            why = plan.failed or "not all chunks were written"
            result.failed.append(plan.entry.path)
            result.lines.append(f"FAILED {plan.entry.path}: {why}")
            log.error("not restored: %s: %s", plan.entry.path, why)


def _create_tmp(plan: _FilePlan) -> int:
    """Create (or truncate) the temporary of *plan* at the file's size; returns the fd."""
    fd = os.open(plan.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, plan.entry.size)
    except OSError:
        os.close(fd)
        raise
    return fd


def _finish_file(plan: _FilePlan) -> None:
    """Metadata, then rename over the destination (atomic). Raises Refused for a directory."""
    if plan.dest.is_dir() and not plan.dest.is_symlink():
        raise Refused(f"refusing to replace directory {plan.dest} by a file")
    _apply_meta(plan.tmp, plan.entry)
    os.replace(plan.tmp, plan.dest)
    plan.done = True


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


def _apply_meta(path: Path, e: Entry, *, symlink: bool = False) -> None:
    """Owner (when root), mode and mtime; best effort for owner."""
    if os.geteuid() == 0:
        try:
            os.chown(path, e.uid, e.gid, follow_symlinks=not symlink)
        except OSError as exc:
            log.warning("cannot set owner of %s: %s", path, exc.strerror)
    if not symlink:
        os.chmod(path, e.mode)
    if symlink and os.utime not in os.supports_follow_symlinks:
        return  # this platform cannot set a symlink's own mtime
    try:
        os.utime(path, ns=(e.mtime_ns, e.mtime_ns), follow_symlinks=not symlink)
    except OSError as exc:
        log.warning("cannot set mtime of %s: %s", path, exc.strerror)

