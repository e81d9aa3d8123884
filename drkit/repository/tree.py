"""Snapshot trees: the list of entries (files, directories, symlinks) of a snapshot.

A tree is serialised as JSON lines, one :class:`Entry` per line, in the order the
source produced them (directories before their contents). Names that are not UTF-8
are stored as base64 beside a display form (see :meth:`Entry.to_json`). The serialised stream is
chunked like file data and stored as blobs of type ``tree``, so unchanged metadata
deduplicates across snapshots. The snapshot manifest lists the tree blob ids in order.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator

if TYPE_CHECKING:
    from drkit.repository.repo import Repository
    from drkit.repository.snapshot import Snapshot

_NAME_KEYS = ("path", "target")


def _raw_name(name: object) -> bytes | None:
    """The bytes of *name* if it is not valid UTF-8 (surrogate-escaped), else None."""
    if not isinstance(name, str):
        return None
    try:
        name.encode("utf-8")
        return None
    except UnicodeEncodeError:
        try:
            return name.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a surrogate that stands for no byte (hostile input)
            return name.encode("utf-8", "replace")


FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
ENTRY_TYPES = (FILE, DIR, SYMLINK)


@dataclass
class Entry:
    """One item of a snapshot.

    ``path`` is the logical path: absolute for files taken from the host
    (``/srv/data/x``), relative for artefacts a source produced (``state.db``).
    Restore puts it at ``TARGET/<path without leading slash>``.
    ``chunks`` are hex chunk ids whose plaintexts, concatenated, are the content.
    """

    path: str
    type: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    user: str = ""
    group: str = ""
    mtime_ns: int = 0
    size: int = 0
    chunks: list[str] = field(default_factory=list)
    target: str = ""
    # change detection for the files source (not restored)
    inode: int = 0
    ctime_ns: int = 0
    dev: int = 0

    def to_json(self) -> str:
        """One JSON line, ASCII: ``path``, ``type``, then ``mode`` and every other field
        that is not empty or zero, in field order. Byte-identical to the original
        ``asdict`` encoding (so unchanged entries deduplicate across snapshots) except that
        a mode of 0 is written out (omitted, it read back as the default 0644). Built
        without ``asdict``, which deep-copies every entry and was the largest per-file cost
        of a backup. A path or target that is not valid UTF-8 (held in memory with
        surrogate escapes, as ``os.fsdecode`` makes it) is stored as
        ``path_b64``/``target_b64`` (base64 of the raw bytes), with ``path``/``target``
        holding a display form (each bad byte as U+FFFD): valid JSON for any parser."""
        data: dict[str, Any] = {"path": self.path, "type": self.type}
        for name in _OPTIONAL_FIELDS:
            value = getattr(self, name)
            if value not in ("", 0, []) or name == "mode":
                data[name] = list(value) if name == "chunks" else value
        for key in _NAME_KEYS:
            raw = _raw_name(data.get(key, ""))
            if raw is not None:
                data[key] = raw.decode("utf-8", "replace")
                data[f"{key}_b64"] = base64.b64encode(raw).decode("ascii")
        return _ENCODE(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Entry":
        """Inverse of :meth:`to_json`; ``*_b64`` names win over their display form.
        Version-1 trees (lone surrogates U+DC80..U+DCFF standing for bytes) read as is."""
        if data.keys() <= _FIELD_NAMES:  # the usual line: only known fields (no copy)
            return cls(**data)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in _NAME_KEYS:
            encoded = data.get(f"{key}_b64")
            if isinstance(encoded, str):
                known[key] = base64.b64decode(encoded).decode("utf-8", "surrogateescape")
        return cls(**known)

    @classmethod
    def from_json(cls, line: str) -> "Entry":
        return cls.from_dict(json.loads(line))


_OPTIONAL_FIELDS = tuple(f for f in Entry.__dataclass_fields__ if f not in ("path", "type"))
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode
_FIELD_NAMES = frozenset(Entry.__dataclass_fields__)


def walk_order_key(path: str) -> str:
    """Sort key of the order sources record entries in: a directory before its contents,
    names sorted within a directory (depth-first over sorted names). That is the order
    of the paths' lists of components, and comparing the paths with each ``/`` made a
    NUL (which no name contains, so it sorts below every character a name has) gives
    the same order in one string comparison."""
    return path.replace("/", "\0")


def encode_entries(entries: Iterable[Entry]) -> Iterator[bytes]:
    """Serialise entries as JSON lines (UTF-8, ASCII-escaped)."""
    for entry in entries:
        yield (entry.to_json() + "\n").encode("ascii")


_LINE_KEYS = _FIELD_NAMES | {f"{key}_b64" for key in _NAME_KEYS}


def parse_line(line: bytes) -> tuple[Entry, bool]:
    """One stored line: its entry, and whether the line says nothing beyond the entry
    (every key one this version reads), so that it may be stored again as it is in
    place of the entry's encoding. Raises ValueError (or TypeError) for a malformed line."""
    entry = file_entry(line)  # (the usual file line says nothing more)
    if entry is not None:
        return entry, True
    data = json.loads(line.decode("ascii"))
    return Entry.from_dict(data), data.keys() <= _LINE_KEYS


