"""The frozen format: repositories written once by drkit at format version 1, and
chunk-boundary vectors, must stay readable and identical for every later drkit.

``tests/data/repo-v1/`` was written once by ``tests/data/make_repo_v1.py`` and is
never regenerated: if a test here fails, the change under test broke the on-disk
format (or the chunker's boundaries, which would silently end deduplication against
every existing repository). Fix the change, or bump the format version and keep a
reader for version 1; never re-record the expectations below.

Expected content is recorded here (SHA-256 of each file), not recomputed from the
generator.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
from pathlib import Path

import pyfastcdc
import pytest
import yaml

from drkit.cli import cli
from drkit.cli.app import run_cli
from drkit.errors import EXIT_WRONG_KEY
from drkit.repository.chunker import cut_blocks, make_chunker
from drkit.repository.crypto import ChunkHasher
from drkit.repository.repo import DEFAULT_CHUNKER, Repository
from drkit.repository.tree import FILE, iter_tree
from drkit.storage import LocalStorage

FROZEN = Path(__file__).resolve().parent.parent / "data" / "repo-v1"
PASSPHRASE = "frozen format v1 passphrase"
SOURCE_ROOT = "/tmp/drkit-frozen-v1/data"
MTIME = 1_700_000_000_123_456_789
MTIME2 = MTIME + 86_400 * 10**9

README1 = "3f2dbd70386508c5e692515d9a5936a89c591d6c86d15b6d2bd5472a7331ab69"
README2 = "873cd6cb07e7e00faa05c1715552829f3a97b62d3f9804cc2a884222d7e0d992"
SECRET = "f2d6e39e8d363e07e5acfc63f2145dcd3612abbdd6941728ee51e412df218c23"
EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
GENOME1 = "9649b65be6eed280442566da0b74502f8d7055e9ddb95fe66ee150acea0c95a9"
GENOME2 = "1c3a12583de58f9908d618d4839502ebe9ac6b3c3b4e91b1c796592472533434"
ADDED = "3fc13c73216de3117ad90fcdfa395fae88260ab089d1c07c0180d52aa872291f"

SNAP1 = "8b2f7c46ca4604c2f31c69294fff239693319bb1556b5e18b8762805c4ac4308"
SNAP2 = "8e2aba776ebb94a41127359e14b494083d4ec5a0266fe35fb7e223cef2aa8ba2"
RSNAP = "ad49a77a"

# path under SOURCE_ROOT -> ("file", sha256, mode, mtime_ns, size) | ("link", target) | ("dir", mode)
FIRST = {
    "big": ("dir", 0o755),
    "big/genome.txt": ("file", GENOME1, 0o644, MTIME, 1_100_000),
    "docs": ("dir", 0o755),
    "docs/empty": ("file", EMPTY, 0o644, MTIME, 0),
    "docs/link": ("link", "readme.txt"),
    "docs/readme.txt": ("file", README1, 0o644, MTIME, 1400),
    "docs/secret": ("file", SECRET, 0o600, MTIME, 300),
    "empty-dir": ("dir", 0o755),
}
SECOND = {
    "big": ("dir", 0o755),
    "big/genome.txt": ("file", GENOME2, 0o644, MTIME2, 1_300_000),
    "docs": ("dir", 0o755),
    "docs/added.bin": ("file", ADDED, 0o644, MTIME2, 5000),
    "docs/empty": ("file", EMPTY, 0o644, MTIME, 0),
    "docs/link": ("link", "readme.txt"),
    "docs/readme.txt": ("file", README2, 0o644, MTIME2, 1760),
    "empty-dir": ("dir", 0o755),
}
RECIPIENT = {k: v for k, v in FIRST.items() if not k.startswith("big/")}


def _state(root: Path) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
                out[rel] = ("file", digest, stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_size)
    return out


class Cli:
    def __init__(self, tmp_path: Path, repo: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.repo = tmp_path / repo
        shutil.copytree(FROZEN / repo, self.repo)  # the committed copy stays untouched (locks)
        self.config = tmp_path / f"{repo}.yaml"
        doc = {"repository": {"url": str(self.repo)}, "sources": [{"name": "data", "type": "files", "paths": [SOURCE_ROOT]}]}
        self.config.write_text(yaml.safe_dump(doc))
        self.config.chmod(0o600)
        self.capsys = capsys

    def run(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = run_cli(cli, ["-c", str(self.config), *args])
        out, err = self.capsys.readouterr()
        return code, out, err

    def ok(self, *args: str) -> str:
        code, out, err = self.run(*args)
        assert code == 0, f"drkit {' '.join(args)} exited {code}: {err}"
        return out


def test_frozen_passphrase_repository_lists_verifies_and_restores(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("DRKIT_PASSWORD", PASSPHRASE)
    c = Cli(tmp_path, "passphrase", capsys)
    config = json.loads((c.repo / "config").read_text())
    assert (config["version"], config["key_mode"], config["chunker"]) == (1, "passphrase", DEFAULT_CHUNKER)

    listed = json.loads(c.ok("snapshots", "--json"))
    assert [(s["id"], s["tags"], s["host"], s["source"], s["paths"]) for s in listed] == [
        (SNAP1, ["first"], "frozen-host", "data", [SOURCE_ROOT]),
        (SNAP2, ["second"], "frozen-host", "data", [SOURCE_ROOT]),
    ]
    assert (listed[1]["stats"]["files_unmodified"], listed[1]["stats"]["files_changed"]) == (1, 2)

    report = json.loads(c.ok("verify", "--read-data", "--json"))
    assert (report["ok"], report["snapshots"], report["packs"], report["blobs"], report["problems"]) == (True, 2, 2, 9, [])

    for snap, want in ((SNAP1, FIRST), (SNAP2, SECOND)):
        target = tmp_path / f"restore-{snap[:8]}"
        c.ok("restore", snap[:8], "-s", "data", "--target", str(target))
        assert _state(target / SOURCE_ROOT.lstrip("/")) == want


def test_frozen_repository_refuses_a_wrong_passphrase(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("DRKIT_PASSWORD", "not the frozen passphrase")
    code, _out, err = Cli(tmp_path, "passphrase", capsys).run("snapshots")
    assert code == EXIT_WRONG_KEY and "passphrase" in err.lower()


def test_frozen_repository_chunks_exactly_as_it_was_written(tmp_path) -> None:
    """Re-chunking the restored large file with the repository's own chunker (its
    stored seed) gives the chunk ids its tree recorded: new backups still
    deduplicate against the old data."""
    repo = Repository.open(LocalStorage(FROZEN / "passphrase"), PASSPHRASE)
    repo.load_index()
    files = {e.path: e for e in iter_tree(repo, repo.find_snapshot(SNAP2)) if e.type == FILE}
    genome = files[f"{SOURCE_ROOT}/big/genome.txt"]
    data = b"".join(repo.read_blob(bytes.fromhex(c)) for c in genome.chunks)
    assert hashlib.sha256(data).hexdigest() == GENOME2
    assert len(genome.chunks) == 2
    assert [repo.hasher(bytes(c.data)).hex() for c in repo.chunker().cut_buf(data)] == genome.chunks
    first = {e.path: e for e in iter_tree(repo, repo.find_snapshot(SNAP1)) if e.type == FILE}
    assert first[f"{SOURCE_ROOT}/big/genome.txt"].chunks[0] == genome.chunks[0]  # the unchanged head deduplicated


def test_frozen_recipient_repository_restores_with_its_identity(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("DRKIT_PASSWORD", PASSPHRASE)
    c = Cli(tmp_path, "recipient", capsys)
    code, _out, err = c.run("snapshots")
    assert code == EXIT_WRONG_KEY and "identity" in err  # the backup host's passphrase reads no manifest
    identity = tmp_path / "identity.json"
    shutil.copy(FROZEN / "recipient-identity.json", identity)
    monkeypatch.delenv("DRKIT_PASSWORD")
    monkeypatch.setenv("DRKIT_IDENTITY_PASSWORD", PASSPHRASE)
    listed = json.loads(c.ok("snapshots", "--json", "--identity", str(identity)))
    assert [(s["short_id"], s["tags"]) for s in listed] == [(RSNAP, ["recipient"])]
    target = tmp_path / "restore"
    c.ok("restore", "latest", "-s", "data", "--target", str(target), "--identity", str(identity))
    assert _state(target / SOURCE_ROOT.lstrip("/")) == RECIPIENT


# -- chunk-boundary vectors ------------------------------------------------------------
#
# Input: SHAKE-256 of a label, as many bytes as needed. Chunk ids: keyed BLAKE3 under
# sha256(b"drkit chunk vectors id key"), first 16 hex digits. Recorded with pyfastcdc
# 0.3.1, and identical with 0.2.0, 0.2.1 and 0.3.0.

_ID_KEY = hashlib.sha256(b"drkit chunk vectors id key").digest()
_SMALL = {"min_size": 2048, "avg_size": 8192, "max_size": 65536}

VECTORS = [
    (
        DEFAULT_CHUNKER, 0, b"drkit vectors random", 6 * 1024 * 1024,
        [988546, 776541, 547205, 665283, 634445, 905919, 695027, 686202, 392288],
        ["d62c0fa5e2dd6b16", "a7202f157cf11098", "c6112a866a8a7905", "8e23ffc166dece15", "05f8f89a00c134af",
         "df480743e0a95de5", "c18260c17ded5790", "abb3331c102767e0", "dfd3fca77c952b14"],
    ),
    (
        DEFAULT_CHUNKER, 2**62 + 12345, b"drkit vectors random", 6 * 1024 * 1024,
        [829769, 831512, 552195, 548072, 650874, 602911, 714514, 569672, 991937],
        ["00638df0a765d231", "a1ee6c1703e6d22d", "4afd39067c9880e8", "0c2198d2b1725906", "416bf20437c58513",
         "eb9c4418ace733b6", "b574845950739783", "8c204a175a878462", "eb8efaca40d89b7d"],
    ),
    (
        _SMALL, 7, b"drkit vectors small", 200_000,
        [5914, 20186, 8623, 8519, 9627, 2374, 14727, 3141, 6013, 15644, 14036, 7490, 13108, 6622, 10680, 22032,
         12984, 9291, 8989],
        ["f27caabf20e4fed1", "800c51928be5239c", "839c33046a87b006", "b709da7ff500dfc3", "1d5e85db27790054",
         "a91adece14ee9337", "758b67f6e90a83f7", "d8bfd55dec0eb043", "f2ce0c5a7ea01778", "7fbae9fcb5d605d0",
         "1917200d49695c5d", "f093a636fe4c4484", "ad309adf73e9839f", "362cdbd6617823c5", "0cf1853163a08ee9",
         "d9d499a42e9a5433", "89707a09659448e5", "0cd7074dd8c763e9", "f352c188d65fe055"],
    ),
]


@pytest.mark.parametrize("params,seed,label,size,lengths,ids", VECTORS, ids=["default-seed0", "default-seed-large", "small-seed7"])
def test_chunk_boundary_vectors(params, seed, label, size, lengths, ids) -> None:
    data = hashlib.shake_256(label).digest(size)
    chunker = make_chunker(params, seed)
    hasher = ChunkHasher(_ID_KEY)
    # drkit's buffered cutter (what backup uses) and the library's own cut agree.
    chunks = [bytes(c) for c in cut_blocks(chunker, io.BytesIO(data))]
    assert [len(c) for c in chunks] == lengths
    assert [hasher(c).hex()[:16] for c in chunks] == ids
    assert [c.length for c in chunker.cut_buf(data)] == lengths
    plain = pyfastcdc.FastCDC(avg_size=params["avg_size"], min_size=params["min_size"], max_size=params["max_size"], seed=seed)
    assert [c.length for c in plain.cut_stream(io.BytesIO(data))] == lengths
