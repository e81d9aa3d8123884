"""Looking into snapshots without restoring them: ls, diff, find, dump, stats.

The commands a restic user reaches for, as pure functions over a repository and its
snapshot trees; the CLI modules (``ls_cmd``, ``diff_cmd``, ...) only render them.
Everything here is read-only, and every blob read is verified (keyed hash) as in a
restore: ``dump`` never writes bytes that are not the stored ones.
"""

from __future__ import annotations

import fnmatch
import io
import tarfile
from dataclasses import dataclass, field
from typing import IO, Any, Iterable, Iterator

from drkit.errors import UsageError
from drkit.repository.blob import BLOB_GROUP
from drkit.repository.repo import Repository
from drkit.repository.snapshot import Snapshot
from drkit.repository.tree import DIR, FILE, SYMLINK, Entry, iter_tree, walk_order_key


def entry_json(e: Entry) -> dict[str, Any]:
    """The fields ls/find print for one entry."""
    out: dict[str, Any] = {"path": e.path, "type": e.type, "mode": f"{e.mode:04o}", "size": e.size if e.type == FILE else 0,
                           "mtime_ns": e.mtime_ns, "uid": e.uid, "gid": e.gid}
    if e.user:
        out["user"] = e.user
    if e.group:
        out["group"] = e.group
    if e.type == SYMLINK:
        out["target"] = e.target
    return out


