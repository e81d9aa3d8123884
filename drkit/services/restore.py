"""Restore: read a snapshot back and put it in place.

:func:`run_restore` is the service the CLI calls: it takes a shared repository lock
before it reads anything, finds the snapshot, and hands a :class:`SnapshotReader` to
the source, which puts the data back (files under a target directory, a datastore
in place, a Git push ...). It returns a :class:`RestoreOutcome`; the CLI only
presents it.

The files-style restore (:meth:`SnapshotReader.write_entries`) streams the snapshot's
entries in bounded windows (so memory does not grow with the number of files): for
each window it plans which blob goes to which file offsets, then fetches the needed
ranges of each pack once per window (in tasks of nearby blobs, spread over worker
threads), decrypts and verifies each blob against its keyed id, and writes it to every
place that needs it, while the next window is planned. In a large restore, small files
whole in one blob are planned apart, as plain tuples (the small-file lane: per file,
the main process's work is most of such a restore's), and written by worker processes
(:mod:`drkit.services.restoreprocs`), which do the same work side by side. Files are
written to a temporary and renamed into place only when every one of their chunks
arrived intact: a damaged object never leaves wrong bytes behind under the real name;
the file is reported, and the restore fails. Ctrl-C (or SIGTERM) stops it within a
second: queued work is dropped, temporaries are removed, and only complete files
remain under real names.

A restore into a new or empty target is staged: it writes into a hidden directory
inside the target, where a small file goes straight to its real name (no temporary,
no rename: a quarter of the system time of a restore of many small files), and moves
the tree into place at the end, or when it stops early once what may be incomplete is
removed (see :meth:`~drkit.services.restorefs.TargetTree.staged`). Either way the
target ends with complete files only, as an unstaged restore leaves it.

Safety rules (see :mod:`drkit.services.restorefs`, which enforces them): nothing a
snapshot says makes the restore write outside its target; every directory is reached
through directory fds without following links; a non-empty target is refused unless
``force``. Owners and set-uid/set-gid/sticky bits are restored only as root (as tar
does). The restored tree is synced once at the end.
"""

from __future__ import annotations

import builtins
import fnmatch
import io
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

from drkit.services import backup_run
from drkit.errors import DrkitError, IntegrityError, Refused, RestoreTargetError, UsageError
from drkit.gctune import fewer_collections
from drkit.progress import ProgressSink
from drkit.repository import layout
from drkit.repository.blob import BLOB_GROUP, BlobError
from drkit.repository.index import BlobLocation
from drkit.repository.repo import Repository
from drkit.repository.snapshot import Snapshot
from drkit.repository.tree import DIR, FILE, SYMLINK, Entry, iter_tree, line_paths, tree_chunks, walk_order_key
from drkit.services.packranges import BlobUse, read_ranges, split_ranges
from drkit.services.restorefs import (
    NAME_MAX,
    TMP_PREFIX,
    UNLOCKABLE,
    Parts,
    TargetTree,
    is_staging_name,
    remove_stale_stagings,
    split_path,
)
from drkit.services.restoreprocs import FileWorkers, TaskOutcome, worker_count
from drkit.sources.base import RestoreResult

if TYPE_CHECKING:
    from drkit.sources.base import Source

log = logging.getLogger("drkit.restore")

_ZERO_MIN = 64 * 1024

