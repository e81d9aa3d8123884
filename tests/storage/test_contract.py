"""The storage contract, run unchanged over every backend (local dir, S3 via moto over
HTTP, SFTP via a real sshd). See :class:`drkit.storage.base.Storage` for the promises."""

from __future__ import annotations

import os
import threading

import pytest

from drkit.errors import ObjectNotFound, UsageError
from drkit.storage.base import ObjectInfo, Storage
from tests.storage.conftest import Backend

MiB = 1024 * 1024


def listing(s: Storage, prefix: str) -> list[ObjectInfo]:
    return sorted(s.list(prefix), key=lambda i: i.name)


def test_put_get_round_trip(backend: Backend) -> None:
    s = backend.storage
    payload = os.urandom(100_000)
    s.put("data/ab/" + "a" * 64, payload)
    s.put("config", b"{}")
    s.put("locks/empty", b"")
    assert s.get("data/ab/" + "a" * 64) == payload
    assert s.get("config") == b"{}"
    assert s.get("locks/empty") == b""


def test_put_accepts_memoryview(backend: Backend) -> None:
    buf = bytearray(os.urandom(70_000))
    backend.storage.put("index/mv", memoryview(buf)[1000:])
    assert backend.storage.get("index/mv") == bytes(buf[1000:])


def test_overwrite_replaces_whole_object(backend: Backend) -> None:
    s = backend.storage
    s.put("locks/l1", b"x" * 50_000)
    s.put("locks/l1", b"short")
    assert s.get("locks/l1") == b"short"
    assert s.stat("locks/l1") == ObjectInfo("locks/l1", 5)
    assert backend.raw_names() == ["locks/l1"]  # no temporaries left behind


@pytest.mark.parametrize(
    "offset,length",
    [(0, 10), (5, 1), (1000, 4096), (99_990, 10), (99_990, 100), (0, None), (70_000, None), (100_000, None), (200_000, 5), (7, 0)],
)
def test_range_get(backend: Backend, offset: int, length: int | None) -> None:
    payload = os.urandom(100_000)
    backend.storage.put("data/00/range", payload)
    end = None if length is None else offset + length
    assert backend.storage.get("data/00/range", offset, length) == payload[offset:end]


def test_stat(backend: Backend) -> None:
    backend.storage.put("snapshots/s1", b"12345")
    assert backend.storage.stat("snapshots/s1") == ObjectInfo("snapshots/s1", 5)


def test_list_by_prefix_nested(backend: Backend) -> None:
    s = backend.storage
    names = ["data/00/p1", "data/00/p2", "data/ff/p3", "index/i1", "snapshots/s1", "config"]
    for i, n in enumerate(names):
        s.put(n, b"z" * (i + 1))
    assert listing(s, "data") == [ObjectInfo("data/00/p1", 1), ObjectInfo("data/00/p2", 2), ObjectInfo("data/ff/p3", 3)]
    assert listing(s, "data/") == listing(s, "data")
    assert listing(s, "index") == [ObjectInfo("index/i1", 4)]
    assert listing(s, "data/00") == [ObjectInfo("data/00/p1", 1), ObjectInfo("data/00/p2", 2)]
    assert listing(s, "keys") == []  # a prefix with nothing under it


def test_list_does_not_match_longer_prefixes(backend: Backend) -> None:
    backend.storage.put("data/x", b"1")
    backend.storage.put("database/y", b"2")
    assert [i.name for i in backend.storage.list("data")] == ["data/x"]


def test_delete_is_idempotent(backend: Backend) -> None:
    s = backend.storage
    s.put("locks/gone", b"bye")
    s.delete("locks/gone")
    s.delete("locks/gone")
    s.delete("locks/never-existed")
    with pytest.raises(ObjectNotFound):
        s.stat("locks/gone")
    assert list(s.list("locks")) == []


def test_missing_object_raises_object_not_found(backend: Backend) -> None:
    s = backend.storage
    with pytest.raises(ObjectNotFound) as exc:
        s.get("data/00/missing")
    assert exc.value.exit_code == 8 and "data/00/missing" in str(exc.value)
    with pytest.raises(ObjectNotFound):
        s.get("data/00/missing", 10, 5)
    with pytest.raises(ObjectNotFound):
        s.stat("config")


@pytest.mark.parametrize(
    "name", ["", "/etc/passwd", "../escape", "data/../../x", "data//x", "data/.hidden", "Data/x", "data/x/", "data/a b", "data/ä"]
)
def test_invalid_names_rejected(backend: Backend, name: str) -> None:
    s = backend.storage
    for call in (lambda: s.put(name, b"x"), lambda: s.get(name), lambda: s.stat(name), lambda: s.delete(name)):
        with pytest.raises(UsageError):
            call()
    assert backend.raw_names() == []


def test_readers_never_see_a_partial_object(backend: Backend) -> None:
    """While a large put replaces an object, readers see the old or the new bytes, whole."""
    s = backend.storage
    old, new = os.urandom(1 * MiB), os.urandom(12 * MiB)
    s.put("data/aa/swap", old)
    seen: list[int] = []
    bad: list[str] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            size = s.stat("data/aa/swap").size
            data = s.get("data/aa/swap")
            if size not in (len(old), len(new)) or data not in (old, new):
                bad.append(f"stat {size}, got {len(data)} bytes")
            seen.append(len(data))

    t = threading.Thread(target=reader)
    t.start()
    try:
        s.put("data/aa/swap", new)
    finally:
        done.set()
        t.join()
    assert not bad, bad[:3]
    assert seen, "the reader never ran"
    assert s.get("data/aa/swap") == new
    assert backend.raw_names() == ["data/aa/swap"]


def test_large_object_multipart(backend: Backend) -> None:
    payload = os.urandom(20 * MiB + 12345)
    backend.storage.put("data/7f/big", payload)
    assert backend.storage.stat("data/7f/big").size == len(payload)
    assert backend.storage.get("data/7f/big") == payload
    assert backend.storage.get("data/7f/big", 6 * MiB - 10, 2 * MiB) == payload[6 * MiB - 10 : 8 * MiB - 10]
    assert backend.raw_names() == ["data/7f/big"]


def test_concurrent_puts_and_gets(backend: Backend) -> None:
    s = backend.storage
    blobs = {f"data/{i:02x}/obj": os.urandom(300_000 + i) for i in range(12)}
    errors: list[BaseException] = []

    def work(name: str, data: bytes) -> None:
        try:
            s.put(name, data)
            assert s.get(name) == data
        except BaseException as exc:  # collected and re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=item) for item in blobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(i.name for i in s.list("data")) == sorted(blobs)


def test_url_carries_no_secret(backend: Backend) -> None:
    assert "testing-secret" not in backend.storage.url
    assert "testing-secret" not in repr(getattr(backend.storage, "options", ""))
