"""The shared-blob measurement of ``bench/small_blob_groups.py`` gives every file back,
through both layouts, and catches a file that does not match its id. (No timing here.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import small_blob_groups as groups
import smallfiles

from drkit.repository.blob import BlobError


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("small") / "set"
    smallfiles.generate(root, 1, 300, log=lambda _m: None)
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and p.name != smallfiles.MANIFEST)


def test_both_layouts_give_every_file_back(paths: list[str]) -> None:
    results = groups.measure(paths, group=16, rounds=1)  # raises if a file differs
    single, grouped = results["one blob per file"], results["groups of 16"]
    assert 0 < grouped["stored"] < single["stored"] < 1  # text compresses better in groups
    assert all(r["backup_us"] > 0 and r["restore_us"] > 0 for r in results.values())


def test_groups_hold_at_most_g_files_and_64_kib(paths: list[str]) -> None:
    sizes = [Path(p).stat().st_size for p in paths]
    stored = groups.seal(paths, sizes, groups.codec(), 16)
    assert sum(len(s.files) for s in stored) == len(paths)
    assert all(len(s.files) <= 16 for s in stored)
    assert all(sum(n for _, n in s.files) - s.files[-1][1] < groups.GROUP_BYTES for s in stored)
    with pytest.raises(BlobError):  # sealed under other keys
        groups.open_all(stored, groups.codec())


def test_a_file_that_does_not_match_its_id_is_caught(paths: list[str]) -> None:
    sizes = [Path(p).stat().st_size for p in paths]
    blobs = groups.codec()
    stored = groups.seal(paths, sizes, blobs, 16)
    first = stored[0]
    file_id, length = first.files[1]
    first.files[1] = (bytes(32), length)  # the second file of the first group: a wrong id
    with pytest.raises(ValueError, match="does not match its id"):
        groups.open_all(stored, blobs)
