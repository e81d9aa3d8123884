"""The benchmark data set: reproducible, mixed, fast to generate.

:func:`generate` writes a few hundred files under a directory, about ``size`` bytes in
all, from a seed alone (the same seed and size give the same bytes on any machine):

- about 60% of the bytes are incompressible: an AES-256-CTR keystream whose key is
  derived from the seed and the file number (fast: ~1 GB/s, and reproducible);
- about 40% are text-like: log/YAML-ish lines drawn by a seeded ``random.Random`` from
  a fixed pool of lines with varying fields, so they compress (zstd ~3-5x) but do not
  deduplicate at chunk level (the line order is random);
- file sizes are log-uniform between 4 KiB and 32 MiB (about 300 files per GiB), one
  seeded sequence cut at the requested total, so a smaller set has files of the same
  shape; a sub-directory per 32 files; a few empty and small config-like files.

:func:`mutate` overwrites about ``fraction`` of the data set's bytes, in place, in a few
files (both kinds), at seeded offsets, and :func:`restore_files` regenerates those files
so the next run starts from the pristine set. A ``MANIFEST.json`` in the directory records
seed, size, per-file SHA-256 and whether the set is mutated, so an existing set is reused
only when it matches.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MANIFEST = "MANIFEST.json"
VERSION = 3
_BLOCK = 4 * 1024 * 1024
_RANDOM_SHARE = 0.6


@dataclass
class FileSpec:
    path: str  # relative to the data directory
    size: int
    kind: str  # "random" | "text"
    no: int


def parse_size(text: str) -> int:
    """'1G', '256M', '512MiB', '1000000' -> bytes (binary units)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if t and t[-1] in mult:
        return int(float(t[:-1]) * mult[t[-1]])
    return int(t)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def plan(seed: int, size: int) -> list[FileSpec]:
    """The list of files for (seed, size); deterministic.

    File sizes come from one seeded sequence (log-uniform, 4 KiB to 32 MiB) cut off
    at *size*, so a smaller set is a prefix of a larger one with the same shape of
    files: what differs between two sizes is only the amount of data."""
    rng = random.Random(f"plan-{seed}")
    specs: list[FileSpec] = []
    total = 0
    random_bytes = 0
    i = 0
    while total < size:
        sz = min(int(math.exp(rng.uniform(math.log(4 << 10), math.log(32 << 20)))), size - total)
        # About 60% of the bytes incompressible: pick the kind that keeps the share on track.
        want_random = random_bytes + sz / 2 <= _RANDOM_SHARE * (total + sz)
        kind = "random" if want_random else "text"
        ext = ".bin" if kind == "random" else rng.choice([".log", ".yaml", ".json", ".txt"])
        specs.append(FileSpec(f"d{i // 32:02d}/f{i:04d}{ext}", sz, kind, i))
        total += sz
        random_bytes += sz if kind == "random" else 0
        i += 1
    # A few small, config-like files and empty files, as real trees have.
    for j in range(12):
        specs.append(FileSpec(f"etc/conf{j:02d}.yaml", rng.randint(0, 3) and rng.randint(200, 6000), "text", 100000 + j))
    return specs


def _keystream(seed: int, no: int, tag: str) -> object:
    key = hashlib.sha256(f"drkit-bench/{seed}/{no}/{tag}".encode()).digest()
    return Cipher(algorithms.AES(key), modes.CTR(b"\x00" * 16)).encryptor()


_WORDS = ["apiVersion", "kind", "metadata", "name", "namespace", "labels", "annotations", "spec", "status", "replicas", "selector", "template", "containers", "image", "ports", "volumeMounts", "resources", "limits", "requests", "cpu", "memory", "level=info", "level=warn", "level=error", "level=debug", "msg", "component", "controller", "reconcile", "volume", "snapshot", "backup", "restore", "engine", "replica", "node", "longhorn", "argocd", "traefik", "cert-manager", "sealed-secrets", "kube-system", "default", "prometheus", "grafana", "loki", "request", "duration", "status=200", "status=404", "status=500", "method=GET", "method=POST", "path=/api/v1/namespaces", "user-agent", "latency"]


def _line_pool(seed: int) -> list[bytes]:
    rng = random.Random(f"lines-{seed}")
    pool = []
    for _ in range(40000):
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14)))
        fields = f"id={rng.getrandbits(48):012x} n={rng.randint(0, 99999)}"
        ts = f"2026-11-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z"
        pool.append(f"{ts} {words} {fields}\n".encode())
    return pool


