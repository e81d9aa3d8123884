"""Retry transient storage failures with capped exponential backoff and full jitter.

Backends raise :class:`~drkit.errors.TransientStorageError` for failures that may go away
(a dropped SSH connection, S3 503 SlowDown, a reset TCP connection, a checksum mismatch in
transit) and plain :class:`~drkit.errors.StorageError` for those that will not (missing
object, permission denied, full disk, rejected credentials, unknown host key). Only the
former are retried, so a wrong password never hammers a server.

Retrying is safe because every backend's ``put`` is atomic (a failed attempt leaves no
object) and ``get``/``stat``/``delete`` are idempotent. ``list`` is materialised per
attempt, so a listing that fails half-way is restarted, never yielded twice.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from drkit.errors import StorageError, TransientStorageError
from drkit.storage.base import ObjectInfo, Storage
from drkit.storage.wrapper import StorageWrapper

log = logging.getLogger("drkit.storage.retry")

T = TypeVar("T")

_stopped = threading.Event()
"""Set once the command is interrupted (Ctrl-C, SIGTERM): a retry waiting in any thread
gives up at once. The main thread's sleep is cut short by the signal itself; reads in
background threads (manifests, index files, a tree read ahead) would otherwise keep the
process alive for up to ``max_elapsed`` before it could exit."""


def stop_retrying() -> None:
    """Make every retry, waiting or to come, give up (the command is interrupted)."""
    _stopped.set()


def allow_retrying() -> None:
    """Retry again (a new command starts in this process: a scheduler, a test)."""
    _stopped.clear()


def retrying_stopped() -> bool:
    return _stopped.is_set()


def _sleep(seconds: float) -> None:
    """Wait *seconds*, or less once :func:`stop_retrying` is called."""
    _stopped.wait(seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry.

    ``attempts`` bounds the number of tries (the first one included); ``max_elapsed``
    bounds the total time spent (no new attempt starts after it); the n-th delay is
    uniform in ``[0, min(max_delay, base_delay * 2**n)]`` ("full jitter").
    """

    attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 20.0
    max_elapsed: float = 300.0

    def delay(self, retry_no: int, rng: random.Random) -> float:
        cap = min(self.max_delay, self.base_delay * (2**retry_no))
        return rng.uniform(0, cap)


@dataclass
class RetryingStorage(StorageWrapper):
    """A :class:`Storage` that retries transient failures of the one it wraps.

    Raises the last :class:`TransientStorageError` (as a :class:`StorageError` whose
    message says how many attempts were made) when attempts or time run out; permanent
    errors pass through at once.
    """

    inner: Storage
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    sleep: Callable[[float], None] = _sleep
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        start = self.clock()
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except TransientStorageError as exc:
                elapsed = self.clock() - start
                delay = self.policy.delay(attempt - 1, self.rng)
                if _stopped.is_set():
                    raise self._given_up(exc, what, attempt, elapsed, "interrupted, ") from exc
                if attempt >= self.policy.attempts or elapsed + delay > self.policy.max_elapsed:
                    raise self._given_up(exc, what, attempt, elapsed) from exc
                log.warning(
                    "%s failed (%s); retry %d/%d in %.1fs",
                    what,
                    exc.message,
                    attempt,
                    self.policy.attempts - 1,
                    delay,
                    extra={"op": what, "attempt": attempt},
                )
                self.sleep(delay)
                if _stopped.is_set():
                    raise self._given_up(exc, what, attempt, self.clock() - start, "interrupted, ") from exc

    @staticmethod
    def _given_up(exc: TransientStorageError, what: str, attempt: int, elapsed: float, why: str = "") -> StorageError:
        return StorageError(f"{exc.message.removeprefix('storage error: ')} "
                            f"({why}gave up on {what} after {attempt} attempt(s) in {elapsed:.1f}s)", hint=exc.hint)

    def put(self, name: str, data: bytes | memoryview) -> None:
        self._call(f"put {name}", lambda: self.inner.put(name, data))

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._call(f"get {name}", lambda: self.inner.get(name, offset, length))

    def stat(self, name: str) -> ObjectInfo:
        return self._call(f"stat {name}", lambda: self.inner.stat(name))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return iter(self._call(f"list {prefix}", lambda: list(self.inner.list(prefix))))

    def delete(self, name: str) -> None:
        self._call(f"delete {name}", lambda: self.inner.delete(name))

    def _around(self, op: str, name: str, fn: Callable[[], T]) -> T:
        return self._call(f"extend retention of {name}" if op == "extend-retention" else f"{op} {name}", fn)
