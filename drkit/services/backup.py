"""Backup: run each source against a snapshot writer, then store the manifests.

One ``drkit backup`` is a *run*: every selected source gets its own snapshot, all
sharing a run id and the run metadata (K3s version, node name ...). Per source, data
goes through a :class:`~drkit.repository.saver.BlobSaver` (packs, then index); the
manifests of the run are written last, together, after every index. A source that
fails does not stop the others: the run then ends as a partial failure.
"""

from __future__ import annotations

import binascii
import grp
import itertools
import logging
import os
import pwd
import re
import secrets
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Mapping, Protocol, Sequence

from drkit import __version__
from drkit.errors import DrkitError, IntegrityError, NothingRead, PartialFailure
from drkit.gctune import fewer_collections
from drkit.repository.blob import BLOB_TREE
from drkit.repository.chunker import cut_blocks, cut_file, new_buffer
from drkit.repository.repo import Repository
from drkit.repository.saver import RUN_FILE_MAX, BlobSaver, BlobTicket, FileRun
from drkit.repository.sealprocs import seal_worker_count
from drkit.repository.snapshot import Snapshot, now_iso
from drkit.smallread import EMPTY, open_regular, read_whole
from drkit.progress import ProgressSink
from drkit.repository.tree import (
    DIR,
    FILE,
    SYMLINK,
    Entry,
    encode_entries,
    entry_line,
    file_line,
    line_path,
    owner_fragment,
    parse_line,
    split_lines,
    stored_chunk_ids,
    tree_chunks,
    walk_order_key,
)
from drkit.sources.base import Source

log = logging.getLogger("drkit.backup")

_DEFERRED_MAX = 4096
"""Entries held behind a file still being hashed before the walk waits for it: a
change near the start of a large unchanged tree no longer holds the whole tree. (A run
of new small files, :class:`_LaterRun`, counts once: the saver bounds the blobs in
flight, and a run is written as soon as it is done.)"""


class _Names:
    """Cached uid/gid -> name lookups."""

    def __init__(self) -> None:
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}
        self._fragments: dict[tuple[int, int, str, str], str | None] = {}
        self._owners: dict[tuple[int, int], str | None] = {}

    def owner(self, uid: int, gid: int) -> str | None:
        """:func:`~drkit.repository.tree.owner_fragment` of an owner, with the names of
        *uid* and *gid* (cached: one lookup per file)."""
        try:
            return self._owners[uid, gid]
        except KeyError:
            found = self._owners[uid, gid] = self.fragment_of(uid, gid, self.user(uid), self.group(gid))
            return found

    def fragment_of(self, uid: int, gid: int, user: str, group: str) -> str | None:
        key = (uid, gid, user, group)
        if key not in self._fragments:
            self._fragments[key] = owner_fragment(uid, gid, user, group)
        return self._fragments[key]

    def user(self, uid: int) -> str:
        if uid not in self._users:
            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._users[uid] = ""
        return self._users[uid]

    def group(self, gid: int) -> str:
        if gid not in self._groups:
            try:
                self._groups[gid] = grp.getgrgid(gid).gr_name
            except KeyError:
                self._groups[gid] = ""
        return self._groups[gid]


def _unreadable_line(exc: Exception) -> IntegrityError:
    return IntegrityError(name="parent tree", detail=f"unreadable entry ({exc})")


