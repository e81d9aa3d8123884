"""``verify`` walks every snapshot's tree to find blobs missing from the index and which
snapshots each pack serves. It kept a set of snapshot labels per blob: blobs times
snapshots (100,000 blobs in 60 snapshots: 232 MiB traced, and minutes), enough to stop a
scheduled verify on a small node. Now it keeps the packs each distinct tree uses, and a
tree that snapshots share (an unchanged source) is read once; every problem is still
reported for every snapshot it affects."""

from __future__ import annotations

import gc
import os
import tracemalloc
from pathlib import Path
import pytest

from drkit.repository.blob import BLOB_DATA, BLOB_TREE
from drkit.repository.repo import Repository
from drkit.repository.saver import BlobSaver
from drkit.repository.tree import Entry, encode_entries
from drkit.services import verify
from drkit.storage import LocalStorage
from tests.services.conftest import count_tree_walks, save_manifest


def _repo(path: Path) -> Repository:
    storage = LocalStorage(str(path))
    Repository.init(storage, "pw", pack_size=1024 * 1024)
    return Repository.open(storage, "pw")


def _entries(saver: BlobSaver, count: int, tag: str) -> list[Entry]:
    out = []
    for i in range(count):
        chunk_id = saver.save(f"{tag}-{i}".encode() * 8, BLOB_DATA)[0]
        out.append(Entry(path=f"/srv/{tag}/f{i}", type="file", size=len(tag) * 8, chunks=[chunk_id.hex()]))
    return out


def _overhead(repo: Repository) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        report = verify.verify_repository(repo)
        used, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.ok, [p.line() for p in report.problems]
    return peak - used


def test_memory_does_not_grow_with_blobs_times_snapshots(tmp_path: Path) -> None:
    """Every snapshot has its own tree (one file differs) naming the same 3,000 blobs."""
    overheads = []
    for snapshots in (2, 40):
        repo = _repo(tmp_path / f"repo{snapshots}")
        with BlobSaver(repo) as saver:
            shared = _entries(saver, 3000, "shared")
            trees = []
            for no in range(snapshots):
                own = _entries(saver, 1, f"own{no}")
                trees.append([saver.save(b"".join(encode_entries(shared + own)), BLOB_TREE)[0].hex()])
        repo.load_index()
        for no, tree in enumerate(trees):
            save_manifest(repo, tree, no)
        overheads.append(_overhead(Repository.open(repo.storage, "pw")))
    # a label set per blob held 3,000 x 40 labels (several MiB); per tree only its packs
    assert overheads[1] < 1.5 * overheads[0] + 512 * 1024, overheads


def test_a_shared_tree_is_read_once_and_its_problems_named_for_each_snapshot(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _repo(tmp_path / "repo")
    lost = os.urandom(32).hex()  # a chunk no index lists
    with BlobSaver(repo) as saver:
        entries = _entries(saver, 5, "a") + [Entry(path="/srv/lost", type="file", size=3, chunks=[lost])]
        tree = [saver.save(b"".join(encode_entries(entries)), BLOB_TREE)[0].hex()]
        other = [saver.save(b"".join(encode_entries(_entries(saver, 2, "b"))), BLOB_TREE)[0].hex()]
    repo.load_index()
    snaps = [save_manifest(repo, tree, no) for no in range(3)] + [save_manifest(repo, other, 3, source="git")]
    walked = count_tree_walks(monkeypatch, verify)
    report = verify.verify_repository(Repository.open(repo.storage, "pw"))
    assert sorted(t for _, t in walked) == sorted([tree, other])
    lost_problems = [p for p in report.problems if p.object == f"blob {lost}"]
    assert sorted(p.snapshots[0] for p in lost_problems) == sorted(verify._label(s) for s in snaps[:3])
    assert all(p.detail == "data of /srv/lost is not in the index" for p in lost_problems)
    assert report.blobs == 5 + 1 + 2 + 2  # data blobs, the lost one, two trees
    assert not report.ok
