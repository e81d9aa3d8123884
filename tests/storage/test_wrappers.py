"""RetryingStorage, ObservedStorage and wrap_storage, over a real LocalStorage with a
fault layer in between; and the local backend's full-disk mapping (fault layer + tmpfs)."""

from __future__ import annotations

import errno
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drkit.errors import (
    ObjectNotFound,
    StorageError,
    StorageFull,
    TransientStorageError,
)
from drkit.storage import open_storage
from drkit.storage.base import ObjectInfo
from drkit.storage.local import LocalStorage
from drkit.storage.observe import ObservedStorage, wrap_storage
from drkit.storage.retry import RetryingStorage, RetryPolicy


class Flaky:
    """A fault layer: the next ``fail[op]`` calls of *op* raise *error*, then pass through."""

    def __init__(self, inner: LocalStorage) -> None:
        self.inner = inner
        self.url = inner.url
        self.fail: dict[str, int] = {}
        self.error: Exception = TransientStorageError("connection reset by peer")
        self.calls: dict[str, int] = {}

    def _maybe_fail(self, op: str) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1
        if self.fail.get(op, 0) > 0:
            self.fail[op] -= 1
            raise self.error

    def put(self, name: str, data: Any) -> None:
        self._maybe_fail("put")
        self.inner.put(name, data)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self._maybe_fail("get")
        return self.inner.get(name, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        self._maybe_fail("stat")
        return self.inner.stat(name)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        self.calls["list"] = self.calls.get("list", 0) + 1
        for i, info in enumerate(self.inner.list(prefix)):
            if i == 1 and self.fail.get("list", 0) > 0:  # fail half-way through a listing
                self.fail["list"] -= 1
                raise self.error
            yield info

    def delete(self, name: str) -> None:
        self._maybe_fail("delete")
        self.inner.delete(name)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def flaky(tmp_path: Path) -> Flaky:
    return Flaky(LocalStorage(tmp_path / "repo"))


def retrying(inner: Any, **policy: Any) -> tuple[RetryingStorage, list[float]]:
    sleeps: list[float] = []
    args = dict(attempts=4, base_delay=1.0, max_delay=4.0, max_elapsed=100.0)
    args.update(policy)
    return RetryingStorage(inner, RetryPolicy(**args), sleep=sleeps.append, rng=random.Random(7)), sleeps


def test_transient_errors_are_retried_with_bounded_jittered_backoff(flaky: Flaky) -> None:
    r, sleeps = retrying(flaky)
    flaky.fail["put"] = 3
    r.put("data/x", b"payload")
    assert flaky.calls["put"] == 4
    assert r.get("data/x") == b"payload"
    assert len(sleeps) == 3
    for n, delay in enumerate(sleeps):
        assert 0 <= delay <= min(4.0, 1.0 * 2**n)
    assert len(set(sleeps)) == 3  # jittered, not a fixed schedule


def test_gives_up_after_attempts_with_clear_error(flaky: Flaky) -> None:
    r, sleeps = retrying(flaky)
    flaky.fail["get"] = 100
    flaky.inner.put("data/x", b"1")
    with pytest.raises(StorageError) as exc:
        r.get("data/x")
    assert not isinstance(exc.value, TransientStorageError)  # outer layers must not retry again
    assert exc.value.exit_code == 8
    assert "connection reset by peer" in str(exc.value)
    assert "gave up on get data/x after 4 attempt(s)" in str(exc.value)
    assert flaky.calls["get"] == 4 and len(sleeps) == 3


def test_gives_up_when_time_budget_is_spent(flaky: Flaky) -> None:
    now = [0.0]
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        now[0] += s + 10  # each attempt takes ~10 s

    r = RetryingStorage(flaky, RetryPolicy(attempts=100, base_delay=1, max_delay=2, max_elapsed=35), sleep=sleep, clock=lambda: now[0])
    flaky.fail["stat"] = 1000
    with pytest.raises(StorageError, match="gave up on stat"):
        r.stat("config")
    assert 2 <= flaky.calls["stat"] <= 5
    assert now[0] <= 35 + 2 + 10


@pytest.mark.parametrize(
    "error",
    [ObjectNotFound(name="data/x"), StorageError("credentials rejected"), StorageFull("no space"), StorageError("permission denied")],
)
def test_permanent_errors_are_not_retried(flaky: Flaky, error: Exception) -> None:
    r, sleeps = retrying(flaky)
    flaky.error = error
    flaky.fail["get"] = 5
    with pytest.raises(type(error)) as exc:
        r.get("data/x")
    assert exc.value is error
    assert flaky.calls["get"] == 1 and sleeps == []


def test_real_missing_object_is_not_retried(flaky: Flaky) -> None:
    r, sleeps = retrying(flaky)
    with pytest.raises(ObjectNotFound):
        r.get("data/none")
    assert sleeps == []


def test_list_failing_half_way_is_restarted_not_duplicated(flaky: Flaky) -> None:
    for i in range(5):
        flaky.inner.put(f"data/{i}", b"x")
    r, _ = retrying(flaky)
    flaky.fail["list"] = 2
    names = [i.name for i in r.list("data")]
    assert sorted(names) == [f"data/{i}" for i in range(5)]
    assert flaky.calls["list"] == 3


def test_retried_put_is_still_atomic(flaky: Flaky) -> None:
    r, _ = retrying(flaky)
    flaky.inner.put("index/i", b"old")
    flaky.fail["put"] = 100
    with pytest.raises(StorageError):
        r.put("index/i", b"new")
    assert flaky.inner.get("index/i") == b"old"
    assert sorted(p.name for p in (Path(flaky.url) / "index").iterdir()) == ["i"]


def test_observed_storage_counts_and_logs_without_contents(flaky: Flaky, caplog: pytest.LogCaptureFixture) -> None:
    obs = wrap_storage(flaky, RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.001))
    assert isinstance(obs, ObservedStorage) and isinstance(obs.inner, RetryingStorage)
    assert obs.url == flaky.url
    # The CLI (run by other tests) stops 'drkit' from propagating: listen on it directly.
    drkit_log = logging.getLogger("drkit")
    drkit_log.addHandler(caplog.handler)
    old_level = drkit_log.level
    drkit_log.setLevel(logging.DEBUG)
    try:
        _exercise(flaky, obs, caplog)
    finally:
        drkit_log.removeHandler(caplog.handler)
        drkit_log.setLevel(old_level)