class ParentCursor:
    """The entries of a parent snapshot, found by path while the new snapshot is
    written in the same (walk) order, holding one stored line (and one tree blob) at
    a time.

    ``find_line(path)`` moves forward past every line that sorts before *path* and
    returns *path*'s stored JSON line if there is one (any type): an unchanged file
    compares it with what it would write (:func:`~drkit.repository.tree.file_line_frame`)
    and reuses it as it is. ``find(path)`` parses that line: ``(entry, line)`` for
    *path*'s file entry, *line* None if it holds keys this version does not read.
    ``following_line()`` steps to the next line without reading its path, for a caller
    that compares the whole line with what it expects. A line's path is read only when
    a lookup needs it, and a line is parsed only when its path is escaped in JSON or
    when ``find`` asks. A lookup that comes out of order finds nothing, which only
    costs a re-read. A tree blob that cannot be read, or a line that does not parse,
    ends the parent (``on_error`` is told): the rest of the run reads everything, as
    with no parent."""

    def __init__(self, lines: Iterator[bytes], *, on_error: Callable[[DrkitError], None] | None = None) -> None:
        self._lines = lines
        self._on_error = on_error
        self._line: bytes | None = None
        self._path: str | None = None
        """The current line's path once read (None: not read yet)."""
        self._parsed: tuple[Entry, bool] | None = None
        self._advance()

    def _advance(self) -> None:
        try:
            self._line = next(self._lines, None)
        except DrkitError as exc:
            self._end(exc)
            return
        self._path = None
        self._parsed = None

    def _current_path(self) -> str | None:
        """The path of the current line (None when there is none left)."""
        line = self._line
        if line is None or self._path is not None:
            return self._path
        path = line_path(line)
        if path is None:
            try:
                self._parsed = parse_line(line)
            except (ValueError, TypeError) as exc:  # trees are authenticated: only a bug makes one
                self._end(_unreadable_line(exc))
                return None
            path = self._parsed[0].path
        self._path = path
        return path

    def _end(self, exc: DrkitError) -> None:
        if self._on_error is not None:
            self._on_error(exc)
        self._line = None
        self._path = None
        self._parsed = None
        self._lines = iter(())

    @property
    def done(self) -> bool:
        """True once no line is left (always, without a parent): nothing more is found."""
        return self._line is None

    def find_line(self, path: str) -> bytes | None:
        key = walk_order_key(path)
        current = self._current_path()
        while current is not None and walk_order_key(current) < key:
            self._advance()
            current = self._current_path()
        return self._line if current == path else None

    def following_line(self) -> bytes | None:
        """The line after the current one (None at the end), its path not read: for a
        caller that compares the whole line with what it expects, right after
        :meth:`find_line` or this returned the line of the path walked before (in an
        unchanged tree the following line is the next path's). A :meth:`find_line`
        afterwards starts from this line."""
        if self._line is not None:
            self._advance()
        return self._line

    def find(self, path: str) -> tuple[Entry, bytes | None] | None:
        line = self.find_line(path)
        if line is None:
            return None
        if self._parsed is None:
            try:
                self._parsed = parse_line(line)
            except (ValueError, TypeError) as exc:
                self._end(_unreadable_line(exc))
                return None
        entry, reusable = self._parsed
        if entry.type != FILE:
            return None
        return entry, line if reusable else None


@dataclass
class SourceStats:
    bytes_read: int = 0
    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0
    dirs: int = 0
    symlinks: int = 0
    size: int = 0
    errors: int = 0


class Named(Protocol):
    """What a :class:`SnapshotWriter` needs of its source: the name (copy has no Source)."""

    @property
    def name(self) -> str: ...


@dataclass(slots=True)
class _LaterRead:
    """A small file handed to the saver to read (:meth:`SnapshotWriter.add_file` with
    ``read_later``), waiting behind earlier entries."""

    entry: Entry
    ticket: BlobTicket
    real_path: str | os.PathLike[str]
    new: bool
    """Counted as a new file (else as a changed one)."""


@dataclass
class _LaterRun:
    """New small files handed to the saver together (:meth:`SnapshotWriter.add_new_files`),
    waiting behind earlier entries."""

    files: Sequence[tuple[str, str, os.stat_result]]
    """(real path, logical path, ``lstat``) of each, in order."""
    run: FileRun


