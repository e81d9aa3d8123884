"""The local index cache (drkit/repository/indexcache.py): a load through it gives what
reading every index file gives, reads only the files stored since, and falls back to
reading everything whenever the cache cannot be trusted to."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from drkit.repository.index import Index
from drkit.repository.indexcache import IndexCache
from drkit.repository.pack import PackEntry
from drkit.repository.repo import Repository
from drkit.storage import LocalStorage


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    storage = LocalStorage(str(tmp_path / "repo"))
    Repository.init(storage, "pw")
    return storage


def _open(storage: LocalStorage) -> Repository:
    return Repository.open(storage, "pw")


def _entries(count: int) -> list[PackEntry]:
    return [PackEntry(i % 2, os.urandom(32), i * 100, 90, 120 + i) for i in range(count)]


def _write(repo: Repository, pack_no: int, count: int, supersedes: tuple[str, ...] = ()) -> str:
    return repo.write_index([(f"{pack_no:064x}", 1000 + pack_no, _entries(count))], supersedes=supersedes)


class Reads:
    """Counts the index files a repository reads (each is decoded once, when its turn comes)."""

    def __init__(self, repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: list[str] = []
        real = repo._decode_index_listing

        def counted(index_id: str, raw: bytes) -> Any:
            self.names.append(index_id)
            return real(index_id, raw)

        monkeypatch.setattr(repo, "_decode_index_listing", counted)


def _state(repo: Repository) -> tuple[Any, ...]:
    """What a load leaves: rows as a set (two copies of one blob may keep either
    location), packs and their sizes, index files in use, superseded and replaced."""
    return (set(repo.index.items()), sorted(repo.index.packs()), repo.index.pack_sizes, repo.index.files,
            repo.superseded_index_files, repo.replaced_index_files)


def _uncached(storage: LocalStorage) -> tuple[Any, ...]:
    repo = _open(storage)
    repo.load_index()
    return _state(repo)


def _cached_load(storage: LocalStorage, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Repository, list[str]]:
    repo = _open(storage)
    reads = Reads(repo, monkeypatch)
    cache = repo.index_cache(cache_dir)
    assert cache is not None
    repo.load_index(cache=cache)
    return repo, reads.names


def test_a_cached_load_reads_no_index_file_and_gives_the_same_index(storage: LocalStorage, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _open(storage)
    files = [_write(repo, n, 3000) for n in range(4)]  # 12,000 rows: several segments
    cold, read = _cached_load(storage, tmp_path / "cache", monkeypatch)
    assert sorted(read) == sorted(files)
    warm, read = _cached_load(storage, tmp_path / "cache", monkeypatch)
    assert read == []
    assert _state(warm) == _state(cold) == _uncached(storage)
    loc = warm.index.get(next(iter(warm.index.items()))[0])
    assert loc is not None and loc.pack in warm.index.packs()


def test_only_index_files_stored_since_are_read_and_the_cache_follows(storage: LocalStorage, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _open(storage)
    _write(repo, 0, 100)
    _cached_load(storage, tmp_path / "cache", monkeypatch)
    new = _write(repo, 1, 5000)
    warm, read = _cached_load(storage, tmp_path / "cache", monkeypatch)
    assert read == [new]
    assert _state(warm) == _uncached(storage)
    # The cache was brought up to date: the next load reads nothing.
    again, read = _cached_load(storage, tmp_path / "cache", monkeypatch)
    assert read == [] and _state(again) == _uncached(storage)
    # An index that came from the cache still takes new rows (its table grows).
    more = _entries(20_000)
    again.index.add_pack("f" * 64, 1, more)
    assert all(again.index.get(e.id) == ("f" * 64, e.blob_type, e.offset, e.length, e.raw_length) for e in more)


def test_a_new_file_that_supersedes_others_makes_the_load_read_everything(storage: LocalStorage, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _open(storage)
    old = _write(repo, 0, 100)
    kept = _write(repo, 1, 100)
    _cached_load(storage, tmp_path / "cache", monkeypatch)
    new = _write(repo, 2, 10, supersedes=(old,))  # as a prune that could not delete *old*
    warm, read = _cached_load(storage, tmp_path / "cache", monkeypatch)
    assert set(read) == {old, kept, new}  # not only *new*
    assert _state(warm) == _uncached(storage)
    assert warm.superseded_index_files == {old} and warm.index.files == {kept, new}
    assert "0" * 64 not in warm.index.packs()
    # Then *old* is deleted: the cache's superseded file is simply gone.
    storage.delete(f"index/{old}")
    warm, read = _cached_load(storage, tmp_path / "cache", monkeypatch)
    assert read == [] and warm.superseded_index_files == set()
    assert _state(warm) == _uncached(storage)


def test_an_index_file_gone_from_storage_makes_the_load_read_everything(storage: LocalStorage, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _open(storage)
    gone = _write(repo, 0, 100)
    stays = _write(repo, 1, 100)
    _cached_load(storage, tmp_path / "cache", monkeypatch)
    storage.delete(f"index/{gone}")
    warm, read = _cached_load(storage, tmp_path / "cache", monkeypatch)
    assert read == [stays]
    assert warm.index.files == {stays} and "0" * 64 not in warm.index.packs()
    assert _state(warm) == _uncached(storage)


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "other-repository"])
def test_a_cache_that_cannot_be_trusted_is_ignored_and_replaced(storage: LocalStorage, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch, damage: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    repo = _open(storage)
    files = [_write(repo, n, 200) for n in range(3)]
    cold, _ = _cached_load(storage, tmp_path / "cache", monkeypatch)
    cache = cold.index_cache(tmp_path / "cache")
    assert cache is not None
    data = cache.path.read_bytes()
    if damage == "flip":  # one bit of a row: only the MAC can tell
        at = len(data) - 100
        data = data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = b""
    else:  # a cache made for another repository (another key), under this one's name
        other = LocalStorage(str(tmp_path / "other"))
        Repository.init(other, "pw")
        other_repo = _open(other)
        _write(other_repo, 9, 50)
        other_cache = other_repo.index_cache(tmp_path / "other-cache")
        assert other_cache is not None
        other_repo.load_index(cache=other_cache)
        data = other_cache.path.read_bytes()
    cache.path.write_bytes(data)
    with caplog.at_level(logging.DEBUG, logger="drkit.cache"):
        warm, read = _cached_load(storage, tmp_path / "cache", monkeypatch)
    assert sorted(read) == sorted(files)
    assert _state(warm) == _uncached(storage)
    if damage != "empty":
        assert "index cache" in caplog.text and "ignored" in caplog.text
    _, read = _cached_load(storage, tmp_path / "cache", monkeypatch)
    assert read == []  # replaced by a good one


def test_a_check_with_an_error_handler_never_uses_the_cache(storage: LocalStorage, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _open(storage)
    files = [_write(repo, n, 10) for n in range(2)]
    _cached_load(storage, tmp_path / "cache", monkeypatch)
    repo = _open(storage)
    reads = Reads(repo, monkeypatch)
    repo.load_index(on_error=lambda name, detail: None, cache=repo.index_cache(tmp_path / "cache"))
    assert sorted(reads.names) == sorted(files)


def test_an_unwritable_cache_directory_is_warned_about_and_the_load_still_works(
        storage: LocalStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    repo = _open(storage)
    _write(repo, 0, 10)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory would be")
    with caplog.at_level(logging.WARNING, logger="drkit.cache"):
        warm, _ = _cached_load(storage, blocker, monkeypatch)
    assert _state(warm) == _uncached(storage)
    assert "cannot write the index cache" in caplog.text


def test_a_repository_id_that_cannot_name_a_file_gets_no_cache(storage: LocalStorage, tmp_path: Path) -> None:
    repo = _open(storage)
    repo.config = {**repo.config, "id": "../../etc/passwd"}
    assert repo.index_cache(tmp_path) is None
    with pytest.raises(ValueError):
        IndexCache(tmp_path, "../x", b"k" * 32)


def test_rows_naming_a_pack_not_listed_are_refused() -> None:
    index = Index()
    index.add_pack("a" * 64, 10, _entries(3))
    rows = b"".join(index.row_batches())
    assert list(Index.from_rows(["a" * 64], {"a" * 64: 10}, [rows]).items()) == list(index.items())
    with pytest.raises(ValueError, match="not listed"):
        Index.from_rows([], {}, [rows])
    with pytest.raises(ValueError, match="whole row"):
        Index.from_rows(["a" * 64], {"a" * 64: 10}, [rows[:-1]])


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_cache_file_that_is_not_a_regular_file_is_neither_followed_nor_waited_on(
        storage: LocalStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    repo = _open(storage)
    files = [_write(repo, 0, 10)]
    cache = repo.index_cache(tmp_path / "cache")
    assert cache is not None
    cache.path.parent.mkdir(parents=True)
    if kind == "symlink":
        real = tmp_path / "elsewhere"
        _cached_load(storage, tmp_path / "warm", monkeypatch)
        warm = repo.index_cache(tmp_path / "warm")
        assert warm is not None
        real.write_bytes(warm.path.read_bytes())  # a valid cache, but reached through a link
        cache.path.symlink_to(real)
    else:
        os.mkfifo(cache.path)
    assert cache.load() is None
    _, read = _cached_load(storage, tmp_path / "cache", monkeypatch)
    assert read == files


def test_a_cache_of_the_first_layout_is_ignored_and_replaced(storage: LocalStorage, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Version 1 held the rows a column at a time; a file that says so (with a valid MAC)
    is not read as rows of the new layout, and the load that ignored it writes a new one."""
    import hashlib
    import hmac
    import json
    import struct

    from drkit.repository import indexcache

    repo = _open(storage)
    files = [_write(repo, 0, 5000)]
    _cached_load(storage, tmp_path / "cache", monkeypatch)
    cache = repo.index_cache(tmp_path / "cache")
    assert cache is not None
    data = cache.path.read_bytes()
    at = len(indexcache.MAGIC)
    (size,) = struct.unpack_from("<I", data, at)
    header = json.loads(data[at + 4 : at + 4 + size])
    old = json.dumps({**header, "version": 1}, separators=(",", ":")).encode()
    body = indexcache.MAGIC + struct.pack("<I", len(old)) + old + data[at + 4 + size : -32]
    cache.path.write_bytes(body + hmac.new(cache._key, body, hashlib.sha256).digest())
    assert cache.load() is None
    cold, read = _cached_load(storage, tmp_path / "cache", monkeypatch)
    assert read == files and _state(cold) == _uncached(storage)
    warm, read = _cached_load(storage, tmp_path / "cache", monkeypatch)
    assert read == [] and _state(warm) == _uncached(storage)
