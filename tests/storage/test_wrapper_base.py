"""StorageWrapper: every wrapper is the inner storage until it overrides something, and
retention (RetentionAware) passes through any stack of wrappers, written once."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from drkit.errors import Refused, TransientStorageError
from drkit.storage.appendonly import AppendOnlyStorage
from drkit.storage.base import Retention, Storage, retention_of
from drkit.storage.local import LocalStorage
from drkit.storage.observe import ObservedStorage, unwrap
from drkit.storage.retry import RetryingStorage, RetryPolicy
from drkit.storage.wrapper import StorageWrapper

T0 = datetime(2026, 12, 6, tzinfo=timezone.utc)


class LockedLocal(LocalStorage):
    """A local directory that pretends to hold Object Lock retention (dates in memory);
    the first head of each name fails once, transiently."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, fsync=False)
        self.until: dict[str, datetime] = {}
        self.flaked: set[str] = set()

    @property
    def retention(self) -> Retention | None:
        return Retention("GOVERNANCE", 2)

    def retained_until(self, name: str) -> datetime | None:
        if name not in self.flaked:
            self.flaked.add(name)
            raise TransientStorageError(f"head {name}: connection reset")
        return self.until.get(name)

    def extend_retention(self, name: str, until: datetime) -> None:
        self.until[name] = until


@dataclass
class Passthrough(StorageWrapper):
    inner: Storage


def test_a_wrapper_that_overrides_nothing_is_its_inner_storage(tmp_path: Path) -> None:
    inner = LocalStorage(tmp_path / "repo", fsync=False)
    w = Passthrough(inner)
    w.put("data/a", b"bytes")
    assert w.url == inner.url
    assert w.get("data/a", 1, 3) == b"yte"
    assert w.stat("data/a").size == 5 and [o.name for o in w.list("data")] == ["data/a"]
    w.delete("data/a")
    assert list(inner.list("data")) == []
    assert w.retention is None and retention_of(w) is None  # off when the backend has none


def test_retention_passes_through_every_wrapper_with_each_ones_behaviour(tmp_path: Path) -> None:
    backend = LockedLocal(tmp_path / "repo")
    retry = RetryingStorage(backend, RetryPolicy(attempts=3, base_delay=0.0), sleep=lambda s: None)
    observed = ObservedStorage(retry)
    stack = AppendOnlyStorage(observed)
    assert retention_of(stack) is stack and stack.retention == Retention("GOVERNANCE", 2)
    stack.extend_retention("data/p", T0 + timedelta(days=2))  # allowed on an append-only host
    assert stack.retained_until("data/p") == T0 + timedelta(days=2)  # the transient failure was retried
    assert observed.stats.stats == 1 and observed.stats.errors == 0
    with pytest.raises(Refused):
        stack.delete("data/p")
    assert unwrap(stack) is backend