def _under(path: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/") or "/"
    return path == prefix or path.startswith(prefix if prefix.endswith("/") else prefix + "/")


def list_entries(repo: Repository, snap: Snapshot, path: str | None = None) -> Iterator[Entry]:
    """Entries of *snap* in stored order, only *path* and what is below it when given."""
    for e in iter_tree(repo, snap):
        if path is None or _under(e.path, path):
            yield e


# -- diff ---------------------------------------------------------------------------

ADDED, REMOVED, MODIFIED, METADATA, TYPE_CHANGED = "+", "-", "M", "U", "T"


@dataclass
class Change:
    path: str
    modifier: str
    """'+' added, '-' removed, 'M' content changed, 'U' metadata only, 'T' type changed."""
    size_before: int = 0
    size_after: int = 0


@dataclass
class DiffStats:
    added: int = 0
    removed: int = 0
    modified: int = 0
    metadata: int = 0
    type_changed: int = 0
    bytes_added: int = 0
    bytes_removed: int = 0

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


def diff_snapshots(repo: Repository, before: Snapshot, after: Snapshot) -> tuple[list[Change], DiffStats]:
    """What changed from snapshot *before* to *after*, sorted by path. Both trees are
    read side by side as they stream by (sources store entries in walk order), one
    entry of each held at a time: memory grows with the changes, not with the
    snapshots. A tree out of walk order (or naming a path twice) is compared through
    maps of both trees' entries instead, read again (:func:`diff_entries`)."""
    try:
        changes, st = _diff_in_walk_order(list_entries(repo, before), list_entries(repo, after))
    except _OutOfOrder:
        return diff_entries(list_entries(repo, before), list_entries(repo, after))
    changes.sort(key=lambda c: c.path)
    return changes, st


class _OutOfOrder(Exception):
    """A tree's entries are not strictly in walk order."""


def _in_walk_order(entries: Iterable[Entry]) -> Iterator[tuple[str, Entry]]:
    """(walk-order key, entry) of each of *entries*; raises _OutOfOrder at the first
    entry whose key is not greater than the one before."""
    last: str | None = None
    for e in entries:
        key = walk_order_key(e.path)
        if last is not None and key <= last:
            raise _OutOfOrder
        last = key
        yield key, e


def _diff_in_walk_order(before: Iterable[Entry], after: Iterable[Entry]) -> tuple[list[Change], DiffStats]:
    """:func:`diff_entries` of two streams in walk order, merged (changes in walk order);
    raises _OutOfOrder."""
    changes: list[Change] = []
    st = DiffStats()
    olds, news = _in_walk_order(before), _in_walk_order(after)
    old, new = next(olds, None), next(news, None)
    while old is not None or new is not None:
        if old is not None and (new is None or old[0] < new[0]):
            _compare(old[1].path, old[1], None, changes, st)
            old = next(olds, None)
        elif new is not None and (old is None or new[0] < old[0]):
            _compare(new[1].path, None, new[1], changes, st)
            new = next(news, None)
        elif old is not None and new is not None:  # the same key on both sides
            if old[1].path != new[1].path:  # a NUL in a name (no file system has one)
                raise _OutOfOrder
            _compare(old[1].path, old[1], new[1], changes, st)
            old, new = next(olds, None), next(news, None)
    return changes, st


def diff_entries(before: Iterable[Entry], after: Iterable[Entry]) -> tuple[list[Change], DiffStats]:
    """What changed from *before* to *after* (entries in any order; a path named twice
    counts as its last entry), sorted by path. Holds both as maps of their entries:
    :func:`diff_snapshots` does without when the trees are in walk order."""
    old = {e.path: e for e in before}
    new = {e.path: e for e in after}
    changes: list[Change] = []
    st = DiffStats()
    for path in sorted(old.keys() | new.keys()):
        _compare(path, old.get(path), new.get(path), changes, st)
    return changes, st


def _compare(path: str, a: Entry | None, b: Entry | None, changes: list[Change], st: DiffStats) -> None:
    """Record what changed at *path* from *a* to *b* (None: absent)."""
    if a is None and b is not None:
        changes.append(Change(path, ADDED, 0, b.size))
        st.added += 1
        st.bytes_added += b.size
    elif b is None and a is not None:
        changes.append(Change(path, REMOVED, a.size, 0))
        st.removed += 1
        st.bytes_removed += a.size
    elif a is not None and b is not None:
        if a.type != b.type:
            changes.append(Change(path, TYPE_CHANGED, a.size, b.size))
            st.type_changed += 1
        elif a.chunks != b.chunks or a.target != b.target or (a.type == FILE and a.size != b.size):
            changes.append(Change(path, MODIFIED, a.size, b.size))
            st.modified += 1
        elif (a.mode, a.uid, a.gid, a.mtime_ns) != (b.mode, b.uid, b.gid, b.mtime_ns) and a.type != DIR:
            changes.append(Change(path, METADATA, a.size, b.size))
            st.metadata += 1


# -- find ---------------------------------------------------------------------------


def glob_matches(entry_path: str, pattern: str) -> bool:
    """restic's rule: the glob matches the base name, or (a pattern with '/') the full path."""
    name = entry_path.rstrip("/").rsplit("/", 1)[-1]
    if fnmatch.fnmatchcase(name, pattern):
        return True
    return "/" in pattern and fnmatch.fnmatchcase(entry_path, pattern)


@dataclass
class Found:
    snapshot: Snapshot
    matches: list[Entry] = field(default_factory=list)


def find(repo: Repository, snaps: list[Snapshot], patterns: list[str]) -> Iterator[Found]:
    """Per snapshot (in the order given), the entries matching any of *patterns*;
    snapshots without a match are left out. A snapshot with the same tree as the last
    one read of its source (a source that did not change) gets that tree's matches
    without reading it again: one tree's matches are held per source."""
    last: dict[str, tuple[tuple[str, ...], list[Entry]]] = {}  # source -> (tree, its matches)
    for snap in snaps:
        tree = tuple(snap.tree)
        held = last.get(snap.source)
        if held is not None and held[0] == tree:
            hits = held[1]
        else:
            hits = [e for e in iter_tree(repo, snap) if any(glob_matches(e.path, p) for p in patterns)]
            last[snap.source] = (tree, hits)
        if hits:
            yield Found(snap, hits)


# -- dump ---------------------------------------------------------------------------


def write_file(repo: Repository, entry: Entry, out: IO[bytes]) -> int:
    """Write one file's content (every blob verified) to *out*; returns bytes written."""
    n = 0
    for c in entry.chunks:
        data = repo.read_blob(bytes.fromhex(c))
        out.write(data)
        n += len(data)
    return n


class _BlobReader(io.RawIOBase):
    """A file's content as a stream, one verified blob at a time (for tarfile)."""

    def __init__(self, repo: Repository, chunks: list[str]) -> None:
        self._repo = repo
        self._ids = [bytes.fromhex(c) for c in chunks]
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            if not self._ids:
                return 0
            self._buf = memoryview(self._repo.read_blob(self._ids.pop(0)))
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def dump(repo: Repository, snap: Snapshot, path: str, out: IO[bytes]) -> str:
    """Write *path* of *snap* to *out*: a file's bytes, or a directory (and everything
    below it) as a POSIX tar stream with names relative to the directory's parent.
    Returns 'file' or 'tar'. Raises UsageError when *path* is not in the snapshot."""
    norm = path.rstrip("/") or "/"
    entries = list(list_entries(repo, snap, norm))
    top = next((e for e in entries if e.path == norm), None)
    if top is None and not (norm == "/" and entries):
        raise UsageError(f"{path!r} is not in snapshot {snap.short_id}", hint=f"'drkit ls {snap.short_id}' lists its paths")
    if top is not None and top.type == FILE:
        write_file(repo, top, out)
        return "file"
    if top is not None and top.type == SYMLINK:
        raise UsageError(f"{path!r} is a symlink (to {top.target!r}) in snapshot {snap.short_id}; dump its target")
    base = norm.rsplit("/", 1)[0] if norm != "/" else ""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.path[len(base):].lstrip("/") or ".")
            info.mode = e.mode
            info.uid, info.gid = e.uid, e.gid
            info.uname, info.gname = e.user, e.group
            info.mtime = e.mtime_ns / 1e9
            if e.type == DIR:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif e.type == SYMLINK:
                info.type = tarfile.SYMTYPE
                info.linkname = e.target
                tar.addfile(info)
            else:
                info.size = e.size
                tar.addfile(info, io.BufferedReader(_BlobReader(repo, e.chunks), buffer_size=1024 * 1024))
    return "tar"