WINDOW_FILES = 4096
"""Files a restore plans at once (see :meth:`SnapshotReader.write_entries`)."""
WINDOW_CHUNKS = 16384
"""Chunks a restore plans at once (a larger file is spread over windows)."""
WINDOW_BYTES = 64 * 1024 * 1024
"""Stored bytes a restore plans at once (bounds the temporaries open at once)."""
WINDOWS_IN_FLIGHT = 2
"""Windows queued for the workers while the next one is planned."""
_TASK_BLOBS = 512
"""A task of small files is at most this many blobs: each task costs a read of its
pack range and a hand-over to a worker, with their round trips. 100,000 small files
restored from SFTP on loopback: 6.6-7.8 s in tasks of 256 blobs (peak RSS 168 MiB),
5.7-6.0 s in tasks of 512 (178 MiB), 5.0-5.6 s in tasks of 1024 (197 MiB, too close
to 200); from a local repository the same in all three."""
_TASK_BYTES = 8 * 1024 * 1024
_LANE_BLOB = 64 * 1024
"""A task whose blobs average less than this is file-heavy: it runs in the file lane."""


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
    cache_dir: Path | None = None
    """This machine's cache directory: the index is taken from its index cache (and only
    the index files stored since are read; see :mod:`drkit.repository.indexcache`), which
    is then brought up to date. None: every index file is read from the repository."""

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
        repo.load_index(cache=repo.index_cache(options.cache_dir) if options.cache_dir else None)
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
    a pattern that selects nothing would restore nothing and exit 0. Reads the tree's
    paths as they stream by, without decoding entries or holding the paths (memory
    does not grow with the snapshot), and stops once every pattern has matched."""
    unmatched = list(dict.fromkeys(patterns))
    for path in line_paths(tree_chunks(repo, snap)):
        unmatched = [pat for pat in unmatched
                     if not (fnmatch.fnmatchcase(path, pat) or fnmatch.fnmatchcase(path, pat.rstrip("/") + "/*"))]
        if not unmatched:
            return
    if unmatched:
        raise UsageError(
            f"--include {unmatched[0]!r} matches nothing in snapshot {snap.short_id}",
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


@dataclass(eq=False, slots=True)
class _FilePlan:
    entry: Entry
    parent: Parts
    name: str
    tmp: str = ""
    fd: int = -1
    failed: str | None = None
    refused: str | None = None
    remaining: int = 0
    done: bool = False


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
        processes: int | None = None,
        window_files: int = WINDOW_FILES,
        window_chunks: int = WINDOW_CHUNKS,
        window_bytes: int = WINDOW_BYTES,
        on_bytes: Callable[[int], None] | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        """*target* is a shorthand for ``RestoreOptions(target=...)`` (library callers);
        the ``window_*`` bounds are those of :meth:`write_entries`; *processes*: worker
        processes for small files (default: :func:`~drkit.services.restoreprocs.worker_count`)."""
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
        self._processes = processes
        self.window_files = window_files
        self.window_chunks = window_chunks
        self.window_bytes = window_bytes
        self._on_bytes = on_bytes
        self._on_line = on_line

    def entries(self) -> Iterator[Entry]:
        return iter_tree(self.repo, self.snapshot)

    def paths(self) -> Iterator[str]:
        """The path of each of :meth:`entries`, in order, without decoding the entries
        (see :func:`~drkit.repository.tree.line_paths`)."""
        return line_paths(tree_chunks(self.repo, self.snapshot))

    def open_entry(self, entry: Entry) -> IO[bytes]:
        return io.BufferedReader(BlobStream(self.repo, entry.chunks), buffer_size=1024 * 1024)

    def say(self, line: str) -> None:
        self.lines.append(line)
        if self._on_line:
            self._on_line(line)

    # -- files-style restore ---------------------------------------------------

    def check_target(self, target: Path) -> bool:
        """Refuse a non-empty target unless force (raises Refused); True when the target
        is new or empty (staging directories a killed restore left do not count; see
        :func:`~drkit.services.restorefs.remove_stale_stagings`)."""
        if target.exists() and not target.is_dir():
            raise Refused(f"target {target} exists and is not a directory")
        if not target.is_dir():
            return True
        if any(not (is_staging_name(p.name) and p.is_dir() and not p.is_symlink()) for p in target.iterdir()):
            if not self.force:
                raise Refused(
                    f"target {target} is not empty",
                    hint="restore into an empty directory, or pass --force to overwrite files in it",
                )
            return False
        return True

    def _open_target(self, target: Path, fresh: bool) -> TargetTree:
        """The tree to restore into *target* (created if missing, stale staging
        directories removed): staged when *fresh* and the file system can lock the
        staging directory (see :meth:`_staged_tree`), else unstaged. Raises Refused while
        another restore writes into it."""
        if fresh:
            tree = self._staged_tree(target)
            if tree is not None:
                return tree
        else:
            self._prepare(target)
        return TargetTree(target)

    def _staged_tree(self, target: Path) -> TargetTree | None:
        """A staged tree in *target* (see
        :meth:`~drkit.services.restorefs.TargetTree.staged`), after :meth:`_prepare`;
        None where the file system cannot lock the staging directory. Raises Refused
        while another restore writes into the target."""
        self._prepare(target)
        try:
            return TargetTree.staged(target)
        except OSError as exc:
            if exc.errno not in UNLOCKABLE:
                raise
            log.info("%s cannot be locked (%s): restoring without a staging directory", target, exc.strerror)
            return None

    def _prepare(self, target: Path) -> None:
        """Create *target* if missing and remove the staging directories a killed restore
        left there. Raises Refused while another restore writes into it."""
        target.mkdir(parents=True, exist_ok=True)
        for name in remove_stale_stagings(target):
            self.say(f"removed {target / name}: what a restore that was killed had written so far")

    def write_entries(self, target: Path, *, include: list[str] | None = None,
                      entries: Iterable[Entry] | None = None) -> RestoreResult:
        """Restore the snapshot's entries (or *entries*, a selection of them) under
        *target*. Raises Refused, the target left as it was, if a path would escape or
        the target is not empty (without force): a whole snapshot restored into a new
        or empty target is staged and checked as it is written (see
        :meth:`_write_in_one_pass`); anything else has a first pass over the entry
        stream check every path before anything is written, keeping no entry. Raises
        Refused when an entry would lead outside the target or replace a directory;
        raises IntegrityError after restoring everything else if some files were damaged
        (those are not left behind); raises RestoreTargetError when the target cannot be
        written (full, read-only, not allowed, changed under the restore).
        KeyboardInterrupt stops it promptly. In every case only complete files are left:
        temporaries are removed.

        Memory does not grow with the number of entries: files are planned, fetched and
        finished in windows of at most ``window_files`` files, ``window_chunks`` chunks
        and ``window_bytes`` bytes (at most :data:`WINDOWS_IN_FLIGHT` queued at once). A
        directory's mode and mtime are set once the walk has left it and the windows
        holding its files are finished (see :class:`_DirFixups`), so only the
        directories above the current entry are held, and the names of failed files.
        Entries out of walk order (a caller's selection, several roots) keep every
        directory until the end instead."""
        try:
            with fewer_collections():
                return self._write_entries(target, include=include, entries=entries)
        except OSError as exc:
            raise RestoreTargetError.from_os(exc, target) from exc

    def _write_entries(self, target: Path, *, include: list[str] | None,
                       entries: Iterable[Entry] | None) -> RestoreResult:
        patterns = self.include if include is None else include
        fresh = self.check_target(target)
        if entries is not None and not isinstance(entries, (list, tuple)):
            entries = list(entries)  # a caller's selection: read twice
        selection = entries

        def selected() -> Iterator[tuple[Entry, Parts]]:
            split = _PathSplitter()
            for e in (self.entries() if selection is None else selection):
                if include_matches(e.path, patterns):
                    yield e, split(e.path)

        if self.dry_run:
            result = RestoreResult()
            for e, parts in selected():
                result.files += e.type == FILE
                result.dirs += e.type == DIR
                result.symlinks += e.type == SYMLINK
                result.bytes_written += e.size if e.type == FILE else 0
                result.lines.append(f"would restore {e.type} {target.joinpath(*parts)}")
            return result
        listed = self.snapshot.stats.get("entries")
        if fresh and selection is None and not patterns and isinstance(listed, int) and _in_walk_order(self.snapshot.paths):
            made = _missing_dirs(target)
            tree = self._staged_tree(target)
            if tree is None:  # (writes would show at once: a first pass, then unstaged, as _open_target leaves it)
                _remove_empty(made)
                fresh = False
            else:
                done = self._write_in_one_pass(tree, made, listed)
                if done is not None:
                    return done
        ordered = True  # in walk order: a directory left is never entered again
        previous: Parts | None = None
        count = 0
        split = _PathSplitter()  # validate every path before writing anything (decoding no entry)
        for path in (self.paths() if selection is None else (e.path for e in selection)):
            if not include_matches(path, patterns):
                continue
            parts = split(path)
            count += 1
            if ordered and previous is not None and not parts > previous:
                ordered = False
            previous = parts
        return self._write_into(self._open_target(target, fresh), selected(), count, ordered=ordered)

    def _write_in_one_pass(self, tree: TargetTree, made: list[Path], listed: int) -> RestoreResult | None:
        """The whole snapshot into staged *tree* (a new or empty target; see
        :meth:`~drkit.services.restorefs.TargetTree.staged`), each path checked as its
        entry is written instead of in a first pass over the tree: what a first pass
        would refuse or fail on (a path that would escape, a damaged or malformed tree)
        removes the staging directory with everything written so far, and the target
        directories this restore *made*, then is raised: the target is left as it was,
        as if nothing had been written. None, after the same clean-up, where a first
        pass is needed after all: the entries turn out not to be in walk order. Saves
        reading and checking the whole tree once before the first write (a restore of
        200,000 small files: 0.45 s of one core, while the other waits). *listed*: the
        number of entries the snapshot records (which decides whether worker processes
        start)."""
        try:
            return self._write_into(tree, _checked_in_walk_order(self.entries()), listed, ordered=True)
        except _OutOfWalkOrder:
            _remove_empty(made)
            return None
        except _TreeProblem as problem:
            _remove_empty(made)
            raise problem.error from None

    def _write_into(self, tree: TargetTree, selected: Iterable[tuple[Entry, Parts]], count: int, *,
                    ordered: bool) -> RestoreResult:
        """Restore *selected* (*count* entries, for the choice of worker processes) into
        *tree*, which it closes; see :meth:`write_entries`. Raises what the entries
        raise; :class:`_Unwritten` (from *selected*) after the tree was abandoned."""
        result = RestoreResult()
        processes = worker_count(count, self.env) if self._processes is None else self._processes
        procs = None
        try:
            procs = FileWorkers(self.repo, tree, processes) if processes else None
        except OSError as exc:
            log.warning("cannot start restore worker processes (%s): restoring in this one", exc.strerror or exc)
        except BaseException:
            tree.close()
            raise
        writer = _WindowWriter(self.repo, tree, result, workers=self._workers, on_bytes=self._on_bytes,
                               limits=(self.window_files, self.window_chunks, self.window_bytes), procs=procs)
        dirs = _DirFixups(tree, writer, streamed=ordered)
        try:
            try:
                self._put_entries(selected, tree, writer, dirs, result, ordered=ordered)
                writer.drain()
                dirs.finish()
            except _Unwritten:
                writer.abort()  # (kills the worker processes: nothing writes any more)
                _abandon(tree)
                raise
            except BaseException:
                writer.abort()
                _publish_what_is_complete(tree)
                raise  # tree.close() (below) removes the temporaries
            tree.publish()
            tree.sync()
        finally:
            try:
                if procs is not None:
                    procs.close()
            finally:
                tree.close()
        if writer.refused:
            raise Refused(writer.first_refused, hint=f"{writer.refused} entr(y/ies) refused; the rest was restored")
        if result.failed:
            err = IntegrityError(
                name=", ".join(result.failed[:5]) + (" ..." if len(result.failed) > 5 else ""),
                detail=f"{len(result.failed)} file(s) not restored because their data is damaged or missing",
            )
            err.outcome = result  # what was restored, and why the rest failed
            raise err
        return result

    def _put_entries(self, selected: Iterable[tuple[Entry, Parts]], tree: TargetTree, writer: "_WindowWriter",
                     dirs: "_DirFixups", result: RestoreResult, *, ordered: bool) -> None:
        """Make each directory, symlink and file of *selected* (entries with their
        checked parts), in order: files through *writer* (queued, not yet written).
        *ordered*: the entries are in walk order. Raises Refused for an entry that would
        replace the target or a directory this restore made."""
        made: set[Parts] = set()  # only out of walk order (in order, a path never repeats)
        parent: Parts | None = None
        for e, parts in selected:
            dirs.reach(parts)
            if e.type == DIR:
                tree.make_dir(parts, replace=self.force)
                dirs.enter(parts, e)
                if not ordered:
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
                if parts[:-1] != parent:  # create the parents now, in entry order
                    parent = parts[:-1]
                    tree.pin(parent)
                    tree.unpin(parent)
                writer.add_file(e, parent, parts[-1])


class _Unwritten(Exception):
    """Stop a one-pass restore and leave the target as it was (see
    :meth:`SnapshotReader._write_in_one_pass`)."""


class _OutOfWalkOrder(_Unwritten):
    """An entry came before the one listed above it: the restore needs a first pass."""


class _TreeProblem(_Unwritten):
    """What a first pass over the tree would have raised before anything was written."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _checked_in_walk_order(entries: Iterator[Entry]) -> Iterator[tuple[Entry, Parts]]:
    """Each of *entries* with its checked parts, as a first pass would check them:
    raises :class:`_TreeProblem` for what reading the tree raises (damaged, malformed)
    and for a path that would escape the target (Refused), :class:`_OutOfWalkOrder`
    for an entry that does not sort after the one before it."""
    split = _PathSplitter()
    previous: Parts | None = None
    while True:
        try:
            e = next(entries)
            parts = split(e.path)
        except StopIteration:
            return
        except Exception as exc:  # (not KeyboardInterrupt: Ctrl-C stops the restore as usual)
            raise _TreeProblem(exc) from exc
        if previous is not None and not parts > previous:
            raise _OutOfWalkOrder()
        previous = parts
        yield e, parts


def _in_walk_order(roots: list[str]) -> bool:
    """Whether a snapshot taken of *roots* (a files source's paths, in the order they
    were walked) lists its entries in walk order: one root, or roots that sort in walk
    order and none inside another. A snapshot of roots out of order (``[/srv, /etc]``)
    is restored with a first pass from the start, not after restoring its first root."""
    if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
        return False
    keys = [walk_order_key(r.rstrip("/")) + "\0" for r in roots]
    return all(a < b and not b.startswith(a) for a, b in zip(keys, keys[1:], strict=False))


def _missing_dirs(target: Path) -> list[Path]:
    """*target* and those of its parents that do not exist yet, deepest first: what
    creating it makes."""
    missing = []
    for path in (target, *target.parents):
        if os.path.lexists(path):
            break
        missing.append(path)
    return missing


def _remove_empty(made: list[Path]) -> None:
    """Remove the directories of *made* (deepest first), stopping at the first that is
    not empty or gone: what a restore that wrote nothing had created."""
    for path in made:
        try:
            os.rmdir(path)
        except OSError:
            return


def _abandon(tree: TargetTree) -> None:
    """Remove what a one-pass restore staged (see :meth:`TargetTree.abandon`); when even
    that fails, a warning says where it is (the next restore into the target removes
    it), and the reason the restore stopped is still what is raised."""
    staging = tree.staging
    try:
        tree.abandon()
    except OSError as exc:
        log.warning("could not remove %s (%s): the next restore into this target removes it", staging,
                    exc.strerror or exc)


def _publish_what_is_complete(tree: TargetTree) -> None:
    """After a restore stopped early (everything that may be incomplete was removed by
    then): put what a staged restore wrote in place, as an unstaged one leaves it. When
    even that fails, the staging directory stays, and a warning says where."""
    staging = tree.staging
    if staging is None:
        return
    try:
        tree.publish()
    except (OSError, DrkitError) as exc:
        log.warning("what was restored before the restore stopped stays in %s (%s)", staging,
                    exc.message if isinstance(exc, DrkitError) else exc.strerror or exc)


class _DirFixups:
    """When to set each directory's metadata (mode, mtime, owner): after every file in
    it was put in place (a rename inside it moves its mtime; a read-only mode would
    stop the writes), children before parents.

    *streamed* (the entries are in walk order: every path sorts after the previous
    one, so a directory left is never entered again): a directory is held while the
    walk is inside it; once left, it waits only for the windows planned so far to be
    finished, then is set. Held at once: the directories above the current entry and
    those left while their files are in flight. Otherwise every directory is held and
    set at the end, innermost last-listed first."""

    def __init__(self, tree: TargetTree, writer: "_WindowWriter", *, streamed: bool) -> None:
        self._tree = tree
        self._writer = writer
        self._streamed = streamed
        self._open: list[tuple[Parts, Entry]] = []
        self._left: deque[tuple[int, Parts, Entry]] = deque()
        self.held_max = 0
        """The most directories held at once (for tests of memory flatness)."""

    def reach(self, parts: Parts) -> None:
        """The walk is at *parts*: directories that do not contain it are left."""
        if not self._streamed:
            return
        opened = self._open
        window = self._writer.window_no
        while opened:
            top = opened[-1][0]
            if len(parts) > len(top) and parts[: len(top)] == top:
                break
            _, e = opened.pop()
            self._left.append((window, top, e))
        left = self._left
        finished = self._writer.finished_no
        while left and left[0][0] <= finished:
            _, done, e = left.popleft()
            self._tree.set_dir_meta(done, e)

    def enter(self, parts: Parts, e: Entry) -> None:
        self._open.append((parts, e))
        self.held_max = max(self.held_max, len(self._open) + len(self._left))

    def finish(self) -> None:
        """Set what is still held (every window is finished by now)."""
        for _, parts, e in self._left:
            self._tree.set_dir_meta(parts, e)
        self._left.clear()
        for parts, e in reversed(self._open):
            self._tree.set_dir_meta(parts, e)
        self._open.clear()


class _PathSplitter:
    """:func:`split_path` with the parent of the previous path remembered: entries come
    directory by directory, so most paths cost one name's check (same result, same
    refusals, and siblings share one parent tuple)."""

    def __init__(self) -> None:
        self._parent: str | None = None
        self._parts: Parts = ()

    def __call__(self, logical: str) -> Parts:
        parent, _, name = logical.rpartition("/")
        try:
            if parent != self._parent:
                self._parts = split_path(parent)
                self._parent = parent
            if (name.isascii() and 2 < len(name) <= NAME_MAX and "\x00" not in name
                    and not name.startswith(TMP_PREFIX)):
                return self._parts + (name,)  # what split_path(name) gives, without its work
            return self._parts + split_path(name) if name not in ("", ".") else self._parts
        except Refused:
            self._parent = None
            return split_path(logical)  # raises, naming the whole path


class _WindowWriter:
    """The file-writing side of :meth:`SnapshotReader.write_entries`, window by window.

    The caller adds files (:meth:`add_file`) to the window being filled, which is queued
    when full (at most *limits* = (files, chunks, sealed bytes)): its blobs are grouped
    by pack into tasks of nearby ranges (at most :data:`_TASK_BLOBS` blobs,
    :data:`_TASK_BYTES` bytes), which worker threads fetch once, verify (each blob
    against its keyed id) and pwrite into temporaries; the thread writing a file's last
    chunk sets its metadata and renames it into place, so metadata work overlaps with
    data work. With worker processes, small files whole in one blob form tasks of their
    own, which the processes write (see :meth:`_add_small`). At most
    :data:`WINDOWS_IN_FLIGHT` windows are queued: before another is, the oldest is
    waited for and finished (empty files, failed files discarded and reported), in
    order, so a file spread over several windows is finished only after all of them were
    written. On KeyboardInterrupt (or any exception) :meth:`abort` drops queued tasks,
    lets running ones stop at their next blob and closes the temporaries' fds."""

    def __init__(self, repo: Repository, tree: TargetTree, result: RestoreResult, *, workers: int,
                 on_bytes: Callable[[int], None] | None, limits: tuple[int, int, int],
                 procs: FileWorkers | None = None) -> None:
        self.repo = repo
        self._procs = procs
        self.tree = tree
        self.result = result
        self.refused = 0
        self.first_refused = ""
        self._on_bytes = on_bytes
        self._locks = [threading.Lock() for _ in range(64)]  # per-file state, striped
        self._stop = threading.Event()
        # File-heavy tasks (many small files) run one at a time: their work is system
        # calls a few microseconds long, and workers doing them side by side spent more
        # time handing the GIL to each other than they gained (100,000 small files: 12.0 s
        # wall and 9.3 s system time with four workers, 9.2-9.6 s and 3.2-3.7 s through
        # the lane). Only their reads run side by side (from S3 or SFTP, mostly waiting
        # on the network). Tasks of large blobs (hashing, decompression, writes that
        # release the GIL for long) run side by side whole.
        self._file_lane = threading.Lock()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="drkit-restore")
        self._queued: deque[_Window] = deque()
        self._window = _Window()
        self._adding: _FilePlan | None = None
        self._max_files, self._max_chunks, self._max_bytes = limits
        self.window_no = 1
        """The number of the window being filled (windows are numbered from 1)."""
        self.finished_no = 0
        """Every window up to this number is finished (its files in place or discarded)."""

    def add_file(self, entry: Entry, parent: Parts, name: str) -> None:
        """Plan file *entry* (*name* in directory *parent*) in the window being filled:
        a small file whole in one blob, when worker processes write those, through the
        small-file lane (:meth:`_add_small`); any other through :meth:`add`."""
        if self._procs is not None and 0 < entry.size < _ZERO_MIN and len(entry.chunks) == 1:
            cid = bytes.fromhex(entry.chunks[0])
            loc = self.repo.index.get(cid)
            if loc is not None and loc.raw_length == entry.size:
                self._add_small(cid, loc, (parent, name, entry.mode, entry.uid, entry.gid, entry.mtime_ns, entry.path))
                return
        self.add(_FilePlan(entry, parent, name))

    def _add_small(self, cid: bytes, loc: BlobLocation, file: tuple[Any, ...]) -> None:
        """Plan *file* (a file tuple, see :meth:`~drkit.services.restoreprocs.FileWorkers.run`)
        to be written whole from blob *cid* at *loc*: no file plan, no per-file outcome
        unless it is not written (the main process's work per small file is most of a
        restore's, and the workers wait on it). Queues the window when full."""
        window = self._window
        window.use_of(window.small, cid, loc).targets.append(file)
        window.chunks += 1
        window.small_files += 1
        if (len(window.files) + window.small_files >= self._max_files or window.chunks >= self._max_chunks
                or window.bytes >= self._max_bytes):
            self._submit()

    def add(self, plan: _FilePlan) -> None:
        """Plan file *plan* in the window being filled, queueing it when full. A file
        with more chunks than a window holds is spread over several windows and
        finished in the last one."""
        index = self.repo.index
        window = self._window
        self._adding = plan  # reachable by abort() while its chunks are planned
        max_chunks, max_bytes = self._max_chunks, self._max_bytes
        plan.remaining = len(plan.entry.chunks)  # counted down by the writes, also those of queued windows
        offset = 0
        for hex_id in plan.entry.chunks:
            if window.chunks >= max_chunks or window.bytes >= max_bytes:
                window = self._submit()
            cid = bytes.fromhex(hex_id)
            loc = index.get(cid)
            if loc is None:
                plan.failed = f"chunk {hex_id[:16]} is not in the index"
                break
            window.use_of(window.uses, cid, loc).targets.append((plan, offset))
            offset += loc.raw_length
            window.chunks += 1
        window.files.append(plan)
        self._adding = None
        if len(window.files) + window.small_files >= self._max_files or window.chunks >= max_chunks or window.bytes >= max_bytes:
            self._submit()

    def _submit(self) -> "_Window":
        """Queue the tasks of the window being filled, after finishing the oldest queued
        windows so that at most WINDOWS_IN_FLIGHT stay queued; returns the new window."""
        window = self._window
        while len(self._queued) >= WINDOWS_IN_FLIGHT:
            self._finish(self._queued.popleft())
        for pack_id, blobs in window.uses.items():
            for task in _tasks(blobs.values()):
                window.futures.append(self._pool.submit(self._do_task, pack_id, task))
        for pack_id, blobs in window.small.items():
            for task in _tasks(blobs.values()):
                window.futures.append(self._pool.submit(self._do_small, pack_id, task))
        window.uses = {}  # the tasks hold their blob uses now, and drop them when done
        window.small = {}
        window.no = self.window_no
        self._queued.append(window)
        self._window = _Window()
        self.window_no += 1
        return self._window

    def drain(self) -> None:
        """Queue the last window, wait for and finish every queued one, stop the workers."""
        self._submit()
        while self._queued:
            self._finish(self._queued.popleft())
        self._pool.shutdown(wait=True)

    def abort(self) -> None:
        """Stop: drop queued tasks, wait for running ones (they stop at their next
        blob), close open temporaries (the tree removes them)."""
        self._stop.set()
        if self._procs is not None:
            self._procs.kill()  # (what a worker leaves is removed by the task that waited for it)
        self._pool.shutdown(wait=True, cancel_futures=True)
        for window in (*self._queued, self._window):
            for plan in window.files:
                self._close(plan)
        if self._adding is not None:
            self._close(self._adding)
        self._queued.clear()

    # -- worker side -------------------------------------------------------------

    def _do_task(self, pack_id: str, ordered: list[BlobUse]) -> None:
        try:
            if sum(u.raw_length for u in ordered) < _LANE_BLOB * len(ordered):
                pieces = self._fetch(pack_id, ordered)  # side by side: a remote read is mostly waiting
                with self._file_lane:
                    self._write_pieces(pack_id, pieces)
            else:
                self._write_pieces(pack_id, self._fetch(pack_id, ordered))
        finally:
            # The pool's work item keeps its arguments until its thread gets round to
            # dropping it, after the future is done and the window may be finished: the
            # task's blob uses (and through them its files) must not live on with it.
            ordered.clear()

    def _do_small(self, pack_id: str, ordered: list[BlobUse]) -> TaskOutcome:
        assert self._procs is not None  # (the lane exists only with worker processes)
        try:
            outcome = self._procs.run(pack_id, ordered, self._stop)
            if self._on_bytes and outcome[1]:
                self._on_bytes(outcome[1])
            return outcome
        finally:
            ordered.clear()  # (as in _do_task)

    def _fetch(self, pack_id: str, ordered: list[BlobUse]) -> list[tuple[BlobUse, bytes | memoryview | None]]:
        """The sealed bytes of each blob of *ordered* (None: cut off by a truncated
        pack); none when stopping, or when the pack cannot be read (its files fail)."""
        if self._stop.is_set():
            return []
        reads = read_ranges(self.repo.storage, pack_id, ordered)
        if isinstance(reads, str):
            for u in ordered:
                self._fail(u.targets, reads)
            return []
        return [(u, sealed) for group, data in reads for u, sealed in split_ranges(group, data)]

    def _write_pieces(self, pack_id: str, pieces: list[tuple[BlobUse, bytes | memoryview | None]]) -> None:
        """Check each blob and write it where it goes. Each blob is authenticated
        (AES-GCM) and checked against its keyed id, so the pack's SHA-256 (a keyless
        bitrot check) is not needed here."""
        name = layout.pack_name(pack_id)
        for u, sealed in pieces:
            if self._stop.is_set():
                return
            if sealed is None:
                self._fail(u.targets, f"{name}: pack is truncated (blob {u.chunk_id.hex()[:16]} is cut off)")
                continue
            try:
                plain = self.repo.codec.decode_view(u.blob_type, u.chunk_id, sealed, u.raw_length)
            except BlobError as exc:
                self._fail(u.targets, f"{name}: {exc}")
                continue
            for plan, off in u.targets:
                self._write(plan, off, plain)

    def _lock_of(self, plan: _FilePlan) -> threading.Lock:
        return self._locks[(id(plan) >> 4) & 63]

    def _write(self, plan: _FilePlan, offset: int, data: bytes | memoryview) -> None:
        if plan.failed or self._stop.is_set():
            return
        zero = _all_zero(data)
        if plan.remaining == 1 and plan.fd < 0 and offset == 0 and len(data) == plan.entry.size and not zero:
            # The file's one chunk (every small file): written, set and put in place in
            # one go. (Only this task holds it: no lock needed.)
            plan.remaining = 0
            self._put_whole(plan, data)
            if self._on_bytes:
                self._on_bytes(len(data))
            return
        lock = self._lock_of(plan)
        with lock:
            fd = plan.fd
            if fd < 0:  # the first chunk to arrive creates the temporary, at full size
                fd, plan.tmp = self.tree.create_temp(plan.parent, plan.entry.size)
                plan.fd = fd
        if not zero:  # holes stay sparse (the file was ftruncated to size)
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, offset)
                view = view[n:]
                offset += n
        with lock:
            plan.remaining -= 1
            last = plan.remaining == 0 and not plan.failed
            if last:
                plan.fd = -1
        if last:
            self._put_in_place(plan, fd)
        if self._on_bytes:
            self._on_bytes(len(data))

    def _put_whole(self, plan: _FilePlan, data: bytes | memoryview) -> None:
        try:
            self.tree.write_file(plan.parent, plan.name, plan.entry, data)
        except Refused as exc:
            plan.refused = exc.message
            return
        plan.done = True

    def _put_in_place(self, plan: _FilePlan, fd: int) -> None:
        try:
            self.tree.apply_meta_fd(fd, plan.entry, plan.entry.path)
        finally:
            os.close(fd)
        try:
            self.tree.commit(plan.parent, plan.tmp, plan.name)
        except Refused as exc:
            plan.refused = exc.message
            return
        plan.done = True

    def _fail(self, targets: list[tuple[_FilePlan, int]], why: str) -> None:
        for plan, _ in targets:
            with self._lock_of(plan):
                plan.failed = plan.failed or why

    # -- main thread ---------------------------------------------------------------

    def _close(self, plan: _FilePlan) -> None:
        if plan.fd >= 0:
            os.close(plan.fd)
            plan.fd = -1

    def _finish(self, window: "_Window") -> None:
        """Wait for *window*'s tasks (a timed wait: Ctrl-C is seen at once), then put
        its empty files in place, discard and report its failed ones."""
        pending = set(window.futures)
        small: list[TaskOutcome] = []
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
            for fut in done:
                outcome = fut.result()
                if outcome is not None:  # a task of the small-file lane
                    small.append(outcome)
        window.futures.clear()
        result = self.result
        for written_files, written_bytes, unwritten in small:
            result.files += written_files
            result.bytes_written += written_bytes
            for file, refused, why in unwritten:
                self._report(file[-1], refused, why)  # (its logical path)
        for plan in window.files:
            self._close(plan)  # the temporary of a file that failed part-way
            if not plan.done and not plan.failed and not plan.refused and not plan.remaining:
                self._put_whole(plan, b"")  # a file without chunks (empty)
            if plan.done:
                result.files += 1
                result.bytes_written += plan.entry.size
                continue
            if plan.tmp:
                self.tree.discard(plan.parent, plan.tmp)
            if plan.refused:
                self._report(plan.entry.path, True, plan.refused)
            else:
                self._report(plan.entry.path, False, plan.failed or "not all chunks were written")
        window.files.clear()
        self.finished_no = window.no
        self.tree.start_sync()  # write back what is finished while the rest is restored

    def _report(self, path: str, refused: bool, why: str) -> None:
        """Count and report a file that was not restored: refused (by a rule), or failed."""
        if refused:
            self.refused += 1
            self.first_refused = self.first_refused or why
            self.result.lines.append(f"REFUSED {path}: {why}")
            return
        self.result.failed.append(path)
        self.result.lines.append(f"FAILED {path}: {why}")
        log.error("not restored: %s: %s", path, why)


