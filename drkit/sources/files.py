"""The ``files`` source: directories and files from the host.

Config keys::

    - name: data
      type: files
      paths: [/srv/data]          # files or directories, absolute
      exclude: ["*.tmp", "/srv/data/cache"]   # optional fnmatch patterns
      include: ["*.yaml"]         # optional: only files matching one of these
      one_file_system: false      # optional: do not cross mount points

A pattern with a ``/`` matches the whole path (``/srv/data/cache`` also excludes
everything below it), otherwise the file name. Regular files, directories and
symlinks are saved with modes, owners and mtimes; other file types (sockets, devices,
FIFOs) are skipped with a note. The walk is iterative; a directory more than
``MAX_DEPTH`` (512) components deep is skipped with a warning. Unchanged files (same size, mtime, ctime, inode) are
not read again: their chunks are taken from the previous snapshot of this source.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from pydantic import Field, field_validator

from drkit.errors import NothingRead
from drkit.repository.tree import Entry
from drkit.sources.base import BackupContext, Source, SourceOptions

MAX_DEPTH = 512
"""Path components a saved directory may have; a deeper subtree is skipped with a
warning (the run goes on; it ends as a partial failure, exit 7)."""

_Child = tuple[str, str, os.stat_result]
"""An item of a walk: (real path, logical path, ``lstat``)."""


class FilesOptions(SourceOptions):
    paths: list[str] = Field(min_length=1)
    exclude: list[str] = Field(default_factory=list)
    include: list[str] = Field(default_factory=list)
    one_file_system: bool = False

    @field_validator("paths")
    @classmethod
    def _absolute(cls, paths: list[str]) -> list[str]:
        for p in paths:
            if not p.startswith("/"):
                raise ValueError(f"paths must be absolute, got {p!r}")
        return [os.path.normpath(p) for p in paths]


def matches(path: str, patterns: list[str]) -> bool:
    """fnmatch *path* against patterns: full path (and its parents) for patterns with
    a '/', else the file name."""
    name = path.rsplit("/", 1)[-1]
    for pat in patterns:
        if "/" in pat:
            if fnmatch.fnmatchcase(path, pat) or fnmatch.fnmatchcase(path, pat.rstrip("/") + "/*"):
                return True
        elif fnmatch.fnmatchcase(name, pat):
            return True
    return False


class FilesSource(Source):
    type_name = "files"
    Options = FilesOptions
    options: FilesOptions

    _prefetch: StatPrefetch | None = None

    def describe(self) -> str:
        return f"{self.name} (files: {', '.join(self.options.paths)})"

    def warm_up(self) -> None:
        """Start a :class:`StatPrefetch` of the configured paths (the walk takes what it
        read and stops it)."""
        if self._prefetch is None:
            opts = self.options
            self._prefetch = StatPrefetch(opts.paths, exclude=opts.exclude, one_file_system=opts.one_file_system)

    def backup(self, ctx: BackupContext) -> None:
        """Walk every configured path. Raises NothingRead (the source fails, nothing is
        stored for it) when a configured path is missing or unreadable -- a typo or an
        unmounted disk must not become an empty "latest" snapshot -- or when include
        patterns are set and no file matched them."""
        opts = self.options
        prefetched, self._prefetch = self._prefetch, None
        if prefetched is not None:
            prefetched.stop()  # it would now only compete with the walk for the interpreter
        seen: set[str] = set()  # directories already recorded in this run
        ctx.paths.extend(opts.paths)
        roots: list[tuple[str, os.stat_result]] = []
        for root in opts.paths:
            try:
                roots.append((root, os.lstat(root)))
            except FileNotFoundError:
                raise NothingRead(source=self.name, detail=f"{root} does not exist") from None
            except PermissionError:
                raise NothingRead(source=self.name, detail=f"{root}: permission denied") from None
        taken = 0
        for root, st in roots:
            self._add_parents(ctx, root, seen)
            walker = TreeWalker(ctx, exclude=opts.exclude, include=opts.include, one_file_system=opts.one_file_system,
                                seen=seen, prefetched=prefetched, read_later=True)
            walker.walk(root, root, st)
            taken += walker.counts["files"] + walker.counts["symlinks"]
        if opts.include and not taken:
            raise NothingRead(source=self.name, detail=f"no file under {', '.join(opts.paths)} matches include {opts.include}")

    def estimate_size(self) -> int | None:
        """Sum of the sizes of the regular files the walk will take (same exclude,
        include and one_file_system rules); stat calls only, errors skipped."""
        opts = self.options
        total = 0
        for root in opts.paths:
            try:
                root_dev = os.lstat(root).st_dev
            except OSError:
                continue
            stack = [root]
            while stack:
                path = stack.pop()
                if matches(path, opts.exclude):
                    continue
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if opts.one_file_system and st.st_dev != root_dev:
                        continue
                    try:
                        stack.extend(path.rstrip("/") + "/" + name for name in os.listdir(path))
                    except OSError:
                        continue
                elif stat.S_ISREG(st.st_mode) and (not opts.include or matches(path, opts.include)):
                    total += st.st_size
        return total

    def _add_parents(self, ctx: BackupContext, root: str, seen: set[str]) -> None:
        parents = list(PurePosixPath(root).parents)[:-1]  # without "/"
        for parent in reversed(parents):
            p = str(parent)
            if p in seen:
                continue
            seen.add(p)
            try:
                ctx.add_dir(p, os.lstat(p))
            except OSError:
                ctx.add_dir(p)



PREFETCH_ENTRIES = 32768
"""At most this many entries are read ahead, whatever the size of the tree: a stat
result costs ~650 bytes, and peak RSS of an unchanged backup of 100k files rose by
24-26 MiB (106 -> 130-132 MiB in-process), a bounded price for ~0.08 s."""


class StatPrefetch:
    """The listings (names, sorted, and their ``lstat``) of the directories a walk of
    *paths* visits first, read in a background thread while the process waits for
    something that lets other threads run -- the key derivation that opens the
    repository (scrypt releases the interpreter): a third of the walk of a tree of small
    unchanged files is ``lstat``. The thread runs at the lowest CPU priority, so on a
    busy machine it takes nothing from the key derivation.

    It visits directories in the walk's order with the walk's rules (exclude patterns
    on the path, :data:`MAX_DEPTH`, ``one_file_system``) and stops after
    :data:`PREFETCH_ENTRIES` entries, at the end, or at :meth:`stop`. A directory that
    could not be read whole (an error on it or on any entry) is not kept: the walk
    reads it and reports the error as usual. What it read is as old as that moment
    (under a second before the walk gets there): a file is still always stat'ed before
    it is read, so a change after that is seen by the next backup, as with any change
    during a walk. Never raises."""

    def __init__(self, paths: list[str], *, exclude: list[str], one_file_system: bool,
                 limit: int | None = None) -> None:
        self._paths = list(paths)
        self._exclude = list(exclude)
        self._one_file_system = one_file_system
        self._limit = PREFETCH_ENTRIES if limit is None else limit
        self._listings: dict[str, list[tuple[str, os.stat_result]]] = {}
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="drkit-stat-prefetch", daemon=True)
        self._thread.start()

    def take(self, real: str) -> list[tuple[str, os.stat_result]] | None:
        """The listing of directory *real* if it was read ahead (handed out once)."""
        return self._listings.pop(real, None)

    def stop(self) -> None:
        """Stop reading ahead (waits for the directory in hand); what was read stays."""
        self._stopped = True
        self._thread.join()

    def wait(self) -> None:
        """Wait until it has read all it will (for tests)."""
        self._thread.join()

    def _run(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread only (Linux): never slows the KDF
        except (AttributeError, OSError):
            pass
        try:
            self._walk()
        except Exception:  # noqa: BLE001 - reading ahead must never fail a backup: the walk reads it
            pass

    def _walk(self) -> None:
        left = self._limit
        lstat, listdir = os.lstat, os.listdir
        for root in self._paths:
            try:
                root_st = lstat(root)
            except OSError:
                continue
            stack = [(root, root_st)]
            while stack and left > 0:
                if self._stopped:
                    return
                real, st = stack.pop()
                if (self._exclude and matches(real, self._exclude)) or not stat.S_ISDIR(st.st_mode):
                    continue
                if real.count("/") > MAX_DEPTH or (self._one_file_system and st.st_dev != root_st.st_dev):
                    continue
                try:
                    prefix = real.rstrip("/") + "/"
                    listing = [(name, lstat(prefix + name)) for name in sorted(listdir(real))]
                except OSError:
                    continue
                self._listings[real] = listing
                left -= len(listing)
                stack.extend((prefix + name, child) for name, child in reversed(listing) if stat.S_ISDIR(child.st_mode))


@dataclass
class TreeWalker:
    """Add a directory tree of the host to a backup, under a logical path of choice.

    ``walk(real, logical, st)`` records *real* (a directory, regular file or symlink
    whose ``lstat`` is *st*) as *logical*, and everything below it as
    ``logical/<relative path>``, directories before their contents, names sorted.
    ``exclude``/``include`` patterns (see :func:`matches`) are tried on the logical
    path. Other file types are skipped and unreadable items warned about
    (``ctx.warn``: the run ends as a partial failure); the walk itself never raises
    for them. ``after_file(real, logical, st, entry)`` runs after each regular file
    was read. With ``read_later`` (and no ``after_file``), small files may be read by a
    backup worker after the walk moved on (see :meth:`BackupContext.add_file`). Without
    ``after_file``, files unchanged since the parent snapshot are recorded a run (a
    directory's consecutive files) at a time (:meth:`BackupContext.add_unchanged`).
    ``counts`` tallies what was recorded (files, dirs, symlinks, bytes; a small file
    read later counts the size ``lstat`` gave).
    """

    ctx: BackupContext
    exclude: list[str] = field(default_factory=list)
    include: list[str] = field(default_factory=list)
    one_file_system: bool = False
    seen: set[str] = field(default_factory=set)
    """Logical directories already recorded in this run (recorded once)."""
    after_file: Callable[[str, str, os.stat_result, Entry], None] | None = None
    read_later: bool = False
    prefetched: StatPrefetch | None = None
    """Directory listings read ahead (used where the real path matches, else read here)."""
    counts: dict[str, int] = field(default_factory=lambda: {"files": 0, "dirs": 0, "symlinks": 0, "bytes": 0})
    _unchanged_over: bool = field(default=False, init=False, repr=False)
    """Set once :meth:`BackupContext.add_unchanged` said no file can be found unchanged any
    more (a first backup: at once), so that it is not asked again."""

    def walk(self, real: str, logical: str, st: os.stat_result) -> None:
        self._walk(real, logical, st, st.st_dev)

    def _in_runs(self, children: list[_Child]) -> list[_Child | list[_Child]]:
        """A directory's *children* in the same order, each run of consecutive regular
        files made one list (added by :meth:`_add_files`), without the files that the
        exclude or include patterns leave out."""
        exclude, include = self.exclude, self.include
        out: list[_Child | list[_Child]] = []
        run: list[_Child] | None = None
        for child in children:
            if not stat.S_ISREG(child[2].st_mode):
                out.append(child)
                run = None
            elif not ((exclude and matches(child[1], exclude)) or (include and not matches(child[1], include))):
                if run is None:
                    run = []
                    out.append(run)
                run.append(child)
        return out

    def _add_files(self, run: list[_Child], read_later: bool) -> None:
        """Add a run of regular files, in order: those unchanged since the parent
        snapshot many at a time (:meth:`BackupContext.add_unchanged`), then (once none
        can be) new small files read later many at a time
        (:meth:`BackupContext.add_new_files`), the others one by one; a file that cannot
        be read is warned about and skipped. Progress names the
        last file of each stretch of unchanged ones, and each file read."""
        ctx, counts, after_file = self.ctx, self.counts, self.after_file
        add_unchanged = ctx.add_unchanged if after_file is None and not self._unchanged_over else None  # (after_file needs each Entry)
        at, end = 0, len(run)
        while at < end:
            if add_unchanged is not None:
                found = add_unchanged(run, at)
                if found is None:
                    self._unchanged_over, add_unchanged = True, None
                    continue
                done, size = found
                if done:
                    at += done
                    ctx.progress(run[at - 1][0])
                    counts["files"] += done
                    counts["bytes"] += size
                    if at == end:
                        return
            elif read_later:
                taken, size = ctx.add_new_files(run, at)
                if taken:
                    counts["files"] += taken
                    counts["bytes"] += size
                    at += taken
                    ctx.progress(run[at - 1][0])
                    if at == end:
                        return
            real, logical, st = run[at]
            at += 1
            ctx.progress(real)
            try:
                entry = ctx.add_file(logical, real, st, read_later=read_later)
            except OSError as exc:
                ctx.warn(f"{real}: {exc.strerror or exc}")
                continue
            counts["files"] += 1
            counts["bytes"] += entry.size
            if after_file is not None:
                after_file(real, logical, st, entry)

    def _walk(self, real_root: str, logical_root: str, root_st: os.stat_result, root_dev: int) -> None:
        """Depth-first, sorted, iterative (no recursion limit): a directory whose logical
        path has more than :data:`MAX_DEPTH` components is skipped with a warning."""
        ctx = self.ctx
        exclude, include = self.exclude, self.include
        lstat = os.lstat
        read_later = self.read_later and self.after_file is None
        prefetched = self.prefetched
        stack: list[_Child | list[_Child]] = [(real_root, logical_root, root_st)]
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                self._add_files(item, read_later)
                continue
            real, logical, st = item
            if exclude and matches(logical, exclude):
                continue
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                if logical in self.seen:
                    continue
                if logical.count("/") > MAX_DEPTH:
                    ctx.warn(f"{real}: skipped, deeper than {MAX_DEPTH} levels")
                    continue
                self.seen.add(logical)
                ctx.add_dir(logical, st)
                self.counts["dirs"] += 1
                if self.one_file_system and st.st_dev != root_dev:
                    continue
                real_dir, logical_dir = real.rstrip("/") + "/", logical.rstrip("/") + "/"
                listing = prefetched.take(real) if prefetched is not None else None
                if listing is not None:
                    stack.extend(reversed(self._in_runs([(real_dir + name, logical_dir + name, child) for name, child in listing])))
                    continue
                try:
                    names = sorted(os.listdir(real))
                except OSError as exc:
                    ctx.warn(f"{real}: {exc.strerror}")
                    continue
                children: list[_Child] = []
                for name in names:
                    child = real_dir + name
                    try:
                        children.append((child, logical_dir + name, lstat(child)))
                    except OSError as exc:
                        ctx.warn(f"{child}: {exc.strerror}")
                stack.extend(reversed(self._in_runs(children)))  # popped in sorted order
            elif stat.S_ISREG(mode):  # (the root: every other file comes in a run)
                if not include or matches(logical, include):
                    self._add_files([item], read_later)
            elif stat.S_ISLNK(mode):
                if include and not matches(logical, include):
                    continue
                try:
                    ctx.add_symlink(logical, os.readlink(real), st)
                except OSError as exc:
                    ctx.warn(f"{real}: {exc.strerror}")
                    continue
                self.counts["symlinks"] += 1
            else:
                ctx.warn(f"{real}: skipped (not a regular file, directory or symlink)")
