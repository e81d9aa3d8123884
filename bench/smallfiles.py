"""The many-small-files data set: about 200,000 text files of 200 B to 8 KiB.

Trees like this are common on a node: Git mirrors before packing, ``/etc``, manifests,
config-heavy volumes, home directories. Deterministic from (seed, count) alone:

- file sizes uniform from 200 B to 8 KiB (4.1 KiB mean: about 800 MiB of data, about
  1.1 GiB on disk in 4 KiB blocks, per 200,000 files);
- contents text-like (lines drawn from a seeded pool, as in :mod:`dataset`), so they
  compress but do not deduplicate;
- a realistic fan-out: top-level directories, each with sub-directories of varying
  width, 10 to 70 files per leaf directory (about 39 on average: 200,000 files in about
  5,100 directories), the shape of a source tree or an ``/etc``;
- a smaller count is a prefix of a larger one (same paths, same bytes), so memory can be
  compared across counts on the same shape.

:func:`mutate` rewrites 1% of the files in place (same size, new bytes) and leaves their
mtime in the same second as before, the case a files cache keyed on whole-second mtimes
gets wrong; ctime still moves, as it does on a real file system. :func:`restore_files`
regenerates them. A ``MANIFEST.json`` records seed, count and whether the set is mutated
(not every hash: a digest of all of them, recomputed by :func:`tree_digest` when checked).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

from dataset import tree_digest  # noqa: F401  (the digest the small suite checks restores with)

MANIFEST = "MANIFEST.json"
VERSION = 1
MIN_SIZE, MAX_SIZE = 200, 8192

_WORDS = [
    "apiVersion", "kind", "metadata", "name", "namespace", "labels", "spec", "status", "image",
    "replicas", "selector", "template", "containers", "ports", "volumeMounts", "resources",
    "level=info", "level=warn", "msg", "component", "controller", "reconcile", "volume",
    "snapshot", "backup", "restore", "node", "longhorn", "argocd", "traefik", "default",
]


def _pool(seed: int) -> list[bytes]:
    rng = random.Random(f"small-lines-{seed}")
    return [
        (" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 10))) + f" id={rng.getrandbits(40):010x}\n").encode()
        for _ in range(20000)
    ]


def layout(seed: int, count: int) -> list[tuple[str, int]]:
    """(relative path, size) of the first *count* files; a prefix of any larger count."""
    rng = random.Random(f"small-plan-{seed}")
    out: list[tuple[str, int]] = []
    top = 0
    while len(out) < count:
        subdirs = rng.randint(3, 40)
        for sub in range(subdirs):
            per_dir = rng.randint(10, 70)
            depth_name = f"t{top:03d}/s{sub:02d}" + ("/deep" if rng.random() < 0.2 else "")
            for i in range(per_dir):
                size = rng.randint(MIN_SIZE, MAX_SIZE)
                ext = rng.choice([".yaml", ".json", ".txt", ".conf", ".py", ".md"])
                out.append((f"{depth_name}/f{i:03d}{ext}", size))
                if len(out) == count:
                    return out
        top += 1
    return out


def _content(seed: int, no: int, size: int, pool: list[bytes], salt: str = "") -> bytes:
    rng = random.Random(f"small-text-{seed}-{no}{salt}")
    return b"".join(rng.choices(pool, k=size // 40 + 2))[:size]


def generate(root: Path, seed: int, count: int, log=print) -> dict:
    """Make *root* hold the pristine set for (seed, count); reuse it when it matches.
    Idempotent: a mutated set is repaired. Returns the manifest."""
    try:
        doc = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        doc = None
    if doc and doc.get("version") == VERSION and doc.get("seed") == seed and doc.get("count") == count:
        if doc.get("mutated"):
            restore_files(root, doc)
        return doc
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    pool = _pool(seed)
    total = 0
    made: set[str] = set()
    for no, (rel, size) in enumerate(layout(seed, count)):
        parent = rel.rsplit("/", 1)[0]
        if parent not in made:
            os.makedirs(root / parent, exist_ok=True)
            made.add(parent)
        (root / rel).write_bytes(_content(seed, no, size, pool))
        total += size
    doc = {"version": VERSION, "seed": seed, "count": count, "size": total, "directories": len(made), "mutated": []}
    _write_manifest(root, doc)
    log(f"generated {count} small files ({total / 2**20:.0f} MiB) in {len(made)} directories under {root}")
    return doc


def _write_manifest(root: Path, doc: dict) -> None:
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, root / MANIFEST)


def mutate(root: Path, doc: dict, fraction: float = 0.01) -> dict:
    """Rewrite *fraction* of the files in place: same size, new bytes, mtime kept within the
    same second (the nanoseconds move); returns {"files": N, "bytes": B}."""
    rng = random.Random(f"small-mutate-{doc['seed']}")
    files = layout(doc["seed"], doc["count"])
    chosen = sorted(rng.sample(range(len(files)), max(1, int(len(files) * fraction))))
    pool = _pool(doc["seed"])
    written = 0
    for no in chosen:
        rel, size = files[no]
        path = root / rel
        st = os.stat(path)
        with open(path, "r+b") as f:
            f.write(_content(doc["seed"], no, size, pool, salt="-mutated"))
        sec = st.st_mtime_ns // 1_000_000_000 * 1_000_000_000
        os.utime(path, ns=(st.st_atime_ns, sec + (st.st_mtime_ns - sec + 1) % 1_000_000_000))
        written += size
    doc["mutated"] = chosen
    _write_manifest(root, doc)
    return {"files": len(chosen), "bytes": written}


def restore_files(root: Path, doc: dict) -> None:
    """Regenerate the mutated files so *root* is pristine again."""
    files = layout(doc["seed"], doc["count"])
    pool = _pool(doc["seed"])
    for no in doc.get("mutated", []):
        rel, size = files[no]
        (root / rel).write_bytes(_content(doc["seed"], no, size, pool))
    doc["mutated"] = []
    _write_manifest(root, doc)