class SnapshotWriter:
    """The :class:`~drkit.sources.base.BackupContext` handed to a source."""

    def __init__(
        self,
        repo: Repository,
        saver: BlobSaver,
        source: Named,
        *,
        parent: Snapshot | None,
        scratch_dir: Path,
        run_meta: dict[str, Any],
        env: Mapping[str, str] | None = None,
        on_bytes: Callable[[int], None] | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> None:
        self.repo = repo
        self.saver = saver
        self.source_name = source.name
        self.scratch_dir = scratch_dir
        self.meta: dict[str, Any] = {}
        self.run_meta = run_meta
        self.env: Mapping[str, str] = env if env is not None else {}
        self.stats = SourceStats()
        self.warnings: list[str] = []
        self.notes: list[str] = []
        self.paths: list[str] = []
        self._parent_snap = parent
        self._parent: ParentCursor | None = None
        self._chunker = repo.chunker()
        self._readbuf: bytearray | None = None
        self._deferred: deque[tuple[Entry, list[BlobTicket]] | _LaterRead | _LaterRun | bytes] = deque()
        """What waits to be written behind a file whose chunk ids are not known yet, in
        order: (entry, tickets) of such a file, a :class:`_LaterRead` or :class:`_LaterRun`,
        the encoded line of anything else. At most
        :data:`_DEFERRED_MAX` long (memory does not grow with the files behind a change)."""
        self._entries = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024, dir=str(scratch_dir))
        self._lines: list[bytes] = []
        """Encoded entries not yet written to ``_entries`` (written 512 at a time)."""
        self._count = 0
        self._names = _Names()
        self._on_bytes = on_bytes
        self._on_text = on_text

    # -- BackupContext ---------------------------------------------------------

    def parent_entry(self, path: str) -> Entry | None:
        """The file entry of *path* in this source's previous snapshot, if any.

        Lookups are served by a cursor that walks the parent's tree once, in step with
        this run (see :class:`ParentCursor`): memory stays flat however many files the
        parent holds. Paths looked up out of walk order are not found (the file is then
        read again: slower, never wrong)."""
        found = self._cursor().find(path)
        return found[0] if found else None

    def _cursor(self) -> ParentCursor:
        if self._parent is None:
            lines: Iterator[bytes] = iter(())
            if self._parent_snap is not None:
                lines = split_lines(tree_chunks(self.repo, self._parent_snap))
            self._parent = ParentCursor(lines, on_error=self._parent_unreadable)
        return self._parent

    def _parent_unreadable(self, exc: DrkitError) -> None:
        assert self._parent_snap is not None
        log.warning("parent snapshot %s unreadable (%s); reading the rest", self._parent_snap.short_id, exc)

    def progress(self, text: str) -> None:
        if self._on_text:
            self._on_text(text)

    def note(self, text: str) -> None:
        """A notice that is not a failure; kept in the snapshot's meta."""
        self.meta.setdefault("notes", []).append(text)
        self.notes.append(text)
        log.info("%s: %s", self.source_name, text)

    def warn(self, text: str) -> None:
        """Record a problem that skips one item but not the snapshot."""
        self.warnings.append(text)
        self.stats.errors += 1
        log.warning("%s: %s", self.source_name, text)

    def add_dir(self, path: str, st: os.stat_result | None = None, *, mode: int = 0o755) -> Entry:
        entry = self._from_stat(path, DIR, st) if st else Entry(path=path, type=DIR, mode=mode, mtime_ns=time.time_ns())
        self.stats.dirs += 1
        return self.record(entry)

    def add_symlink(self, path: str, target: str, st: os.stat_result | None = None) -> Entry:
        entry = self._from_stat(path, SYMLINK, st) if st else Entry(path=path, type=SYMLINK, mode=0o777)
        entry.target = target
        self.stats.symlinks += 1
        return self.record(entry)

    def add_file(self, path: str, real_path: str | os.PathLike[str], st: os.stat_result | None = None, *,
                 read_later: bool = False) -> Entry:
        """See :meth:`BackupContext.add_file`. With *read_later*, a small file may be
        read by a worker process after this returns (:meth:`BlobSaver.submit_file`):
        the entry's size and chunks are settled then (a file unreadable by then is
        skipped with a warning, as it would have been here)."""
        if st is None:
            st = os.lstat(real_path)
        cursor = self._cursor()
        line = cursor.find_line(path)
        if line is not None:
            ids = self._unchanged_ids(path, st, line)
            if ids is not None:
                user, group = self._names.user(st.st_uid), self._names.group(st.st_gid)
                entry = Entry(path, FILE, st.st_mode & 0o7777, st.st_uid, st.st_gid, user, group, st.st_mtime_ns, st.st_size,
                              [chunk_id.decode("ascii") for chunk_id in ids], "", st.st_ino, st.st_ctime_ns, st.st_dev)
                self._count_unmodified(st.st_size)
                return self._record(entry, line + b"\n")
        found = cursor.find(path) if line is not None else None
        if found is not None and self._same_file(found[0], st) and all(self.saver.known(bytes.fromhex(c)) for c in found[0].chunks):
            same, reusable = found
            self._count_unmodified(same.size)
            if reusable is not None and self._same_record(same, st):
                return self._record(same, reusable + b"\n")  # stored otherwise than this version writes it
            entry = self._from_stat(path, FILE, st)
            entry.chunks = list(same.chunks)
            return self.record(entry)
        old = found[0] if found else None
        entry = self._from_stat(path, FILE, st)
        if read_later and 0 < entry.size <= self._chunker.min_size and self.saver.reads_files:
            ticket = self.saver.submit_file(os.fsencode(real_path), entry.size, self._chunker.min_size)
            self._deferred.append(_LaterRead(entry, ticket, real_path, old is None))
            self._count_file(new=old is None)
            self._flush_deferred(wait=False)
            return entry
        small = read_whole(real_path, entry.size, self._chunker.min_size) if entry.size <= self._chunker.min_size else None
        if small is not None:
            # At most min_size bytes are one chunk (what cutting would yield): no cutting,
            # one read, one open; the blob joins a batch of small ones in the saver.
            tickets = [self.saver.submit(small)] if small else []
            entry.size = len(small)
            self._count_read(entry.size)
        else:
            tickets, entry.size = self._stream_file(real_path)
        self._count_file(new=old is None)
        # Recorded (with its chunk ids) once the workers have hashed every chunk; the
        # next file is read meanwhile. Entries keep their order.
        self._deferred.append((entry, tickets))
        self._flush_deferred(wait=False)
        return entry

    def add_new_files(self, files: Sequence[tuple[str, str, os.stat_result]], start: int = 0) -> tuple[int, int]:
        """See :meth:`BackupContext.add_new_files`: while the saver's worker processes
        read small files (:attr:`BlobSaver.reads_files`) and no parent entry is left to
        compare with, the small regular files (at most
        :data:`~drkit.repository.saver.RUN_FILE_MAX` bytes) from *start* on go to them together
        (:meth:`BlobSaver.submit_files`), and each is recorded when its run is done, as
        :meth:`add_file` with ``read_later`` records one (no :class:`Entry`, ticket or
        lookup per file). Before the workers read files, it tells the saver that new
        files follow (:meth:`BlobSaver.expect_new_files`: they start sooner)."""
        saver = self.saver
        if not self._cursor().done:
            return 0, 0
        if not saver.reads_files:
            saver.expect_new_files()  # (the workers start sooner)
            return 0, 0
        limit = self._chunker.min_size
        largest = min(limit, RUN_FILE_MAX)
        end, size = start, 0
        while end < len(files) and 0 < files[end][2].st_size <= largest:
            size += files[end][2].st_size
            end += 1
        if end == start:
            return 0, 0
        taken = files[start:end]
        runs = saver.submit_files([(os.fsencode(real), st.st_size, limit) for real, _, st in taken])
        deferred, at = self._deferred, 0
        for run in runs:
            deferred.append(_LaterRun(taken[at : at + len(run.files)], run))
            at += len(run.files)
        self.stats.files_new += len(taken)  # (no parent entry: each is new)
        self._flush_deferred(wait=False)
        return len(taken), size

    def add_stream(self, path: str, stream: IO[bytes], *, mode: int = 0o600, mtime_ns: int | None = None) -> Entry:
        entry = Entry(path=path, type=FILE, mode=mode, uid=os.getuid(), gid=os.getgid(), mtime_ns=mtime_ns or time.time_ns())
        entry.chunks, entry.size = self.store(stream)
        self.stats.files_new += 1
        return self.record(entry)

    def add_bytes(self, path: str, data: bytes, *, mode: int = 0o600, mtime_ns: int | None = None) -> Entry:
        import io

        return self.add_stream(path, io.BytesIO(data), mode=mode, mtime_ns=mtime_ns)

    # -- internals -------------------------------------------------------------

    def _from_stat(self, path: str, kind: str, st: os.stat_result) -> Entry:
        return Entry(
            path=path,
            type=kind,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            user=self._names.user(st.st_uid),
            group=self._names.group(st.st_gid),
            mtime_ns=st.st_mtime_ns,
            size=st.st_size if kind == FILE else 0,
            inode=st.st_ino if kind == FILE else 0,
            ctime_ns=st.st_ctime_ns if kind == FILE else 0,
            dev=st.st_dev if kind == FILE else 0,
        )

    def add_unchanged(self, files: Sequence[tuple[str, str, os.stat_result]], start: int = 0) -> tuple[int, int] | None:
        """See :meth:`BackupContext.add_unchanged`: each file recorded as its parent's
        stored line (no parsing, no encoding, no :class:`Entry`), as :meth:`add_file`
        records an unchanged file."""
        cursor = self._cursor()
        if cursor.done:
            return None
        unchanged_ids, record_line = self._unchanged_ids, self._record_line
        count = size = 0
        for _real, path, st in itertools.islice(files, start, None):
            # The line after the last one taken is tried first: if it is this file's
            # unchanged entry, comparing it whole also compares its path.
            line = cursor.following_line() if count else None
            if line is None or unchanged_ids(path, st, line) is None:
                tried, line = line, cursor.find_line(path)
                if line is None or line is tried or unchanged_ids(path, st, line) is None:
                    break  # (the line just compared is this file's: it changed)
            record_line(line + b"\n")
            count += 1
            size += st.st_size
        if count:
            self._count_unmodified(size, count)
        return count, size

    def _unchanged_ids(self, path: str, st: os.stat_result, line: bytes) -> list[bytes] | None:
        """The chunk ids (hex, as bytes) of an unchanged file whose parent entry is the
        stored *line*, if *line* is byte for byte what this file's entry would be
        written as (:func:`~drkit.repository.tree.file_line_frame`: the same stat data,
        owner and path) and every chunk is in the repository; else None."""
        owner = self._names.owner(st.st_uid, st.st_gid)
        if owner is None:
            return None
        ids = stored_chunk_ids(line, path, st.st_mode & 0o7777, owner, st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns,
                               st.st_dev)  # (mode: S_IMODE)
        if ids is None:
            return None
        known = self.saver.known
        try:
            for chunk_id in ids:
                if not known(binascii.unhexlify(chunk_id)):
                    return None
        except binascii.Error:  # not hex: what the line says is not what this file would get
            return None
        return ids

    def _count_unmodified(self, size: int, files: int = 1) -> None:
        self.stats.files_unmodified += files
        self.stats.size += size
        if self._on_bytes:
            self._on_bytes(size)

    @staticmethod
    def _same_file(old: Entry, st: os.stat_result) -> bool:
        """True when stat data says the content of *old*'s file cannot have changed: the
        same size, mtime and ctime (to the nanosecond), inode and device."""
        return (
            old.type == FILE
            and old.size == st.st_size
            and old.mtime_ns == st.st_mtime_ns
            and old.ctime_ns == st.st_ctime_ns
            and old.inode == st.st_ino
            and old.dev == st.st_dev
        )

    def _same_record(self, old: Entry, st: os.stat_result) -> bool:
        """True when *old* is, field for field, the entry :meth:`_from_stat` would make
        of *st* (given :meth:`_same_file` and the same chunks)."""
        return (
            old.mode == stat.S_IMODE(st.st_mode)
            and old.uid == st.st_uid
            and old.gid == st.st_gid
            and not old.target
            and old.user == self._names.user(st.st_uid)
            and old.group == self._names.group(st.st_gid)
        )

    def store(self, stream: IO[bytes]) -> tuple[list[str], int]:
        """Chunk *stream* and store every chunk; return (chunk ids, size). For writers
        that build entries themselves (copy); sources use the add_* methods."""
        tickets, size = self._queue(stream)
        return [t.id().hex() for t in tickets], size

    def _queue(self, stream: IO[bytes]) -> tuple[list[BlobTicket], int]:
        """Chunk *stream* and queue every chunk with the saver, without waiting for
        the workers; return (tickets, size).

        Reads large blocks into a reused buffer and cuts them there
        (:func:`~drkit.repository.chunker.cut_blocks`: boundaries are ``cut_stream``'s). Hashing, dedup and sealing happen in
        the saver's workers while this thread reads on."""
        tickets: list[BlobTicket] = []
        size = 0
        on_bytes = self._on_bytes
        if self._readbuf is None:
            self._readbuf = new_buffer(self._chunker)
        for data in cut_blocks(self._chunker, stream, self._readbuf):
            tickets.append(self.saver.submit(data))
            size += len(data)
            if on_bytes:
                on_bytes(len(data))
        self.stats.bytes_read += size
        self.stats.size += size
        return tickets, size

    def record(self, entry: Entry) -> Entry:
        """Append *entry* to the tree as it is (in order, behind files still being hashed)."""
        return self._record(entry, None)

    def _record(self, entry: Entry, line: bytes | None) -> Entry:
        """Append *entry*, as *line* if given (its encoding, newline included)."""
        self._record_line(self._encode(entry) if line is None else line)
        return entry

    def _record_line(self, line: bytes) -> None:
        """Append an encoded entry (newline included), in order behind files still being hashed."""
        deferred = self._deferred
        if not deferred:
            self._write_line(line)
            return
        deferred.append(line)
        if len(deferred) > _DEFERRED_MAX:
            self._flush_deferred(wait=False)
            if len(deferred) > _DEFERRED_MAX:
                self._flush_deferred(wait=True)

    def _encode(self, entry: Entry) -> bytes:
        """*entry*'s line in the tree, newline included."""
        if entry.type in (FILE, DIR):
            owner = self._names.fragment_of(entry.uid, entry.gid, entry.user, entry.group)
            line = entry_line(entry, owner) if owner is not None else None
            if line is not None:
                return line
        (line,) = encode_entries([entry])
        return line

    def _write_line(self, line: bytes) -> None:
        lines = self._lines
        lines.append(line)
        if len(lines) >= 512:
            self._entries.write(b"".join(lines))
            lines.clear()
        self._count += 1

    def _flush_deferred(self, *, wait: bool) -> None:
        """Write deferred entries, in order, whose chunk ids are known (all if *wait*:
        waits for the workers)."""
        deferred = self._deferred
        while deferred:
            item = deferred[0]
            if isinstance(item, bytes):
                line = item
            elif isinstance(item, _LaterRead):
                if not wait and not item.ticket.done():
                    return
                deferred.popleft()
                settled = self._settle(item)
                if settled is not None:
                    self._write_line(settled)
                continue
            elif isinstance(item, _LaterRun):
                if not wait and not item.run.done():
                    return
                deferred.popleft()
                self._settle_run(item)
                continue
            else:
                entry, tickets = item
                if tickets:
                    if not wait and not all(t.done() for t in tickets):
                        return
                    entry.chunks = [t.id().hex() for t in tickets]
                line = self._encode(entry)
            deferred.popleft()
            self._write_line(line)

    def _settle(self, later: _LaterRead) -> bytes | None:
        """The line of a file read by a worker (waits for it; re-raises its error), or
        None when the file could not be read (see :meth:`_settled_line`)."""
        ticket = later.ticket
        ticket.id()
        return self._settled_line(later.entry, ticket.chunk_id, ticket.raw_length, ticket.problem, later.real_path,
                                  new=later.new)

    def _settle_run(self, later: _LaterRun) -> None:
        """Write the lines of the files of a run read by a worker (waits for it;
        re-raises its error), each as :meth:`_settle` writes one: the usual line straight
        from its ``lstat`` and chunk id."""
        later.run.wait()
        owner_of, write, read = self._names.owner, self._write_line, 0
        for (real, path, st), (chunk_id, size, problem) in zip(later.files, later.run.outcomes, strict=True):
            if problem is None:
                assert chunk_id is not None
                owner = owner_of(st.st_uid, st.st_gid)
                line = (file_line(path, st.st_mode & 0o7777, owner, st.st_mtime_ns, size, st.st_ino, st.st_ctime_ns, st.st_dev,
                                  binascii.hexlify(chunk_id)) if owner is not None else None)
                if line is not None:
                    write(line)
                    read += size
                    continue
            settled = self._settled_line(self._from_stat(path, FILE, st), chunk_id, size, problem, real, new=True)
            if settled is not None:
                write(settled)
        if read:
            self._count_read(read)

    def _settled_line(self, entry: Entry, chunk_id: bytes | None, size: int, problem: OSError | str | None,
                      real_path: str | os.PathLike[str], *, new: bool) -> bytes | None:
        """The line of *entry*, a small file a worker read: *size* bytes stored as blob
        *chunk_id*, or no blob because of *problem*. None when the file could not be read:
        then it is skipped with a warning, as :meth:`add_file` would have (counted as a
        *new* or a changed file before). A file that grew past one chunk is streamed now."""
        if problem is None or problem == EMPTY:
            entry.size = size if problem is None else 0
            entry.chunks = [chunk_id.hex()] if chunk_id is not None and problem is None else []
            self._count_read(entry.size)
            return self._encode(entry)
        try:
            if isinstance(problem, OSError):
                raise problem
            tickets, entry.size = self._stream_file(real_path)
            entry.chunks = [t.id().hex() for t in tickets]
        except OSError as exc:
            self.warn(f"{real_path}: {exc.strerror or exc}")
            self._count_file(new=new, by=-1)
            return None
        return self._encode(entry)

    def _count_file(self, *, new: bool, by: int = 1) -> None:
        """Count a file stored (*by* -1: one counted but then skipped) as new or changed."""
        if new:
            self.stats.files_new += by
        else:
            self.stats.files_changed += by

    def _count_read(self, size: int) -> None:
        """Count *size* bytes read whole from a file (and report them)."""
        self.stats.bytes_read += size
        self.stats.size += size
        if self._on_bytes:
            self._on_bytes(size)

    def _stream_file(self, real_path: str | os.PathLike[str]) -> tuple[list[BlobTicket], int]:
        """Open the file the walk found regular (see :func:`open_regular`) and queue its
        chunks (:meth:`_queue`): (tickets, size). Raises OSError."""
        with os.fdopen(open_regular(real_path), "rb", buffering=0) as f:
            return self._queue(f)

    def finish_tree(self) -> list[str]:
        """Store the tree (as tree blobs) and return their ids, in order."""
        self._flush_deferred(wait=True)
        self.saver.settle()  # the data's last pack stored before the tree is read back and cut
        self._entries.write(b"".join(self._lines))
        self._lines.clear()
        self._readbuf = None  # the tree is cut through a map of its file: no 16 MiB buffer
        fd = self._entries.fileno()  # on disk now (a small tree was still in memory)
        self._entries.flush()
        ids = []
        for data in cut_file(self._chunker, fd):  # same cuts as cut_stream
            chunk_id, _ = self.saver.save(data, BLOB_TREE)
            ids.append(chunk_id.hex())
        self._entries.close()
        return ids

    @property
    def entry_count(self) -> int:
        return self._count


