"""Repository locks: shared for backup, restore, verify, drill and copy; exclusive for
forget, prune and index rebuilds (:data:`COMMAND_LOCKS` is the one table).

A lock is a plaintext JSON object at ``locks/<random id>``::

    {"host": ..., "host_id": ..., "pid": ..., "user": ..., "exclusive": bool,
     "time": iso, "refreshed": iso, "refresh_seconds": N, "stale_seconds": M, "command": ...}

Acquiring: look for conflicting locks (an exclusive lock conflicts with every other
lock), write ours, then look again; if a conflicting lock appeared meanwhile, remove
ours and back off (two racing processes both back off rather than both proceed). With
a retry duration (``--retry-lock``), conflicts are retried until it runs out.

A held lock is rewritten every ``refresh_seconds``. **If a refresh fails, the run
stops**: the next write it makes (an index file, a manifest, a pack, a deletion by
prune) raises :class:`~drkit.errors.LockLost` instead, because another host may
already have judged the lock stale and started a prune.

**Staleness is judged without trusting clocks** (issue #15, case 5). A lock is stale when

- its ``host_id`` is this machine's (a random id in the state directory, not the
  hostname: containers and clones share hostnames) and its pid is gone; or
- this host has watched it and it did not change for longer than its own
  ``stale_seconds`` (default six refresh intervals) plus :data:`STALE_MARGIN`, measured
  on this host's clock from when this host first saw that version of it (the
  observations are kept in the state directory, so runs add up).

Its ``refreshed`` time, written by another host's clock, is shown but never compared
with ours: a host whose clock is behind must not have its live lock called stale. Stale
locks are ignored and removed by ``drkit unlock``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from drkit.errors import DrkitError, LockLost, ObjectNotFound, RepositoryLocked
from drkit.repository import layout
from drkit.storage.base import Storage

log = logging.getLogger("drkit.locks")

REFRESH_INTERVAL = timedelta(minutes=5)
STALE_AFTER = timedelta(minutes=30)
"""Default ``stale_seconds``: unchanged for six refresh intervals."""
STALE_MARGIN = timedelta(minutes=5)
"""Added to a lock's own ``stale_seconds`` before this host calls it stale."""

SHARED, EXCLUSIVE = False, True
COMMAND_LOCKS: dict[str, bool] = {
    "backup": SHARED,
    "restore": SHARED,
    "verify": SHARED,
    "drill": SHARED,
    "copy": SHARED,
    "forget": EXCLUSIVE,
    "prune": EXCLUSIVE,
    "rebuild-index": EXCLUSIVE,
    "repair": EXCLUSIVE,
    "upgrade-format": EXCLUSIVE,
    "tag": EXCLUSIVE,  # rewrites manifests (new id, then the old one deleted)
    "ls": SHARED,  # ls, diff, find, dump, stats read trees and blobs
    "diff": SHARED,
    "find": SHARED,
    "dump": SHARED,
    "stats": SHARED,
}
"""Which lock each command takes (borg's ``with_repository(exclusive=...)``, as data):
readers and writers of new data share the repository; whatever deletes or rewrites
existing objects holds it alone."""

_process_host_id = secrets.token_hex(16)
_local_host_id: str | None = None
_observations_file: Path | None = None


def configure(host_id: str | None, state_dir: Path | None = None) -> None:
    """Set this machine's host id (and where lock observations are kept) for every lock
    this process takes; the CLI calls it once with the state directory's id. Without
    it, a per-process random id is used (so no other process is ever taken for this one)."""
    global _local_host_id, _observations_file
    _local_host_id = host_id
    _observations_file = state_dir / "lock-observations.json" if state_dir is not None else None


def local_host_id() -> str:
    return _local_host_id or _process_host_id


