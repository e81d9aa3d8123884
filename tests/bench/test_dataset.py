"""The benchmark's data generator: reproducible, mixed, and repairable after mutation.
(No timing here; the benchmark itself is ``make bench``.)"""

from __future__ import annotations

import sys
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import dataset


def test_same_seed_same_bytes_and_mix(tmp_path: Path) -> None:
    size = 6 * 1024 * 1024
    a = dataset.generate(tmp_path / "a", 7, size, log=lambda _m: None)
    b = dataset.generate(tmp_path / "b", 7, size, log=lambda _m: None)
    assert dataset.tree_digest(tmp_path / "a") == dataset.tree_digest(tmp_path / "b") == a["sha256"]
    assert a["sha256"] == b["sha256"]
    assert abs(sum(f["size"] for f in a["files"]) - size) < 64 * 1024
    other = dataset.generate(tmp_path / "c", 8, size, log=lambda _m: None)
    assert other["sha256"] != a["sha256"]
    # text files compress, random files do not
    for f in a["files"]:
        if f["size"] < 64 * 1024:
            continue
        raw = (tmp_path / "a" / f["path"]).read_bytes()
        ratio = len(zstandard.ZstdCompressor(level=1).compress(raw)) / len(raw)
        assert (ratio < 0.5) if f["kind"] == "text" else (ratio > 0.99), (f["path"], ratio)


def test_smaller_set_is_a_prefix_of_a_larger_one() -> None:
    small = dataset.plan(1, 64 << 20)
    big = dataset.plan(1, 1 << 30)
    n = len(small) - 13  # the last data file is cut to fit, then 12 config files
    assert [(s.path, s.size, s.kind) for s in small[:n]] == [(s.path, s.size, s.kind) for s in big[:n]]
    share = sum(s.size for s in big if s.kind == "random") / sum(s.size for s in big)
    assert 0.55 < share < 0.65
    assert 200 < len(big) < 500


def test_mutate_then_restore_files(tmp_path: Path) -> None:
    root = tmp_path / "d"
    doc = dataset.generate(root, 3, 40 * 1024 * 1024, log=lambda _m: None)
    pristine = dataset.tree_digest(root)
    m = dataset.mutate(root, doc)
    changed = dataset.tree_digest(root)
    assert sorted(k for k in pristine if pristine[k] != changed[k]) == sorted(m["files"])
    assert 0.005 * doc["size"] < m["bytes"] <= 0.011 * doc["size"]
    # the mutation itself is reproducible (same bytes at the same places)
    dataset.restore_files(root, doc)
    assert dataset.tree_digest(root) == pristine
    dataset.mutate(root, doc)
    assert dataset.tree_digest(root) == changed
    # generate() repairs a mutated set instead of regenerating everything
    again = dataset.generate(root, 3, 40 * 1024 * 1024, log=lambda _m: None)
    assert again["mutated"] == [] and dataset.tree_digest(root) == pristine


def test_small_files_set_is_deterministic_a_prefix_and_mutates_within_the_second(tmp_path: Path) -> None:
    import os

    import smallfiles

    a = smallfiles.generate(tmp_path / "a", 3, 600, log=lambda _m: None)
    b = smallfiles.generate(tmp_path / "b", 3, 600, log=lambda _m: None)
    pristine = smallfiles.tree_digest(tmp_path / "a")
    assert pristine == smallfiles.tree_digest(tmp_path / "b") and len(pristine) == 600
    assert a["directories"] > 5 and all(200 <= (tmp_path / "a" / p).stat().st_size <= 8192 for p in pristine)
    assert smallfiles.layout(3, 200) == smallfiles.layout(3, 600)[:200]
    before = {p: (tmp_path / "a" / p).stat().st_mtime_ns for p in pristine}
    changed = smallfiles.mutate(tmp_path / "a", a)
    after = smallfiles.tree_digest(tmp_path / "a")
    moved = [p for p in pristine if after[p] != pristine[p]]
    assert changed["files"] == len(moved) == 6
    for p in moved:
        now = os.stat(tmp_path / "a" / p).st_mtime_ns
        assert now != before[p] and now // 10**9 == before[p] // 10**9  # same second, new nanoseconds
    smallfiles.restore_files(tmp_path / "a", a)
    assert smallfiles.tree_digest(tmp_path / "a") == pristine
    assert b["count"] == 600
