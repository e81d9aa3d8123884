"""Fixtures for the service tests: run the real ``drkit`` CLI in-process, make
local repositories with config files, and sample data trees."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml



def write_config(path: Path, repo_url: str, sources: list[dict[str, Any]] | None = None, **extra: Any) -> Path:
    """Write a drkit config file (small packs so tests make several)."""
    doc: dict[str, Any] = {"repository": {"url": repo_url, "pack_size_mib": 1}, "sources": sources or []}
    doc.update(extra)
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


def make_tree(root: Path) -> dict[str, bytes]:
    """A small tree with text, a multi-chunk binary, an empty file, a symlink and nesting.

    Returns {relative path: content} of the regular files."""
    files = {
        "readme.txt": b"hello drkit\n" * 100,
        "etc/app/config.yaml": b"replicas: 1\nimage: app:1.2.3\n",
        "data/blob.bin": os.urandom(3 * 1024 * 1024 + 123),
        "data/empty": b"",
        "deep/a/b/c/d.txt": b"deep\n",
        "caf\u00e9 \u00fcml.txt": "unicode name\n".encode(),
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    os.chmod(root / "etc/app/config.yaml", 0o600)
    (root / "link-to-readme").symlink_to("readme.txt")
    return files


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[Path, dict[str, bytes]]]:
    root = tmp_path / "srv"
    root.mkdir()
    yield root, make_tree(root)


def restored_files(target: Path, root: Path) -> dict[str, bytes]:
    """{relative path: content} of regular files restored from *root* under *target*."""
    base = target / str(root).lstrip("/")
    return {
        str(p.relative_to(base)): p.read_bytes()
        for p in sorted(base.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def flip_byte_in_a_pack(repo_root: Path, *, largest: bool = True) -> Path:
    """Flip one byte in the middle of a pack under ``repo_root/data``; return the pack."""
    packs = sorted((p for p in (repo_root / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    assert packs, "no packs in the repository"
    pack = packs[-1] if largest else packs[0]
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(pack, 0o644)
    pack.write_bytes(bytes(data))
    return pack


def damage_blob_of(repo_root: Path, passphrase: str, path_suffix: str) -> Path:
    """Flip one byte inside the first data blob of the file whose path ends with
    *path_suffix* (latest snapshot that has it); return the damaged pack file.

    Only that blob's bytes change: tree blobs and other blobs still decrypt, so the
    damage is found exactly where that file's data is read."""
    from drkit.repository.repo import Repository
    from drkit.repository.tree import iter_tree
    from drkit.storage.local import LocalStorage

    repo = Repository.open(LocalStorage(repo_root), passphrase)
    repo.load_index()
    for snap in reversed(repo.list_snapshots()):
        for entry in iter_tree(repo, snap):
            if entry.path.endswith(path_suffix) and entry.chunks:
                loc = repo.index.get(bytes.fromhex(entry.chunks[0]))
                assert loc is not None
                pack = repo_root / "data" / loc.pack[:2] / loc.pack
                data = bytearray(pack.read_bytes())
                data[loc.offset + loc.length // 2] ^= 0xFF
                os.chmod(pack, 0o644)
                pack.write_bytes(bytes(data))
                return pack
    raise AssertionError(f"no file ending in {path_suffix!r} with data in the repository")


def save_manifest(repo: Any, tree: list[str], no: int, source: str = "data") -> Any:
    """Store a snapshot manifest of *source* naming *tree* (a list of tree blob ids), the
    *no*-th of a series (its time moves with *no*), and return the snapshot."""
    from drkit.repository.snapshot import Snapshot

    snap = Snapshot(id=os.urandom(32).hex(), time=f"2026-11-{no % 28 + 1:02d}T03:{no % 60:02d}:00Z", source=source,
                    source_type="files", run=os.urandom(16).hex(), host="node1", tree=tree)
    repo.save_snapshot(snap)
    return snap


def count_tree_walks(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[tuple[str, list[str]]]:
    """Record (source, tree) of every snapshot whose tree *module* reads through its
    ``iter_tree`` from now on (the reads still happen)."""
    walked: list[tuple[str, list[str]]] = []
    real = module.iter_tree

    def counted(repo: Any, snap: Any) -> Any:
        walked.append((snap.source, snap.tree))
        return real(repo, snap)

    monkeypatch.setattr(module, "iter_tree", counted)
    return walked
