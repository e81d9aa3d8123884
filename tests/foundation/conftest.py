"""Fixtures for the foundation tests: a workspace with data, a config and a repository,
and a way to run the real CLI in-process (exit code, stdout, stderr)."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli import CliResult, invoke

Result = CliResult
"""The name tests in this folder import for what :meth:`Workspace.run` returns."""


@dataclass
class Workspace:
    root: Path
    data: Path
    repo: Path
    config: Path

    def run(self, *args: str) -> CliResult:
        return invoke("-c", self.config, *args)

    def ok(self, *args: str) -> CliResult:
        r = self.run(*args)
        assert r.code == 0, f"drkit {' '.join(args)} exited {r.code}: {r.err}"
        return r

    def write_config(self, **repo_extra: Any) -> None:
        doc = {
            "repository": {"url": str(self.repo), **repo_extra},
            "sources": [{"name": "data", "type": "files", "paths": [str(self.data)], "exclude": ["*.tmp"]}],
        }
        self.config.write_text(yaml.safe_dump(doc))


def make_tree(root: Path, seed: int = 1) -> None:
    """A small tree with text, random data, duplicates, a symlink, odd modes and mtimes."""
    rng = random.Random(seed)
    (root / "a/b").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "a/text.txt").write_text("hello world\n" * 5000)
    (root / "a/b/random.bin").write_bytes(rng.randbytes(3 * 1024 * 1024 + 17))
    (root / "a/b/copy.bin").write_bytes((root / "a/b/random.bin").read_bytes())
    (root / "a/empty").write_bytes(b"")
    (root / "a/secret").write_text("s3cr3t\n")
    os.chmod(root / "a/secret", 0o600)
    os.chmod(root / "a/b", 0o750)
    (root / "a/link").symlink_to("text.txt")
    (root / "a/dangling").symlink_to("/nonexistent/target")
    (root / "skip.tmp").write_text("excluded")
    os.utime(root / "a/text.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    monkeypatch.setenv("DRKIT_PASSWORD", "correct horse battery staple")
    w = Workspace(tmp_path, tmp_path / "data", tmp_path / "repo", tmp_path / "drkit.yaml")
    w.data.mkdir()
    make_tree(w.data)
    w.write_config()
    return w


def tree_state(root: Path) -> dict[str, tuple]:
    """Everything restore promises to bring back, per relative path."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", oct(st.st_mode & 0o7777), st.st_mtime_ns)
            else:
                out[rel] = ("file", p.read_bytes(), oct(st.st_mode & 0o7777), st.st_mtime_ns, st.st_uid, st.st_gid)
    return out


@pytest.fixture
def index_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The index files every repository in this process reads (from storage, not from
    the index cache), in order."""
    from drkit.repository.repo import Repository

    names: list[str] = []
    real = Repository._decode_index_listing

    def counted(self: Repository, index_id: str, raw: bytes) -> Any:
        names.append(index_id)
        return real(self, index_id, raw)

    monkeypatch.setattr(Repository, "_decode_index_listing", counted)
    return names


def index_files(ws: Workspace) -> set[str]:
    """The names of the index files stored in *ws*'s repository."""
    return {p.name for p in (ws.repo / "index").iterdir()}