@dataclass(eq=False)
class _Window:
    """Files planned together and the blobs they need (by pack), until queued; then
    the futures of the tasks fetching them."""

    files: list[_FilePlan] = field(default_factory=list)
    uses: dict[str, dict[bytes, BlobUse]] = field(default_factory=dict)
    small: dict[str, dict[bytes, BlobUse]] = field(default_factory=dict)
    """The small-file lane's blobs, by pack: their targets are file tuples."""
    small_files: int = 0
    chunks: int = 0
    bytes: int = 0
    groups: set[tuple[str, int]] = field(default_factory=set)
    """The groups (format v3) counted in ``bytes``: (pack, offset)."""
    futures: list[Future[TaskOutcome | None]] = field(default_factory=list)
    no: int = 0

    def use_of(self, lane: dict[str, dict[builtins.bytes, BlobUse]], cid: builtins.bytes, loc: BlobLocation) -> BlobUse:
        """This window's use of blob *cid* (stored at *loc*) in *lane* (:attr:`uses` or
        :attr:`small`), made on first need: its stored bytes then count against the window."""
        blobs = lane.get(loc.pack)
        if blobs is None:
            blobs = lane[loc.pack] = {}
        use = blobs.get(cid)
        if use is None:
            use = blobs[cid] = BlobUse(cid, loc.offset, loc.length, loc.blob_type, loc.raw_length)
            if loc.blob_type != BLOB_GROUP:
                self.bytes += loc.length
            elif (loc.pack, loc.offset) not in self.groups:  # its members share its bytes
                self.groups.add((loc.pack, loc.offset))
                self.bytes += loc.length
        return use


def _tasks(blobs: Iterable[BlobUse]) -> Iterator[list[BlobUse]]:
    """The blobs of one pack, by offset, in runs of at most _TASK_BLOBS blobs spanning
    at most _TASK_BYTES bytes (one task each: a window's work spreads over the workers
    even when it lies in one pack)."""
    task: list[BlobUse] = []
    start = 0
    for u in sorted(blobs, key=lambda u: u.offset):
        if task and (len(task) >= _TASK_BLOBS or u.offset + u.length - start > _TASK_BYTES):
            yield task
            task = []
        if not task:
            start = u.offset
        task.append(u)
    if task:
        yield task


def _all_zero(data: bytes | memoryview) -> bool:
    """True for a block of at least _ZERO_MIN zero bytes (written as a hole)."""
    n = len(data)
    if n < _ZERO_MIN or data[0] or data[n - 1] or data[n // 2]:
        return False
    return bytes(data) == bytes(n) if isinstance(data, memoryview) else data == bytes(n)