_SCRATCH_PREFIX = "drkit-"
_SCRATCH_NAME = re.compile(r"drkit-.+-(\d+)-[a-z0-9_]{8}")
"""A source's scratch directory: ``drkit-<source>-<pid>-<mkdtemp's 8 characters>``."""


def remove_stale_scratch(root: Path | str | None) -> list[str]:
    """Remove the scratch directories (datastore copies, bundles: whatever a source
    spooled) that backups of this user left behind in *root* (default: the temporary
    directory) because they were killed: named as :func:`_backup_one` names them,
    owned by this user, not a link, and their process gone. A directory whose process
    may still run (alive, or another user's) is kept. Returns the paths removed; never
    raises (a directory that cannot be read is left)."""
    base = Path(root) if root is not None else Path(tempfile.gettempdir())
    removed: list[str] = []
    try:
        names = [n for n in os.listdir(base) if n.startswith(_SCRATCH_PREFIX)]
    except OSError:
        return removed
    uid = os.getuid()
    for name in names:
        m = _SCRATCH_NAME.fullmatch(name)
        if m is None:
            continue
        path = base / name
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or _process_alive(int(m.group(1))):
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(str(path))
    return removed


def _process_alive(pid: int) -> bool:
    """False only when no process *pid* exists on this host (this process counts)."""
    if pid <= 0 or pid == os.getpid():
        return True  # (0 and below name no single process: kept)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


