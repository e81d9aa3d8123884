"""What prune keeps: every blob a snapshot's tree names. Snapshots whose trees are the
same (a source that did not change between daily backups: the K3s node files, a Git
mirror, an idle volume) name the same blobs, and prune reads that tree once: it used to
read and decode it again for each snapshot, from S3 or SFTP a round trip per tree blob,
under the exclusive lock that keeps every backup waiting."""

from __future__ import annotations

from pathlib import Path
import pytest

from drkit.errors import DamageFound
from drkit.repository.blob import BLOB_DATA, BLOB_TREE
from drkit.repository.repo import Repository
from drkit.repository.saver import BlobSaver
from drkit.repository.tree import Entry, encode_entries
from drkit.services import prune
from drkit.storage import LocalStorage
from tests.services.conftest import count_tree_walks, save_manifest


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    storage = LocalStorage(str(tmp_path / "repo"))
    Repository.init(storage, "pw", pack_size=1024 * 1024)
    return Repository.open(storage, "pw")


def _tree(saver: BlobSaver, files: dict[str, bytes]) -> tuple[list[str], set[bytes]]:
    """Store *files* and a one-blob tree naming them: (tree list, their data blob ids)."""
    entries, data = [], set()
    for path, content in files.items():
        chunk_id = saver.save(content, BLOB_DATA)[0]
        data.add(chunk_id)
        entries.append(Entry(path=path, type="file", size=len(content), chunks=[chunk_id.hex()]))
    tree_id = saver.save(b"".join(encode_entries(entries)), BLOB_TREE)[0]
    return [tree_id.hex()], data


def test_each_tree_is_read_once_and_every_blob_it_names_is_kept(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    with BlobSaver(repo) as saver:
        same, same_data = _tree(saver, {"/etc/rancher/k3s/config.yaml": b"a" * 100, "/var/lib/k3s/token": b"t" * 40})
        other, other_data = _tree(saver, {"/etc/rancher/k3s/config.yaml": b"b" * 100})
    repo.load_index()
    for no in range(5):
        save_manifest(repo, same, no, "k3s-node")
    save_manifest(repo, other, 5, "k3s-node")
    walked = count_tree_walks(monkeypatch, prune)
    used = prune.used_blobs(repo)
    assert used == same_data | other_data | {bytes.fromhex(same[0]), bytes.fromhex(other[0])}
    assert sorted(tree for _, tree in walked) == sorted([same, other])  # five snapshots of one tree: read once


def test_a_damaged_tree_is_reported_for_every_snapshot_that_names_it(repo: Repository) -> None:
    with BlobSaver(repo) as saver:
        same, _ = _tree(saver, {"/a": b"x" * 10})
    repo.load_index()
    snaps = [save_manifest(repo, same, no, "k3s-node") for no in range(3)]
    loc = repo.index.get(bytes.fromhex(same[0]))
    assert loc is not None
    pack = Path(repo.storage.root) / "data" / loc.pack[:2] / loc.pack  # type: ignore[attr-defined]
    raw = bytearray(pack.read_bytes())
    raw[loc.offset + 20] ^= 1
    pack.write_bytes(bytes(raw))
    with pytest.raises(DamageFound) as info:
        prune.used_blobs(repo)
    assert info.value.fields["count"] == 3
    assert all(s.short_id in (info.value.hint or "") for s in snaps)
