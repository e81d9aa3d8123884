"""``drkit diff`` reads the two trees side by side in walk order, one entry of each at a
time: it gives exactly what comparing maps of every entry gives (the earlier way, still
used for a tree out of walk order), and its memory grows with the changes, not with
the snapshots."""

from __future__ import annotations

import random
import tracemalloc
from pathlib import Path

import pytest

from drkit.repository.repo import Repository
from drkit.repository.tree import DIR, FILE, SYMLINK, Entry, walk_order_key
from drkit.services.browse import diff_entries, diff_snapshots
from drkit.storage import LocalStorage
from tests.hostile.snapshots import write_snapshot


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    storage = LocalStorage(str(tmp_path / "repo"))
    Repository.init(storage, "pw")
    return Repository.open(storage, "pw")


def _tree(rng: random.Random, names: list[str]) -> list[Entry]:
    """Entries for a random subset of *names*, in walk order, with random types,
    contents and metadata drawn from few values (so that many compare equal)."""
    out = []
    for path in sorted({p for p in names if rng.random() < 0.8}, key=walk_order_key):
        kind = rng.choice([FILE, FILE, FILE, DIR, SYMLINK])
        out.append(Entry(path, kind, mode=rng.choice([0o644, 0o600]), mtime_ns=rng.choice([1, 2]),
                         size=rng.choice([0, 10]) if kind == FILE else 0,
                         chunks=[rng.choice(["aa" * 32, "bb" * 32])] if kind == FILE else [],
                         target=rng.choice(["x", "y"]) if kind == SYMLINK else ""))
    return out


def _names(rng: random.Random, count: int) -> list[str]:
    parts = ["a", "b", "a.b", "a-b", "ab", "b c", "é"]
    return ["/" + "/".join(rng.choice(parts) for _ in range(rng.randint(1, 4))) for _ in range(count)]


@pytest.mark.parametrize("seed", range(8))
def test_the_streamed_diff_is_the_diff_of_every_entry(repo: Repository, seed: int) -> None:
    rng = random.Random(seed)
    names = _names(rng, 200)
    before, after = _tree(rng, names), _tree(rng, names)
    a, b = write_snapshot(repo, before), write_snapshot(repo, after)
    assert diff_snapshots(repo, a, b) == diff_entries(before, after)
    changes, st = diff_snapshots(repo, a, b)
    assert changes and st.added and st.removed  # the random trees differ in every way


def test_a_tree_out_of_walk_order_is_compared_whole(repo: Repository) -> None:
    before = [Entry("/b", FILE, size=1, chunks=["aa" * 32]), Entry("/a", FILE, size=1, chunks=["aa" * 32])]
    after = [Entry("/a", FILE, size=1, chunks=["bb" * 32]), Entry("/b", FILE, size=1, chunks=["aa" * 32])]
    changes, st = diff_snapshots(repo, write_snapshot(repo, before), write_snapshot(repo, after))
    assert [(c.path, c.modifier) for c in changes] == [("/a", "M")]
    assert (st.modified, st.added, st.removed) == (1, 0, 0)


def test_its_memory_grows_with_the_changes_not_the_snapshots(repo: Repository) -> None:
    peaks = []
    for files in (5_000, 20_000):
        entries = [Entry(f"/srv/d{i // 100:04d}/f{i:06d}", FILE, size=10, chunks=[f"{i:064x}"]) for i in range(files)]
        a = write_snapshot(repo, entries, tree_piece=64 * 1024)
        entries[7].chunks = ["ff" * 32]
        b = write_snapshot(repo, sorted(entries, key=lambda e: walk_order_key(e.path)), tree_piece=64 * 1024)
        tracemalloc.start()
        changes, _ = diff_snapshots(repo, a, b)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert [c.path for c in changes] == [entries[7].path]
    # Maps of every entry (the earlier way) took about 10 MiB more at 20,000 files.
    assert peaks[1] < peaks[0] + 1024 * 1024, peaks
