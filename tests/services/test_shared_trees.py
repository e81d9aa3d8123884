"""``drkit stats`` and ``drkit find`` read a tree that snapshots of a source share once:
snapshots of a source that did not change have the same tree, and it was read and
decoded again for each (from S3 or SFTP a round trip per tree blob). What they report
stays per snapshot: stats count files and raw bytes for every snapshot and distinct
blobs once; find lists the matches of every snapshot."""

from __future__ import annotations

from pathlib import Path
import pytest

from drkit.repository.blob import BLOB_DATA, BLOB_TREE
from drkit.repository.repo import Repository
from drkit.repository.saver import BlobSaver
from drkit.repository.tree import DIR, Entry, encode_entries
from drkit.services import browse
from drkit.storage import LocalStorage
from tests.services.conftest import count_tree_walks, save_manifest


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    storage = LocalStorage(str(tmp_path / "repo"))
    Repository.init(storage, "pw", pack_size=1024 * 1024)
    return Repository.open(storage, "pw")


def _tree(saver: BlobSaver, files: dict[str, bytes]) -> list[str]:
    entries = [Entry(path="/srv", type=DIR)]
    for path, content in files.items():
        chunk_id = saver.save(content, BLOB_DATA)[0]
        entries.append(Entry(path=path, type="file", size=len(content), chunks=[chunk_id.hex()]))
    return [saver.save(b"".join(encode_entries(entries)), BLOB_TREE)[0].hex()]


def test_each_tree_of_a_source_is_read_once_and_counts_for_every_snapshot(repo: Repository,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with BlobSaver(repo) as saver:
        same = _tree(saver, {"/srv/a": b"a" * 100, "/srv/b": b"b" * 50})
        changed = _tree(saver, {"/srv/a": b"c" * 100, "/srv/b": b"b" * 50})
    repo.load_index()
    snaps = [save_manifest(repo, same, no, "data") for no in range(4)] + [save_manifest(repo, changed, 4, "data")]
    snaps.append(save_manifest(repo, same, 5, "copy"))  # the same tree in another source counts there too
    walked = count_tree_walks(monkeypatch, browse)
    per, total = browse.stats(repo, snaps)
    assert sorted(walked) == sorted([("data", same), ("data", changed), ("copy", same)])
    data = per["data"]
    assert (data.snapshots, data.files, data.raw) == (5, 10, 5 * 150)
    assert data.blobs == 5  # a, b, c and two trees
    assert (per["copy"].snapshots, per["copy"].files, per["copy"].raw, per["copy"].blobs) == (1, 2, 150, 3)
    assert (total.snapshots, total.files, total.raw, total.blobs) == (6, 12, 6 * 150, 5)
    assert total.deduplicated == 100 + 50 + 100 + sum(repo.index.get(bytes.fromhex(t[0])).raw_length for t in (same, changed))  # type: ignore[union-attr]


def test_find_reads_a_tree_again_only_when_the_source_changed(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    with BlobSaver(repo) as saver:
        same = _tree(saver, {"/srv/a": b"a" * 100, "/srv/b": b"b" * 50})
        changed = _tree(saver, {"/srv/a": b"c" * 100})
        other = _tree(saver, {"/srv/x": b"x"})
    repo.load_index()
    order = [("data", same), ("other", other), ("data", same), ("data", same), ("other", other), ("data", changed),
             ("data", same)]
    snaps = [save_manifest(repo, tree, no, source) for no, (source, tree) in enumerate(order)]
    walked = count_tree_walks(monkeypatch, browse)
    found = list(browse.find(repo, snaps, ["/srv/a"]))
    assert walked == [("data", same), ("other", other), ("data", changed), ("data", same)]
    assert [f.snapshot.id for f in found] == [s.id for s, (source, _) in zip(snaps, order, strict=True) if source == "data"]
    assert all([e.path for e in f.matches] == ["/srv/a"] for f in found)
    assert [f.matches[0].chunks for f in found][3] != [f.matches[0].chunks for f in found][0]  # the changed one