@dataclass(frozen=True)
class LockInfo:
    id: str
    host: str
    pid: int
    user: str
    exclusive: bool
    time: datetime
    refreshed: datetime
    command: str
    host_id: str = ""
    stale_seconds: float = STALE_AFTER.total_seconds()
    raw_refreshed: str = ""
    """The ``refreshed`` field as stored: a change means the holder is alive."""

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} ({self.command or 'drkit'}, since {self.time:%Y-%m-%d %H:%M:%S}Z)"

    def is_stale(self, now: datetime | None = None, observer: "LockObserver | None" = None) -> bool:
        """Stale by the rules of the module docstring. *now* is ignored (kept for callers
        of the old API): another host's timestamps are never compared with this clock."""
        if self.host_id and self.host_id == local_host_id():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        if observer is None:
            return False
        return observer.unchanged_for(self) > self.stale_seconds + STALE_MARGIN.total_seconds()


@dataclass
class LockObserver:
    """When this host first saw each version of each lock (by its own wall clock),
    kept in the state directory when there is one (best effort)."""

    path: Path | None = None
    clock: Callable[[], float] = field(default_factory=lambda: time.time)
    _seen: dict[str, tuple[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.path is not None:
            try:
                doc = json.loads(self.path.read_text())
                self._seen = {str(k): (str(v[0]), float(v[1])) for k, v in doc.items()}
            except (OSError, ValueError, TypeError, IndexError, AttributeError):
                self._seen = {}

    def unchanged_for(self, lock: LockInfo) -> float:
        """Seconds since this host first saw *lock* as it is now."""
        now = self.clock()
        version = lock.raw_refreshed or lock.refreshed.isoformat()
        seen = self._seen.get(lock.id)
        if seen is None or seen[0] != version:
            self._seen[lock.id] = (version, now)
            return 0.0
        return max(0.0, now - seen[1])

    def forget_except(self, lock_ids: set[str]) -> None:
        self._seen = {k: v for k, v in self._seen.items() if k in lock_ids}

    def save(self) -> None:
        if self.path is None:
            return
        from drkit.localstate import write_state_file

        try:
            write_state_file(self.path, json.dumps({k: list(v) for k, v in self._seen.items()}).encode())
        except OSError as exc:
            log.debug("could not keep lock observations in %s: %s", self.path, exc)


def default_observer() -> LockObserver:
    return LockObserver(_observations_file)


def _parse(lock_id: str, raw: bytes) -> LockInfo:
    doc = json.loads(raw)
    refreshed = str(doc.get("refreshed", doc["time"]))
    stale = doc.get("stale_seconds")
    return LockInfo(
        id=lock_id,
        host=str(doc["host"]),
        pid=int(doc["pid"]),
        user=str(doc.get("user", "")),
        exclusive=bool(doc["exclusive"]),
        time=datetime.fromisoformat(doc["time"]),
        refreshed=datetime.fromisoformat(refreshed),
        command=str(doc.get("command", "")),
        host_id=str(doc.get("host_id", "")),
        stale_seconds=min(max(float(stale), 60.0), 7 * 86400.0) if isinstance(stale, (int, float)) else STALE_AFTER.total_seconds(),
        raw_refreshed=refreshed,
    )


def list_locks(storage: Storage) -> list[LockInfo]:
    """All readable locks; unreadable lock objects are reported as locks that never change."""
    out = []
    for info in storage.list(layout.LOCKS):
        lock_id = layout.id_of(info.name)
        if lock_id is None:
            continue
        try:
            out.append(_parse(lock_id, storage.get(info.name)))
        except ObjectNotFound:
            continue
        except (ValueError, KeyError, TypeError):
            epoch = datetime.fromtimestamp(0, timezone.utc)
            out.append(LockInfo(lock_id, "?", 0, "", False, epoch, epoch, "unreadable lock"))
    return out


class Lock:
    """A held lock; release it with :meth:`release` or use it as a context manager."""

    def __init__(
        self,
        storage: Storage,
        exclusive: bool,
        command: str = "",
        *,
        refresh_interval: timedelta = REFRESH_INTERVAL,
        retry: timedelta = timedelta(0),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.storage = storage
        self.exclusive = exclusive
        self.id = secrets.token_hex(32)
        self.command = command
        self.started = datetime.now(timezone.utc)
        self.refresh_interval = refresh_interval
        self.retry = retry
        self._sleep = sleep
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None
        """Why the lock can no longer be trusted (a refresh failed), or None."""
        self.released = False

    def _doc(self) -> bytes:
        import getpass

        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.getuid())
        return json.dumps(
            {
                "host": socket.gethostname(),
                "host_id": local_host_id(),
                "pid": os.getpid(),
                "user": user,
                "exclusive": self.exclusive,
                "time": self.started.isoformat(),
                "refreshed": datetime.now(timezone.utc).isoformat(),
                "refresh_seconds": self.refresh_interval.total_seconds(),
                "stale_seconds": max(60.0, 6 * self.refresh_interval.total_seconds()),
                "command": self.command,
            }
        ).encode()

    def _conflicts(self, observer: LockObserver) -> list[LockInfo]:
        locks = list_locks(self.storage)
        out = [
            lk
            for lk in locks
            if lk.id != self.id and (self.exclusive or lk.exclusive) and not lk.is_stale(observer=observer)
        ]
        observer.forget_except({lk.id for lk in locks})
        return out

    def acquire(self) -> "Lock":
        """Take the lock, retrying conflicts for up to ``retry``; raises RepositoryLocked
        naming the holder when it cannot."""
        observer = default_observer()
        deadline = time.monotonic() + self.retry.total_seconds()
        delay = 1.0
        try:
            while True:
                conflict = self._try(observer)
                if conflict is None:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    waited = f" (retried for {_human(self.retry)})" if self.retry else ""
                    raise RepositoryLocked(how=_how(conflict), holder=conflict.describe() + waited)
                self._sleep(min(delay, left))
                delay = min(delay * 2, 30.0)
        finally:
            observer.save()
        self._thread = threading.Thread(target=self._refresh_loop, name="drkit-lock-refresh", daemon=True)
        self._thread.start()
        return self

    def _try(self, observer: LockObserver) -> LockInfo | None:
        conflicts = self._conflicts(observer)
        if conflicts:
            return conflicts[0]
        self.storage.put(layout.lock_name(self.id), self._doc())
        conflicts = self._conflicts(observer)
        if conflicts:
            self.storage.delete(layout.lock_name(self.id))
            return conflicts[0]
        return None

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_interval.total_seconds()):
            try:
                self.storage.put(layout.lock_name(self.id), self._doc())
            except Exception as exc:  # noqa: BLE001 - any failure means the lock can no longer be trusted
                self.lost = f"refreshing the lock failed: {exc}"
                log.error("lock %s: %s; this run stops at its next write", self.id[:8], self.lost)
                return

    def check(self) -> None:
        """Raise LockLost if a refresh failed (then nothing more may be written)."""
        if self.lost is not None:
            raise LockLost(detail=self.lost)

    def release(self) -> None:
        """Remove the lock (idempotent). If the storage refuses the delete (an account
        without delete rights), warn and leave it: it becomes stale once this process
        has ended (same host) or after its stale time, and the finished work stands."""
        self._stop.set()
        self.released = True
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        try:
            self.storage.delete(layout.lock_name(self.id))
        except DrkitError as exc:
            log.warning("could not remove lock %s (%s); it will be treated as stale once this run has ended", self.id[:8], exc)

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _how(lock: LockInfo) -> str:
    return "exclusively" if lock.exclusive else "(shared)"


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def remove_stale_locks(storage: Storage, *, remove_all: bool = False) -> list[LockInfo]:
    """Delete stale locks (or all with *remove_all*); return what was removed."""
    observer = default_observer()
    removed = []
    try:
        for lk in list_locks(storage):
            if remove_all or lk.is_stale(observer=observer):
                storage.delete(layout.lock_name(lk.id))
                removed.append(lk)
    finally:
        observer.save()
    return removed