# -- stats --------------------------------------------------------------------------


@dataclass
class SizeStats:
    snapshots: int = 0
    files: int = 0
    raw: int = 0
    """What a restore of every snapshot would write (sum of file sizes)."""
    deduplicated: int = 0
    """Plaintext size of the distinct blobs these snapshots use."""
    stored: int = 0
    """Bytes those distinct blobs take in the repository (compressed, encrypted)."""
    blobs: int = 0

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


def stats(repo: Repository, snaps: list[Snapshot]) -> tuple[dict[str, SizeStats], SizeStats]:
    """Sizes per source and in total (distinct blobs counted once per group).
    Needs the index loaded. Tree blobs count towards deduplicated and stored. Each
    distinct tree of a source is read once (snapshots of a source that did not change
    have the same tree); its files and bytes count for every snapshot that has it."""
    per: dict[str, SizeStats] = {}
    blobs: dict[str, set[bytes]] = {}
    counted: dict[tuple[str, tuple[str, ...]], tuple[int, int]] = {}  # (source, tree) -> (files, raw)
    for snap in snaps:
        s = per.setdefault(snap.source, SizeStats())
        s.snapshots += 1
        key = (snap.source, tuple(snap.tree))
        if key not in counted:
            ids = blobs.setdefault(snap.source, set())
            ids.update(bytes.fromhex(t) for t in snap.tree)
            files = raw = 0
            for e in iter_tree(repo, snap):
                if e.type == FILE:
                    files += 1
                    raw += e.size
                    ids.update(bytes.fromhex(c) for c in e.chunks)
            counted[key] = (files, raw)
        files, raw = counted[key]
        s.files += files
        s.raw += raw
    total = SizeStats()
    every: set[bytes] = set()
    for name, s in per.items():
        _sizes(repo, blobs[name], s)
        total.snapshots += s.snapshots
        total.files += s.files
        total.raw += s.raw
        every |= blobs[name]
    _sizes(repo, every, total)
    return per, total


def _sizes(repo: Repository, ids: set[bytes], into: SizeStats) -> None:
    """Blob count and sizes of *ids*; a group (format v3) counts its stored bytes once
    for all its members among *ids*."""
    into.blobs = len(ids)
    groups: set[tuple[str, int]] = set()
    for cid in ids:
        loc = repo.index.get(cid)
        if loc is not None:
            into.deduplicated += loc.raw_length
            if loc.blob_type == BLOB_GROUP:
                if (loc.pack, loc.offset) in groups:
                    continue
                groups.add((loc.pack, loc.offset))
            into.stored += loc.length
