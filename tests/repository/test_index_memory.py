"""#18: the in-memory index costs a bounded number of bytes per blob (not a dict entry,
a bytes object and an int each), and loading it holds one index file's entries at a
time: memory for the index grows by ~60 bytes per blob, nothing else per file."""

from __future__ import annotations

import gc
import os
import tracemalloc
from pathlib import Path

import pytest

from drkit.repository.index import Index
from drkit.repository.indexrows import ROW_SIZE, SPILL_ROWS
from drkit.repository.pack import PackEntry
from drkit.repository.repo import INDEX_READS, Repository
from drkit.storage import LocalStorage


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    storage = LocalStorage(str(tmp_path / "repo"))
    Repository.init(storage, "pw", pack_size=1024 * 1024)
    return Repository.open(storage, "pw")


def _entries(pack_no: int, count: int) -> list[PackEntry]:
    """Fresh id objects (so an index that keeps them is charged for them)."""
    return [PackEntry(0, os.urandom(32), i * 100, 90, 120) for i in range(count)]


def _index_bytes_per_blob(blobs: int) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        index = Index()
        for p in range(blobs // 1000):
            index.add_pack(f"{p:064x}", 1 << 20, _entries(p, 1000))
        gc.collect()
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(index) == blobs
    return used / blobs


def test_the_index_costs_a_bounded_number_of_bytes_per_blob() -> None:
    """A dict of bytes ids to packed ints cost ~165 bytes per blob (60 MB at 400,000
    small files), rows in memory ~60 (100 in a backup's peak RSS: peak RSS grew 15%
    from 100,000 to 400,000 files); the index now holds its hash table and the newest
    few thousand rows: under 40 bytes per blob at 20,000 and at 80,000 blobs."""
    small, large = _index_bytes_per_blob(20_000), _index_bytes_per_blob(80_000)
    assert small < 40 and large < 40, (small, large)


def test_the_index_finds_what_it_holds_and_keeps_the_first_location() -> None:
    index = Index()
    first = _entries(0, 5000)
    index.add_pack("a" * 64, 10, first)
    index.add_pack("b" * 64, 20, [PackEntry(1, first[7].id, 1, 2, 3), PackEntry(1, b"\xff" * 32, 4, 5, 6)])
    assert len(index) == 5001
    for e in first:
        loc = index.get(e.id)
        assert loc is not None and (loc.pack, loc.blob_type, loc.offset, loc.length, loc.raw_length) == (
            "a" * 64, 0, e.offset, e.length, e.raw_length)
    assert b"\x00" * 32 not in index and b"short" not in index and index.get(b"\x00" * 32) is None
    assert [cid for cid, _ in index.items()] == [e.id for e in first] + [b"\xff" * 32]
    by_pack = index.entries_by_pack()
    assert by_pack["a" * 64] == first and by_pack["b" * 64] == [PackEntry(1, b"\xff" * 32, 4, 5, 6)]


def _load_overhead(repo: Repository, files: int, per_file: int) -> tuple[int, int]:
    """(peak - retained bytes while loading, blobs loaded) for *files* index files."""
    for f in range(files):
        repo.write_index([(f"{f:064x}", 1 << 20, _entries(f, per_file))])
    gc.collect()
    tracemalloc.start()
    try:
        repo.load_index()
        used, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - used, len(repo.index)


def test_loading_the_index_holds_one_file_at_a_time(tmp_path: Path) -> None:
    """Before, every index file's parsed entries were held until all were read (~150
    bytes per blob over the retained index): the overhead grew with the repository."""
    overheads = []
    for files in (8, 32):
        storage = LocalStorage(str(tmp_path / f"repo{files}"))
        Repository.init(storage, "pw")
        repo = Repository.open(storage, "pw")
        overhead, blobs = _load_overhead(repo, files, 1000)
        assert blobs == files * 1000
        overheads.append(overhead)
    stored = max(p.stat().st_size for p in (tmp_path / "repo32" / "index").iterdir())
    assert overheads[1] < 1.3 * overheads[0] + 256 * 1024, overheads
    # far less than the entries of all files, beside the stored bytes of the files read
    # ahead (INDEX_READS) and the one being decoded
    assert overheads[1] < 32 * 1000 * 40 + (INDEX_READS + 1) * stored, overheads


@pytest.mark.parametrize("order", [sorted, lambda names: sorted(names, reverse=True)])
def test_a_superseded_index_file_is_skipped_whichever_is_listed_first(repo: Repository, monkeypatch: pytest.MonkeyPatch,
                                                                       order) -> None:
    old = repo.write_index([("a" * 64, 10, _entries(0, 3))])
    kept = _entries(1, 2)
    new = repo.write_index([("b" * 64, 10, kept)], supersedes=[old])
    listing = repo.storage.list

    def listed(prefix: str):
        infos = list(listing(prefix))
        by_name = {i.name: i for i in infos}
        return [by_name[n] for n in order(by_name)]

    monkeypatch.setattr(repo.storage, "list", listed)
    repo.load_index()
    assert [cid for cid, _ in repo.index.items()] == [e.id for e in kept]
    assert repo.index.files == {new} and repo.superseded_index_files == {old}
    assert repo.index.packs() == ["b" * 64]


def test_the_index_holds_its_table_and_the_newest_rows_in_memory() -> None:
    """Rows in memory (a 32-byte id and 16 bytes of location) were 48 bytes per blob
    beside the table; now at most one batch of them is."""
    index = Index()
    for p in range(60):
        index.add_pack(f"{p:064x}", 1 << 20, _entries(p, 1000))
    rows, table = index.memory_sizes()
    assert rows < SPILL_ROWS * ROW_SIZE
    assert table <= 4 * 8 * 60_000  # at most half full, at least a quarter: u64 slots
    assert len(index) == 60_000 and sum(len(b) for b in index.row_batches()) == 60_000 * ROW_SIZE


def _dumped(packs: list[tuple[str, int, list[PackEntry]]], supersedes: list[str]) -> bytes:
    """What encode_index_file wrote before: json.dumps of the whole document."""
    import json

    doc = {"version": 1, "supersedes": sorted(supersedes), "packs": [
        {"id": p, "size": size, "blobs": [[e.blob_type, e.id.hex(), e.offset, e.length, e.raw_length] for e in entries]}
        for p, size, entries in packs]}
    return json.dumps(doc, separators=(",", ":")).encode()


@pytest.mark.parametrize("shape", [(0, 0), (1, 0), (1, 3), (3, 1000)])
def test_an_index_file_is_written_a_pack_at_a_time_byte_for_byte(shape: tuple[int, int]) -> None:
    import zstandard

    from drkit.repository.index import decode_index_file, encode_index_file

    packs = [(f"{p:064x}", 1000 + p, _entries(p, shape[1])) for p in range(shape[0])]
    supersedes = ["b" * 64, "a" * 64] if shape[0] == 3 else []
    data = encode_index_file(packs, supersedes)
    assert zstandard.ZstdDecompressor().decompress(data) == _dumped(packs, supersedes)
    assert decode_index_file(data) == (packs, sorted(supersedes))


def test_writing_an_index_file_holds_far_less_than_the_document() -> None:
    from drkit.repository.index import encode_index_file

    packs = [(f"{p:064x}", 1 << 24, _entries(p, 8000)) for p in range(2)]
    gc.collect()
    tracemalloc.start()
    try:
        encode_index_file(packs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    text = len(_dumped(packs, []))
    assert peak < 4 * text, (peak, text)  # the whole document as lists, its text and bytes: 6x


def test_loading_the_index_builds_no_entry_tuple_per_blob(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    """Index files are read into the index from their checked rows: a PackEntry per
    blob (built, then taken apart again) was a third of the load of 100k blobs."""
    import drkit.repository.index as index_module

    packs = [(f"{p:064x}", 1 << 20, _entries(p, 500)) for p in range(3)]
    repo.write_index(packs)
    built: list[object] = []

    class CountingEntry(PackEntry):
        def __new__(cls, *args: object) -> "CountingEntry":
            built.append(args)
            return super().__new__(cls, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(index_module, "PackEntry", CountingEntry)
    fresh = Repository.open(repo.storage, "pw")
    fresh.load_index()
    assert len(fresh.index) == 1500 and not built
    for pack_id, _, entries in packs:
        for e in entries:
            loc = fresh.index.get(e.id)
            assert loc is not None and (loc.pack, loc.blob_type, loc.offset, loc.length, loc.raw_length) == (
                pack_id, e.blob_type, e.offset, e.length, e.raw_length)
    assert fresh.read_index_file(next(iter(fresh.index.files)))[0] == packs  # callers that want entries still get them


def test_an_index_file_with_one_bad_row_adds_nothing(repo: Repository) -> None:
    """A bad row in a later pack of a file: the file is skipped whole (reported), its
    good packs too; the other files load."""
    good = (f"{1:064x}", 1 << 20, _entries(1, 10))
    bad = (f"{2:064x}", 1 << 20, [*_entries(2, 5), PackEntry(0, os.urandom(32), 2**40, 90, 120)])  # offset beyond u32
    other = (f"{3:064x}", 1 << 20, _entries(3, 7))
    repo.write_index([good, bad])
    repo.write_index([other])
    fresh = Repository.open(repo.storage, "pw")
    errors: list[tuple[str, str]] = []
    fresh.load_index(on_error=lambda name, detail: errors.append((name, detail)))
    assert len(errors) == 1 and "malformed index file" in errors[0][1]
    assert len(fresh.index) == 7 and fresh.index.packs() == [other[0]]
    assert all(e.id not in fresh.index for e in good[2])
