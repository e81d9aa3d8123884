"""Write snapshots the way an attacker holding the backup host's key could: any
entries, any content, stored through the real repository code (so a restore reads
them exactly as it would read a hostile writer's)."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import Sequence

from drkit.repository.blob import BLOB_DATA, BLOB_TREE
from drkit.repository.repo import Repository
from drkit.repository.saver import BlobSaver
from drkit.repository.snapshot import Snapshot, now_iso
from drkit.repository.tree import DIR, FILE, Entry, encode_entries
from drkit.services.restorefs import TMP_PREFIX
from drkit.storage import LocalStorage


def write_snapshot(repo: Repository, entries: list[Entry], contents: dict[str, bytes] | None = None, *,
                   source: str = "data", source_type: str = "files", meta: dict[str, object] | None = None,
                   raw_lines: Sequence[bytes] = (), tree_piece: int | None = None, time: str | None = None) -> Snapshot:
    """Store *entries* (file content from *contents*, keyed by entry path; one chunk
    per file, or the chunk ids the entries name when *contents* has no content for
    them) as a new snapshot of *source*; returns it. *raw_lines* are stored after the
    entries as they are (tree lines no encoder of ours writes). *tree_piece*: store the
    tree in blobs of this many bytes, cut anywhere (mid-line), as the chunker may;
    default one blob."""
    contents = contents or {}
    repo.load_index()
    with BlobSaver(repo) as saver:
        for e in entries:
            if e.type == FILE and e.path in contents:
                data = contents[e.path]
                e.size = len(data)
                e.chunks = [saver.save(data, BLOB_DATA)[0].hex()] if data else []
        tree_bytes = b"".join(encode_entries(entries)) + b"".join(line + b"\n" for line in raw_lines)
        piece = tree_piece or max(1, len(tree_bytes))
        tree = [saver.save(tree_bytes[at : at + piece], BLOB_TREE)[0].hex() for at in range(0, len(tree_bytes), piece)] or [
            saver.save(tree_bytes, BLOB_TREE)[0].hex()]
    listed = len(entries) + len(raw_lines)  # (recorded as a backup records it: a restore plans with it)
    snap = Snapshot(id=secrets.token_hex(32), time=time or now_iso(), source=source, source_type=source_type,
                    run=secrets.token_hex(16), host="attacker", tree=tree, meta=dict(meta or {}),
                    stats={"entries": listed} if listed else {})
    repo.save_snapshot(snap)
    repo.load_index()
    return snap


SMALL_TREE_MODES = (0o644, 0o600, 0o755, 0o640, 0o444)


def small_file_tree(count: int, per_dir: int = 50) -> tuple[list[Entry], dict[str, bytes]]:
    """*count* small files (some empty, some with equal content) in directories of
    *per_dir* (mode 0750), with varied modes and nanosecond mtimes: entries in walk
    order, and the content of each file by path."""
    entries: list[Entry] = []
    contents: dict[str, bytes] = {}
    for i in range(count):
        d = f"d{i // per_dir:04d}"
        if i % per_dir == 0:
            entries.append(Entry(d, DIR, mode=0o750, mtime_ns=1_600_000_000_000_000_000 + i))
        path = f"{d}/f{i:05d}"
        data = b"" if i % 97 == 0 else (b"same\n" if i % 13 == 0 else f"file {i}\n".encode() * (1 + i % 9))
        entries.append(Entry(path, FILE, mode=SMALL_TREE_MODES[i % len(SMALL_TREE_MODES)],
                             mtime_ns=1_700_000_000_123_456_789 + i * 1_000_003))
        contents[path] = data
    return entries, contents


def small_pack_repo(root: Path) -> Repository:
    """A new repository in *root*/repo with 1 MiB packs (passphrase "pw"), opened."""
    storage = LocalStorage(str(root / "repo"))
    Repository.init(storage, "pw", pack_size=1024 * 1024)
    return Repository.open(storage, "pw")


def assert_restored_exactly(target: Path, entries: list[Entry], contents: dict[str, bytes]) -> None:
    """Every entry under *target* with its mode and mtime, every file with its content
    (from *contents*), and no restore temporary or staging directory left."""
    for e in entries:
        st = os.lstat(target / e.path)
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (e.mode, e.mtime_ns), e.path
        if e.type == FILE:
            assert (target / e.path).read_bytes() == contents[e.path], e.path
    assert [str(p) for p in target.rglob(f"{TMP_PREFIX}*")] == []