@dataclass
class SourceOutcome:
    source: str
    source_type: str
    snapshot: Snapshot | None = None
    error: DrkitError | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "type": self.source_type, "ok": self.error is None and not self.warnings}
        if self.snapshot:
            s = self.snapshot
            out.update(
                id=s.id,
                short_id=s.short_id,
                time=s.time,
                run=s.run,
                tags=s.tags,
                bytes_read=s.stats.get("bytes_read", 0),
                bytes_added=s.stats.get("bytes_added", 0),
                bytes_stored=s.stats.get("bytes_stored", 0),
                stats=s.stats,
            )
        if self.error:
            out["error"] = self.error.message
            if self.error.hint:
                out["hint"] = self.error.hint
        if self.warnings:
            out["warnings"] = self.warnings
        if self.notes:
            out["notes"] = self.notes
        out["seconds"] = round(self.seconds, 3)
        return out


@dataclass
class BackupRun:
    run_id: str
    outcomes: list[SourceOutcome]
    run_meta: dict[str, Any]

    @property
    def snapshots(self) -> list[Snapshot]:
        return [o.snapshot for o in self.outcomes if o.snapshot]

    @property
    def failed(self) -> list[SourceOutcome]:
        return [o for o in self.outcomes if o.error or o.warnings]


@dataclass
class BackupOptions:
    tags: list[str] = field(default_factory=list)
    host: str = field(default_factory=socket.gethostname)
    workers: int = 0
    index_every_packs: int = 32
    scratch_root: Path | None = None
    cache_dir: Path | None = None
    """Where the index cache lives (:mod:`drkit.repository.indexcache`); None: no cache,
    every index file is read. The CLI passes this machine's cache directory."""
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    """The environment sources may consult (e.g. git's token_env). The CLI passes the
    environment it captured; library callers get this process's."""


