"""``bench/metadata_reads.py`` reads the same snapshots and index both ways, and says so
when they differ. (No timing here: it runs without a delay.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import metadata_reads

from drkit.repository.repo import Repository


def test_both_ways_read_every_manifest_and_index_file(tmp_path: Path) -> None:
    storage = metadata_reads.build(tmp_path / "work", snapshots=12, index_files=6)
    result = metadata_reads.measure(storage, latency=0)
    assert (result["snapshots"], result["index_files"]) == (12, 6)
    manifests = sorted(o.name for o in storage.list("snapshots"))
    again = metadata_reads.build(tmp_path / "work", snapshots=12, index_files=6)
    assert sorted(o.name for o in again.list("snapshots")) == manifests  # reused: a new build has new ids
    other = metadata_reads.build(tmp_path / "work", snapshots=3, index_files=1)
    assert len(list(other.list("snapshots"))) == 3  # other counts: built anew


def test_a_listing_that_loses_a_snapshot_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = metadata_reads.build(tmp_path / "work", snapshots=5, index_files=2)
    real = Repository.list_snapshots
    monkeypatch.setattr(Repository, "list_snapshots", lambda self, on_error=None: real(self, on_error)[1:])
    with pytest.raises(ValueError, match="different"):
        metadata_reads.measure(storage, latency=0)