def _write_file(root: Path, spec: FileSpec, seed: int, pool: list[bytes]) -> str:
    path = root / spec.path
    path.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = spec.size
        if spec.kind == "random":
            enc = _keystream(seed, spec.no, "data")
            zero = bytes(_BLOCK)
            while left > 0:
                n = min(left, _BLOCK)
                block = enc.update(zero[:n] if n < _BLOCK else zero)
                f.write(block)
                h.update(block)
                left -= n
        else:
            rng = random.Random(f"text-{seed}-{spec.no}")
            while left > 0:
                block = b"".join(rng.choices(pool, k=20000))[: min(left, _BLOCK)]
                f.write(block)
                h.update(block)
                left -= len(block)
    return h.hexdigest()


def _read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _write_manifest(root: Path, doc: dict) -> None:
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, root / MANIFEST)


def generate(root: Path, seed: int, size: int, log=print) -> dict:
    """Make *root* hold the pristine data set for (seed, size); reuse what matches.

    Idempotent: an existing matching set is kept (a mutated one is repaired by
    regenerating only the mutated files). Returns the manifest."""
    doc = _read_manifest(root)
    specs = plan(seed, size)
    if doc and doc.get("version") == VERSION and doc.get("seed") == seed and doc.get("size") == size:
        if doc.get("mutated"):
            restore_files(root, doc)
        return doc
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    pool = _line_pool(seed)
    hashes = {}
    for spec in specs:
        hashes[spec.path] = _write_file(root, spec, seed, pool)
    doc = {
        "version": VERSION,
        "seed": seed,
        "size": size,
        "files": [asdict(s) for s in specs],
        "sha256": hashes,
        "random_bytes": sum(s.size for s in specs if s.kind == "random"),
        "text_bytes": sum(s.size for s in specs if s.kind == "text"),
        "mutated": [],
    }
    _write_manifest(root, doc)
    log(f"generated {len(specs)} files, {human(sum(s.size for s in specs))} under {root}")
    return doc


def mutate(root: Path, doc: dict, fraction: float = 0.01, files: int = 5) -> dict:
    """Overwrite about *fraction* of all bytes in a few of the larger files (seeded,
    in place, sizes unchanged, mtimes advanced). Returns {"files": [...], "bytes": N}."""
    rng = random.Random(f"mutate-{doc['seed']}")
    specs = [FileSpec(**s) for s in doc["files"]]
    budget = int(doc["size"] * fraction)
    per_file = max(1, budget // files)
    big = sorted((s for s in specs if s.size >= max(4 * per_file, 1 << 20)), key=lambda s: s.path)
    rand = [s for s in big if s.kind == "random"]
    text = [s for s in big if s.kind == "text"]
    chosen = rng.sample(rand, min(len(rand), files - files // 2)) + rng.sample(text, min(len(text), files // 2))
    written = 0
    for spec in chosen:
        n = min(per_file, spec.size // 4)
        # two regions per file: where edits land in real files (middle and end)
        regions = [(rng.randrange(0, spec.size - n // 2), n // 2), (spec.size - (n - n // 2), n - n // 2)]
        enc = _keystream(doc["seed"], spec.no, "mutate")
        with open(root / spec.path, "r+b") as f:
            for off, length in regions:
                f.seek(off)
                f.write(enc.update(bytes(length)))
                written += length
        st = os.stat(root / spec.path)
        os.utime(root / spec.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    doc["mutated"] = [s.path for s in chosen]
    _write_manifest(root, doc)
    return {"files": [s.path for s in chosen], "bytes": written}


def restore_files(root: Path, doc: dict) -> None:
    """Regenerate the mutated files so *root* is pristine again."""
    pool = _line_pool(doc["seed"])
    for spec in (FileSpec(**s) for s in doc["files"]):
        if spec.path in doc.get("mutated", []):
            digest = _write_file(root, spec, doc["seed"], pool)
            if digest != doc["sha256"][spec.path]:
                raise RuntimeError(f"regenerated {spec.path} does not match its recorded hash")
    doc["mutated"] = []
    _write_manifest(root, doc)


def tree_digest(root: Path, exclude: tuple[str, ...] = (MANIFEST,)) -> dict[str, str]:
    """SHA-256 of every regular file under *root*, by relative path."""
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if rel in exclude:
                continue
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while block := f.read(_BLOCK):
                    h.update(block)
            out[rel] = h.hexdigest()
    return out