def _latest_of(snaps: list[Snapshot], source: str, host: str) -> Snapshot | None:
    mine = [s for s in snaps if s.source == source and s.host == host]
    return mine[-1] if mine else None


def run_backup(
    repo: Repository,
    sources: list[Source],
    options: BackupOptions,
    *,
    progress: ProgressSink | None = None,
) -> BackupRun:
    """Back up *sources* as one run. Raises RepositoryLocked before doing anything if
    an exclusive lock is held; raises PartialFailure (after storing what succeeded)
    when a source failed."""
    for src in sources:
        src.check_run(sources)
    run_id = secrets.token_hex(16)
    run_meta: dict[str, Any] = {"host": options.host, "drkit_version": __version__}
    outcomes: list[SourceOutcome] = []
    for stale in remove_stale_scratch(options.scratch_root):
        log.info("removed %s, left by a backup that was killed", stale)
    with repo.lock_for("backup"), fewer_collections():
        cache = repo.index_cache(options.cache_dir) if options.cache_dir else None
        repo.load_index(cache=cache)
        loaded_files = set(repo.index.files)
        adopted = repo.adopt_orphan_packs(on_error=lambda name, detail: log.warning("not reusing damaged pack %s: %s", name, detail))
        if adopted:
            log.info("reusing %d pack(s) uploaded by an interrupted run", adopted)
        # A recipient-mode backup host cannot read earlier manifests: it re-reads
        # files (deduplication still avoids storing them again).
        existing = (
            repo.list_snapshots(on_error=lambda name, detail: log.warning("skipping damaged manifest %s: %s", name, detail))
            if repo.can_read_content
            else []
        )
        for src in sources:
            outcomes.append(_backup_one(repo, src, existing, run_id, run_meta, options, progress))
        # Manifests last: every blob they reference is in a stored index by now.
        for o in outcomes:
            if o.snapshot is not None:
                o.snapshot.run_meta = dict(run_meta)
                repo.save_snapshot(o.snapshot)
        repo.end_session()
        if cache is not None and all(o.error is None for o in outcomes) and repo.index.files != loaded_files:
            # Every saver finished: each row this run added is in an index file it stored,
            # so the next run reads none of them (after a failure, it reads them).
            repo.save_index_cache(cache)
    run = BackupRun(run_id, outcomes, run_meta)
    bad = run.failed
    if bad:
        names = ", ".join(
            f"{o.source} ({o.error.message if o.error else str(len(o.warnings)) + ' item(s) skipped'})" for o in bad
        )
        first = outcomes[0].error
        if first is not None and all(o.error for o in outcomes):
            err: DrkitError = first
        else:
            hints = "; ".join(f"{o.source}: {o.error.hint}" for o in bad if o.error and o.error.hint)
            err = PartialFailure(f"backup incomplete: {names}", hint=hints or None)
        err.outcome = run
        raise err
    return run


