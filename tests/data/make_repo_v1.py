"""Record of how tests/data/repo-v1/ was written (ONCE, with drkit at format version 1).

Do not run this again to "refresh" the frozen repositories: the point of them is that
they were written by an older drkit and must stay readable by every later one. The
test (tests/repository/test_frozen_v1.py) only reads them; it never calls this.

What it wrote (through the real CLI, ``drkit init`` / ``drkit backup``):

* ``passphrase/``  a passphrase-mode repository (passphrase ``PASSPHRASE``), source
  ``data`` = ``SOURCE_ROOT``, two snapshots: the first with text, an empty file, a
  0600 file, a symlink, an empty directory and a 1.1 MB file of words cut into
  content-defined chunks; the second after changing a file, appending to the
  large one, adding a file and deleting one.
* ``recipient/``   a recipient-mode repository with one snapshot (the small files), and
  ``recipient-identity.json``, its identity file sealed with the same passphrase.

Usage (once): ``python tests/data/make_repo_v1.py tests/data/repo-v1``
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import yaml

PASSPHRASE = "frozen format v1 passphrase"
SOURCE_ROOT = "/tmp/drkit-frozen-v1/data"
MTIME = 1_700_000_000_123_456_789


def stream(seed: bytes, n: int) -> bytes:
    """n deterministic bytes: SHA-256 in counter mode."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:n])


WORDS = [w.encode() for w in "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()]


def words(seed: bytes, n: int) -> bytes:
    """n bytes of words drawn from 16 (about 0.7 bits/byte: compresses well, yet
    aperiodic, so the chunker finds content-defined cuts in it)."""
    out = bytearray()
    for b in stream(seed, n // 3):
        out += WORDS[b & 15] + b" "
        if len(out) >= n:
            break
    return bytes(out[:n])


def _drkit(config: Path, *args: str) -> None:
    from drkit.cli import cli
    from drkit.cli.app import run_cli

    code = run_cli(cli, ["-c", str(config), *args])
    if code != 0:
        raise SystemExit(f"drkit {' '.join(args)} exited {code}")


def _config(path: Path, repo: Path) -> Path:
    doc = {"repository": {"url": str(repo)}, "sources": [{"name": "data", "type": "files", "paths": [SOURCE_ROOT]}]}
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


def first_tree(root: Path, *, big: bool = True) -> None:
    (root / "docs").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "big").mkdir()
    (root / "docs/readme.txt").write_text("drkit frozen repository, version 1\n" * 40)
    (root / "docs/empty").write_bytes(b"")
    (root / "docs/secret").write_bytes(stream(b"secret", 300))
    os.chmod(root / "docs/secret", 0o600)
    (root / "docs/link").symlink_to("readme.txt")
    if big:
        (root / "big/genome.txt").write_bytes(words(b"genome", 1_100_000))
        os.utime(root / "big/genome.txt", ns=(MTIME, MTIME))
    for p in ("docs/readme.txt", "docs/empty", "docs/secret"):
        os.utime(root / p, ns=(MTIME, MTIME))


def second_tree(root: Path) -> None:
    (root / "docs/readme.txt").write_text("drkit frozen repository, version 1, changed\n" * 40)
    with open(root / "big/genome.txt", "ab") as f:
        f.write(words(b"genome-tail", 200_000))
    (root / "docs/added.bin").write_bytes(stream(b"added", 5000))
    (root / "docs/secret").unlink()
    for p in ("docs/readme.txt", "big/genome.txt", "docs/added.bin"):
        os.utime(root / p, ns=(MTIME + 86_400 * 10**9, MTIME + 86_400 * 10**9))


def main(out: Path) -> None:
    if out.exists():
        raise SystemExit(f"{out} exists: the frozen repositories are written once, never regenerated")
    src = Path(SOURCE_ROOT)
    shutil.rmtree(src.parent, ignore_errors=True)
    work = out.parent / (out.name + ".work")
    work.mkdir(parents=True)
    os.environ["DRKIT_PASSWORD"] = PASSPHRASE
    try:
        first_tree(src)
        cfg = _config(work / "passphrase.yaml", out / "passphrase")
        _drkit(cfg, "init")
        _drkit(cfg, "backup", "--host", "frozen-host", "--tag", "first")
        second_tree(src)
        _drkit(cfg, "backup", "--host", "frozen-host", "--tag", "second")

        shutil.rmtree(src.parent)
        first_tree(src, big=False)
        identity = out / "recipient-identity.json"
        os.environ["DRKIT_IDENTITY_PASSWORD"] = PASSPHRASE
        rcfg = _config(work / "recipient.yaml", out / "recipient")
        from drkit.repository.identity import generate_identity, write_identity

        ident = generate_identity()
        write_identity(identity, ident, PASSPHRASE)
        _drkit(rcfg, "init", "--recipient", ident.recipient)
        _drkit(rcfg, "backup", "--host", "frozen-host", "--tag", "recipient")
    finally:
        shutil.rmtree(src.parent, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