def _exercise(flaky: Flaky, obs: ObservedStorage, caplog: pytest.LogCaptureFixture) -> None:
    secret = b"TOPSECRETCONTENT" * 10
    obs.put("data/s", secret)
    assert obs.get("data/s") == secret
    assert obs.get("data/s", 0, 4) == b"TOPS"
    assert [i.name for i in obs.list("data")] == ["data/s"]
    obs.delete("data/s")
    with pytest.raises(ObjectNotFound):
        obs.stat("data/s")
    flaky.fail["put"] = 1
    obs.put("data/t", b"12")  # one transient failure, retried: logged as a warning
    stats = obs.stats.as_dict()
    assert stats["puts"] == 2 and stats["gets"] == 2 and stats["deletes"] == 1 and stats["lists"] == 1
    assert stats["bytes_up"] == len(secret) + 2 and stats["bytes_down"] == len(secret) + 4
    assert stats["errors"] == 1  # the stat of a deleted object
    assert "TOPSECRET" not in caplog.text
    assert any("retry 1/2" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_local_enospc_is_storage_full_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault layer on os.write: the second write of a put hits ENOSPC."""
    storage = LocalStorage(tmp_path / "repo", fsync=False)
    storage.put("data/p", b"old")
    real_write = os.write
    calls = [0]

    def failing_write(fd: int, data: Any) -> int:
        calls[0] += 1
        if calls[0] >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, bytes(memoryview(data)[:1000]))

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(StorageFull) as exc:
        storage.put("data/p", b"n" * 5000)
    monkeypatch.undo()
    assert exc.value.exit_code == 8 and "No space left" in str(exc.value)
    assert storage.get("data/p") == b"old"
    assert sorted(p.name for p in (tmp_path / "repo" / "data").iterdir()) == ["p"]


def test_local_full_disk_on_real_tmpfs(tiny_fs: Path) -> None:
    storage = wrap_storage(open_storage(str(tiny_fs / "repo")), RetryPolicy(attempts=2, base_delay=0.001))
    storage.put("config", b"small")
    with pytest.raises(StorageFull) as exc:
        storage.put("data/big", os.urandom(2 * 1024 * 1024))
    assert exc.value.exit_code == 8 and exc.value.hint
    assert [i.name for i in storage.list("data")] == []
    assert not [p for p in (tiny_fs / "repo").rglob(".tmp-*")]
    storage.put("index/after", b"still works")
    assert storage.get("config") == b"small"
