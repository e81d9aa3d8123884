"""What sealing small files in shared blobs would save: a measurement for a format
decision, not a feature (#18).

    python bench/small_blob_groups.py [--files N] [--group G] [--data DIR]

drkit seals every small file as a blob of its own (format versions 1 and 2). A format
that sealed the contents of several small files as one blob (kopia's concatenation)
would still have to hash each file and keep an index row for it: deduplication, and a
recipient-mode backup host that cannot read earlier snapshots, rely on a content id per
file. It would compress, encrypt and verify once per group instead of once per file.

This measures both, with drkit's own codec, on the bench's many-small-files set (the
first *N* files; generated under ``--data`` when missing), in one process, as CPU time
per file:

- backup: what a backup worker does for each file: read it, hash it, then compress,
  seal and verify (decrypt, decompress, compare) its blob, or the group's blob once the
  group is full (*G* files, at most 64 KiB);
- restore: what a restore worker does before writing: decrypt and decompress each blob
  (or each group once), and check every file against its id.

It also prints the stored size of each layout as a fraction of the files' bytes.
Neither side writes files or touches a repository. The remainder of a backup (the walk,
the tree, packs and index rows) and of a restore (planning, writing files) is per file
in both layouts and is not measured here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import smallfiles  # noqa: E402

from drkit.repository.blob import BLOB_DATA, BlobCodec  # noqa: E402
from drkit.repository.crypto import ChunkHasher, Cipher  # noqa: E402
from drkit.smallread import read_whole  # noqa: E402

GROUP_BYTES = 64 * 1024


@dataclass
class Sealed:
    """One sealed blob and the files it holds: (file id, length) in order."""

    blob_id: bytes
    sealed: bytes
    files: list[tuple[bytes, int]]


def codec() -> BlobCodec:
    """drkit's blob codec at its default ("auto") level, with throwaway keys."""
    return BlobCodec(Cipher(os.urandom(32)), ChunkHasher(os.urandom(32)), 1)


def seal(paths: Sequence[str], sizes: Sequence[int], blobs: BlobCodec, group: int) -> list[Sealed]:
    """Read, hash and seal *paths*: one blob per file when *group* is 1, else groups of
    at most *group* files and :data:`GROUP_BYTES`. Each blob is verified as drkit does."""
    hasher = blobs.hasher
    out: list[Sealed] = []
    pending: list[tuple[bytes, bytes]] = []
    pending_bytes = 0

    def flush() -> None:
        nonlocal pending, pending_bytes
        data = b"".join(d for _, d in pending)
        blob_id = hasher(data) if len(pending) > 1 else pending[0][0]
        out.append(Sealed(blob_id, blobs.encode(BLOB_DATA, blob_id, data), [(i, len(d)) for i, d in pending]))
        pending, pending_bytes = [], 0

    for path, size in zip(paths, sizes, strict=True):
        data = read_whole(path, size, 1 << 20)
        if not data:
            continue
        pending.append((hasher(data), data))
        pending_bytes += len(data)
        if len(pending) >= group or pending_bytes >= GROUP_BYTES:
            flush()
    if pending:
        flush()
    return out


def open_all(stored: Sequence[Sealed], blobs: BlobCodec) -> list[bytes]:
    """Every file's bytes back from *stored*, each checked against its own id (a blob
    of one file through drkit's full decode; a group opened once, then sliced)."""
    files: list[bytes] = []
    for s in stored:
        if len(s.files) == 1:
            files.append(bytes(blobs.decode_view(BLOB_DATA, s.blob_id, s.sealed, s.files[0][1])))
            continue
        data = memoryview(blobs.decode_view(BLOB_DATA, s.blob_id, s.sealed))
        at = 0
        for file_id, length in s.files:
            piece = data[at : at + length]
            if blobs.hasher(piece) != file_id:
                raise ValueError("a file does not match its id")
            files.append(bytes(piece))
            at += length
    return files


def measure(paths: Sequence[str], group: int, rounds: int = 2) -> dict[str, dict[str, float]]:
    """Best of *rounds* for each layout: backup and restore CPU microseconds per file,
    and the stored bytes as a fraction of the files' bytes. Raises ValueError if a
    layout does not give every file back as it was read."""
    sizes = [os.lstat(p).st_size for p in paths]
    blobs = codec()
    results: dict[str, dict[str, float]] = {}
    for name, size in (("one blob per file", 1), (f"groups of {group}", group)):
        best = {"backup_us": float("inf"), "restore_us": float("inf"), "stored": 0.0}
        for _ in range(rounds):
            start = time.process_time()
            stored = seal(paths, sizes, blobs, size)
            middle = time.process_time()
            files = open_all(stored, blobs)
            end = time.process_time()
            if files != [data for data in (Path(p).read_bytes() for p in paths) if data]:
                raise ValueError(f"{name}: the files did not come back as they were")
            best["backup_us"] = min(best["backup_us"], (middle - start) / len(paths) * 1e6)
            best["restore_us"] = min(best["restore_us"], (end - middle) / len(paths) * 1e6)
            best["stored"] = sum(len(s.sealed) for s in stored) / sum(sizes)
        results[name] = best
    return results


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=30_000, help="files measured (default 30,000)")
    ap.add_argument("--group", type=int, default=16, help="files per shared blob (default 16)")
    ap.add_argument("--data", type=Path, default=Path("/tmp/benchdata"),
                    help="where the small-file set is (or is generated); default /tmp/benchdata")
    args = ap.parse_args(argv)
    root = args.data / f"small-{args.files}-s1"
    smallfiles.generate(root, 1, args.files)
    paths = sorted(str(p) for p in root.rglob("*") if p.is_file() and p.name != smallfiles.MANIFEST)
    results = measure(paths, args.group)
    print(f"{len(paths)} files under {root}: CPU per file, best of 2")
    print(f"{'layout':20s} {'backup':>10s} {'restore':>10s} {'stored':>8s}")
    for name, r in results.items():
        print(f"{name:20s} {r['backup_us']:8.1f}us {r['restore_us']:8.1f}us {r['stored']:8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
