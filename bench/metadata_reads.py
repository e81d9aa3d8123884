"""Listing snapshots and loading the index from storage that answers slowly: the reads
one at a time against drkit's (manifests 8 at once, index files 4 ahead), in one run.

    python bench/metadata_reads.py [--latency-ms 30] [--snapshots 200] [--index-files 100]

From S3 or SFTP across a WAN every object read waits a round trip before its first byte
(tens of milliseconds), and ``snapshots``, ``restore latest`` and every backup read every
manifest, a restore on a new machine every index file. This builds a local repository
with that many manifests and index files (under ``--work``, reused when it matches),
then reads them through a storage wrapper that delays each read by ``--latency-ms``:
first each object in turn, as drkit did before, then through
:meth:`~drkit.repository.repo.Repository.list_snapshots` and
:meth:`~drkit.repository.repo.Repository.load_index`. It checks that both ways read the
same snapshots and the same index, and prints the times and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drkit.repository import layout  # noqa: E402
from drkit.repository.blob import BLOB_DATA  # noqa: E402
from drkit.repository.repo import INDEX_READS, MANIFEST_READS, Repository  # noqa: E402
from drkit.repository.saver import BlobSaver  # noqa: E402
from drkit.repository.snapshot import Snapshot  # noqa: E402
from drkit.storage import LocalStorage  # noqa: E402

PASSWORD = "bench"


class SlowStorage:
    """*inner*, every ``get`` first waiting *latency* seconds (a network round trip)."""

    def __init__(self, inner: Any, latency: float) -> None:
        self.inner = inner
        self.latency = latency

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        time.sleep(self.latency)
        return self.inner.get(name, offset, length)


def build(work: Path, snapshots: int, index_files: int) -> LocalStorage:
    """A repository under *work* with *snapshots* manifests and *index_files* index
    files (50 small blobs each); reused when one with these counts is there."""
    marker = work / "built.json"
    wanted = {"snapshots": snapshots, "index_files": index_files}
    storage = LocalStorage(str(work / "repo"))
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return storage
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    Repository.init(storage, PASSWORD)
    repo = Repository.open(storage, PASSWORD)
    for n in range(snapshots):
        repo.save_snapshot(Snapshot(id=os.urandom(32).hex(), time=f"2026-11-{1 + n % 28:02d}T10:{n % 60:02d}:00Z",
                                    source=f"source{n % 8}", source_type="files", run=os.urandom(16).hex(),
                                    host="node1", tree=[]))
    for _ in range(index_files):
        with BlobSaver(repo) as saver:  # one index file per session
            for _ in range(50):
                saver.save(os.urandom(500), BLOB_DATA)
    marker.write_text(json.dumps(wanted))
    return storage


def measure(storage: LocalStorage, latency: float) -> dict[str, float]:
    """Seconds for each way of reading; raises ValueError if the two ways differ."""
    slow = SlowStorage(storage, latency)
    one = Repository.open(slow, PASSWORD)  # type: ignore[arg-type]
    start = time.perf_counter()
    listed = sorted((one.load_snapshot(i) for i in one.snapshot_ids()), key=lambda s: (s.time, s.id))
    manifests_in_turn = time.perf_counter() - start
    start = time.perf_counter()
    rows = 0
    for index_id in sorted(filter(None, (layout.id_of(i.name) for i in storage.list(layout.INDEX)))):
        packs, _ = one._read_index_listing(index_id)
        rows += sum(len(listed_blobs.rows) for _, _, listed_blobs in packs)
    index_in_turn = time.perf_counter() - start

    repo = Repository.open(slow, PASSWORD)  # type: ignore[arg-type]
    start = time.perf_counter()
    snaps = repo.list_snapshots()
    manifests = time.perf_counter() - start
    start = time.perf_counter()
    repo.load_index()
    index = time.perf_counter() - start
    if [s.id for s in snaps] != [s.id for s in listed] or len(repo.index) != rows:
        raise ValueError("the two ways read different snapshots or a different index")
    return {"manifests_in_turn": manifests_in_turn, "manifests": manifests, "index_in_turn": index_in_turn,
            "index": index, "snapshots": len(snaps), "index_files": len(repo.index.files)}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency-ms", type=float, default=30.0, help="wait before each read (default 30)")
    ap.add_argument("--snapshots", type=int, default=200, help="manifests (default 200)")
    ap.add_argument("--index-files", type=int, default=100, help="index files (default 100)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/drkit-bench-metadata"), help="where the repository is built")
    args = ap.parse_args(argv)
    r = measure(build(args.work, args.snapshots, args.index_files), args.latency_ms / 1000)
    print(f"{r['snapshots']:.0f} manifests, {r['index_files']:.0f} index files, {args.latency_ms:g} ms before each read")
    print(f"list snapshots: one at a time {r['manifests_in_turn']:.2f} s, {MANIFEST_READS} at once {r['manifests']:.2f} s "
          f"({r['manifests'] / r['manifests_in_turn']:.2f}x)")
    print(f"load index:     one at a time {r['index_in_turn']:.2f} s, {INDEX_READS} ahead {r['index']:.2f} s "
          f"({r['index'] / r['index_in_turn']:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