class _Counter:
    """The counting pass (``src.estimate_size``) in a daemon thread at the lowest CPU
    priority, beside the backup (restic's scanner): when it ends, the progress bar gets
    its total (and so an ETA). It only stats files; the backup never waits for it, and
    once :meth:`stop` returned it no longer touches the progress sink (the next
    source's bar is not given this one's total)."""

    def __init__(self, src: Source, progress: ProgressSink) -> None:
        self._src = src
        self._progress = progress
        self._lock = threading.Lock()
        self._stopped = False
        threading.Thread(target=self._count, name=f"drkit-count-{src.name}", daemon=True).start()

    def _count(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread only (Linux)
        except (AttributeError, OSError):
            pass
        try:
            total = self._src.estimate_size()
        except Exception as exc:  # noqa: BLE001 - a progress estimate must never fail a backup
            log.debug("size estimate of %s failed: %s", self._src.name, exc)
            return
        with self._lock:
            if total is not None and not self._stopped:
                self._progress.set_total(total)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True


def _backup_one(
    repo: Repository,
    src: Source,
    existing: list[Snapshot],
    run_id: str,
    run_meta: dict[str, Any],
    options: BackupOptions,
    progress: ProgressSink | None,
) -> SourceOutcome:
    outcome = SourceOutcome(src.name, src.type_name)
    started = time.monotonic()
    parent = _latest_of(existing, src.name, options.host)
    scratch = Path(tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{src.name}-{os.getpid()}-", dir=options.scratch_root))
    os.chmod(scratch, 0o700)
    counter = None
    if progress:
        progress.start_source(src.name, None)
        counter = _Counter(src, progress)
    saver = BlobSaver(repo, workers=options.workers, index_every_packs=options.index_every_packs,
                      processes=seal_worker_count(options.env))
    try:
        writer = SnapshotWriter(
            repo,
            saver,
            src,
            parent=parent,
            scratch_dir=scratch,
            run_meta=run_meta,
            env=options.env,
            on_bytes=progress.advance if progress else None,
            on_text=progress.text if progress else None,
        )
        with saver:  # finished when the source is done, aborted if it raised
            src.backup(writer)
            tree = writer.finish_tree()
            if writer.entry_count == 0:  # an empty "latest" would hide the real ones
                raise NothingRead(source=src.name, detail="it recorded no entries")
        s = saver.stats
        snap = Snapshot(
            id=secrets.token_hex(32),
            time=now_iso(),
            source=src.name,
            source_type=src.type_name,
            run=run_id,
            host=options.host,
            tree=tree,
            tags=list(options.tags),
            paths=writer.paths,
            parent=parent.id if parent else None,
            stats={
                "bytes_read": writer.stats.bytes_read,
                "bytes_added": s.bytes_new_raw,
                "bytes_stored": s.bytes_new_sealed,
                "size": writer.stats.size,
                "entries": writer.entry_count,
                "files_new": writer.stats.files_new,
                "files_changed": writer.stats.files_changed,
                "files_unmodified": writer.stats.files_unmodified,
                "blobs_new": s.blobs_new,
                "packs": s.packs,
                "errors": writer.stats.errors,
            },
            meta=writer.meta,
            program_version=__version__,
        )
        outcome.snapshot = snap
        outcome.warnings = writer.warnings
        outcome.notes = writer.notes
    except DrkitError as exc:
        outcome.error = exc
        log.error("source %s failed: %s", src.name, exc.message)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        outcome.seconds = time.monotonic() - started
        if counter is not None:
            counter.stop()
        if progress:
            progress.end_source()
    return outcome