def _plain(text: str) -> bool:
    """True when JSON writes *text* as it is between its quotes (printable ASCII, no
    quote, no backslash)."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


def owner_fragment(uid: int, gid: int, user: str, group: str) -> str | None:
    """What :meth:`Entry.to_json` writes for these owner fields (between ``mode`` and
    ``mtime_ns``); None when a name would be escaped (see :func:`file_line_frame`)."""
    if not (_plain(user) and _plain(group)):
        return None
    return ((f',"uid":{uid}' if uid else "") + (f',"gid":{gid}' if gid else "")
            + (f',"user":"{user}"' if user else "") + (f',"group":"{group}"' if group else ""))


_FULL_HEAD = b'{"path":"%b","type":"file","mode":%d%b,"mtime_ns":%d,"size":%d'
_FULL_TAIL = b',"inode":%d,"ctime_ns":%d,"dev":%d}'
"""What :meth:`Entry.to_json` writes before and after the chunk list of a regular file
whose fields are all set (path, mode, owner fragment, mtime_ns, size; inode, ctime_ns,
dev): the usual file line, written and compared in one format each side."""
_ONE_CHUNK_HEAD, _ONE_CHUNK_TAIL = _FULL_HEAD + b',"chunks":["', b'"]' + _FULL_TAIL


def file_line_frame(path: str, mode: int, owner: str, mtime_ns: int, size: int, inode: int, ctime_ns: int,
                    dev: int, kind: str = FILE) -> tuple[bytes, bytes] | None:
    """What :meth:`Entry.to_json` writes for a regular file (or an entry of type *kind*
    without a target) with these fields (*owner* from :func:`owner_fragment`) before and
    after its chunk list (``,"chunks":[...]``, absent when there is none): a stored line
    is compared with a file through it, without parsing the line. None when the path
    would be escaped (only parsing compares such a line)."""
    if not _plain(path):
        return None
    if mtime_ns and size and inode and ctime_ns and dev and kind == FILE:  # every field written (one format)
        return (_FULL_HEAD % (path.encode(), mode, owner.encode(), mtime_ns, size),
                _FULL_TAIL % (inode, ctime_ns, dev))
    head = (f'{{"path":"{path}","type":"{kind}","mode":{mode}{owner}' + (f',"mtime_ns":{mtime_ns}' if mtime_ns else "")
            + (f',"size":{size}' if size else ""))
    tail = ((f',"inode":{inode}' if inode else "") + (f',"ctime_ns":{ctime_ns}' if ctime_ns else "")
            + (f',"dev":{dev}' if dev else "") + "}")
    return head.encode("ascii"), tail.encode("ascii")


def entry_line(entry: Entry, owner: str) -> bytes | None:
    """``entry.to_json()`` and its newline, as bytes, written through
    :func:`file_line_frame` (about a third of the time) for a regular file or a
    directory (*owner*: its :func:`owner_fragment`); None when the frame does not apply
    (a name JSON escapes, a target, a symlink)."""
    if entry.type not in (FILE, DIR) or entry.target:
        return None
    return file_line(entry.path, entry.mode, owner, entry.mtime_ns, entry.size, entry.inode, entry.ctime_ns, entry.dev,
                     '","'.join(entry.chunks).encode("ascii"), entry.type)


def file_line(path: str, mode: int, owner: str, mtime_ns: int, size: int, inode: int, ctime_ns: int, dev: int,
              chunks: bytes, kind: str = FILE) -> bytes | None:
    """The line, newline included, :meth:`Entry.to_json` writes for a regular file (or an
    entry of type *kind* without a target) with these fields, *owner* from
    :func:`owner_fragment` and *chunks* its chunk ids (hex, joined by ``","``; empty when
    there is none), without making an :class:`Entry`; None where
    :func:`file_line_frame` does not apply (a path JSON escapes)."""
    frame = file_line_frame(path, mode, owner, mtime_ns, size, inode, ctime_ns, dev, kind)
    if frame is None:
        return None
    if chunks:
        return b"".join((frame[0], b',"chunks":["', chunks, b'"]', frame[1], b"\n"))
    return frame[0] + frame[1] + b"\n"


def stored_chunk_ids(line: bytes, path: str, mode: int, owner: str, mtime_ns: int, size: int, inode: int, ctime_ns: int,
                     dev: int) -> list[bytes] | None:
    """``chunks_in_frame(line, *file_line_frame(...))`` (None where the frame does not
    apply): the chunk ids of *line* if it is exactly what :meth:`Entry.to_json` writes
    for a regular file with these fields and some chunk list. The usual line (every
    field set, one chunk) is checked with one comparison on each side of its chunk id."""
    if mtime_ns and size and inode and ctime_ns and dev and _plain(path):
        head = _ONE_CHUNK_HEAD % (path.encode(), mode, owner.encode(), mtime_ns, size)
        if line.startswith(head):
            tail = _ONE_CHUNK_TAIL % (inode, ctime_ns, dev)
            start = len(head)
            if len(line) == start + 64 + len(tail) and line.endswith(tail):
                return [line[start : start + 64]]
    frame = file_line_frame(path, mode, owner, mtime_ns, size, inode, ctime_ns, dev)
    return chunks_in_frame(line, *frame) if frame is not None else None


def chunks_in_frame(line: bytes, head: bytes, tail: bytes) -> list[bytes] | None:
    """The chunk ids (64 ASCII characters each, hex unchecked: ``binascii.unhexlify``
    them) of *line* if it is exactly *head*, a chunk list (or none) and *tail* (see
    :func:`file_line_frame`); None if it is anything else."""
    start, end = len(head), len(line) - len(tail)
    if end < start or not (line.startswith(head) and line.endswith(tail)):
        return None
    if end == start:
        return []
    if not (line.startswith(b',"chunks":["', start) and line.startswith(b'"]', end - 2)):
        return None
    if end - start == 78:  # one chunk (every small file): ',"chunks":["' 64 '"]'
        return [line[start + 12 : end - 2]]
    ids = line[start + 12 : end - 2].split(b'","')
    for chunk_id in ids:
        if len(chunk_id) != 64:
            return None
    return ids


def line_path(line: bytes) -> str | None:
    """The path of a stored line whose path JSON writes as it is (see :func:`_plain`),
    without parsing the line; None for any other line."""
    if line.startswith(b'{"path":"'):
        end = line.find(b'"', 9)
        if end > 0:
            raw = line[9:end]
            if raw.isascii() and b"\\" not in raw:
                return raw.decode("ascii")
    return None


def line_paths(chunks: Iterable[bytes]) -> Iterator[str]:
    """The path of each entry of a tree stored as byte chunks split anywhere: exactly
    the ``path`` :func:`decode_lines` gives, in order, for about a tenth of its time (a
    restore checks every path before writing anything). A line is parsed only when it
    does not name its path plainly as its first key, or could name it twice (``"path``
    appears again: a repeated key, which JSON resolves to the last, a ``path_b64``, or
    a value that begins like one). A line that is not parsed is not checked to be valid
    JSON (:func:`decode_lines` raises ValueError for it); a parsed one raises ValueError
    when malformed."""
    for line in split_lines(chunks):
        path = line_path(line) if line.count(b'"path') == 1 else None
        yield path if path is not None else Entry.from_json(line.decode("ascii")).path


def split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The non-empty JSON lines (without their newline) of a tree stored as byte chunks
    split anywhere."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line:
                yield line
    if pending.strip():
        yield pending


_PLAIN = rb"[\x20\x21\x23-\x5b\x5d-\x7e]"
"""A character JSON writes as it is between quotes (printable ASCII but ``"`` and ``\\``)."""
_SET = rb"([1-9][0-9]*)"
"""A field :meth:`Entry.to_json` writes only when it is not zero."""
_FILE_LINE = re.compile(
    rb'\{"path":"(' + _PLAIN + rb'*)","type":"file","mode":(0|[1-9][0-9]*)'
    rb'(?:,"uid":' + _SET + rb')?(?:,"gid":' + _SET + rb')?'
    rb'(?:,"user":"(' + _PLAIN + rb'+)")?(?:,"group":"(' + _PLAIN + rb'+)")?'
    rb'(?:,"mtime_ns":' + _SET + rb')?(?:,"size":' + _SET + rb')?'
    rb'(?:,"chunks":\["([0-9a-f]{64}(?:","[0-9a-f]{64})*)"\])?'
    rb'(?:,"inode":' + _SET + rb')?(?:,"ctime_ns":' + _SET + rb')?(?:,"dev":' + _SET + rb')?\}'
)


def file_entry(line: bytes) -> Entry | None:
    """The entry of a stored line that is exactly what :meth:`Entry.to_json` writes for a
    regular file whose names JSON writes as they are (each key once, in field order, no
    space, numbers without sign or leading zero, lower-case chunk ids): the entry
    :meth:`Entry.from_json` gives for it, for about two thirds of the time (a restore
    decodes every line). None for any other line (parse it)."""
    m = _FILE_LINE.fullmatch(line)
    if m is None:
        return None
    path, mode, uid, gid, user, group, mtime_ns, size, chunks, inode, ctime_ns, dev = m.groups()
    return Entry(path.decode("ascii"), FILE, int(mode), int(uid) if uid else 0, int(gid) if gid else 0,
                 user.decode("ascii") if user else "", group.decode("ascii") if group else "",
                 int(mtime_ns) if mtime_ns else 0, int(size) if size else 0,
                 chunks.decode("ascii").split('","') if chunks else [], "",
                 int(inode) if inode else 0, int(ctime_ns) if ctime_ns else 0, int(dev) if dev else 0)


def decode_line(line: bytes) -> Entry:
    """The entry of one stored line (without its newline): :meth:`Entry.from_json`, through
    :func:`file_entry` for the usual file line. Raises ValueError (or TypeError) for a
    malformed line."""
    entry = file_entry(line)
    return entry if entry is not None else Entry.from_json(line.decode("ascii"))


def decode_lines(chunks: Iterable[bytes]) -> Iterator[Entry]:
    """Parse JSON lines from a sequence of byte chunks split anywhere."""
    return map(decode_line, split_lines(chunks))


def tree_chunks(repo: "Repository", snap: "Snapshot") -> Iterator[bytes]:
    """The stored tree of a snapshot, blob by blob (verified on read; raises
    IntegrityError for a damaged or missing one), the next blobs read meanwhile
    (:meth:`~drkit.repository.repo.Repository.read_blobs`)."""
    return repo.read_blobs([bytes.fromhex(t) for t in snap.tree])


def iter_tree(repo: "Repository", snap: "Snapshot") -> Iterator[Entry]:
    """Entries of a snapshot, in stored order (tree blobs are verified on read;
    raises IntegrityError for a damaged or missing one)."""
    return decode_lines(tree_chunks(repo, snap))
