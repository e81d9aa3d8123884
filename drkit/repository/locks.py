"""Repository locks: shared for backup, exclusive for prune and index rebuilds.

A lock is a plaintext JSON object at ``locks/<random id>``::

    {"host": ..., "pid": ..., "user": ..., "exclusive": bool, "time": iso, "refreshed": iso, "command": ...}

Acquiring: look for conflicting locks (an exclusive lock conflicts with every other
lock), write ours, then look again; if a conflicting lock appeared meanwhile, remove
ours and fail (two racing processes both back off rather than both proceed).
A held lock is refreshed every :data:`REFRESH_INTERVAL`. A lock is stale when it was
not refreshed for :data:`STALE_AFTER`, or when it belongs to this host and its pid is
gone. Stale locks are ignored and removed by ``drkit unlock``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from drkit.errors import DrkitError, ObjectNotFound, RepositoryLocked
from drkit.repository import layout
from drkit.storage.base import Storage

log = logging.getLogger("drkit.locks")

REFRESH_INTERVAL = timedelta(minutes=5)
STALE_AFTER = timedelta(minutes=30)


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

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} ({self.command or 'drkit'}, since {self.time:%Y-%m-%d %H:%M:%S}Z)"

    def is_stale(self, now: datetime | None = None) -> bool:
        now = now or datetime.now(timezone.utc)
        if now - self.refreshed > STALE_AFTER:
            return True
        if self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False


def _parse(lock_id: str, raw: bytes) -> LockInfo:
    doc = json.loads(raw)
    return LockInfo(
        id=lock_id,
        host=str(doc["host"]),
        pid=int(doc["pid"]),
        user=str(doc.get("user", "")),
        exclusive=bool(doc["exclusive"]),
        time=datetime.fromisoformat(doc["time"]),
        refreshed=datetime.fromisoformat(doc.get("refreshed", doc["time"])),
        command=str(doc.get("command", "")),
    )


def list_locks(storage: Storage) -> list[LockInfo]:
    """All readable locks; unreadable lock objects are reported as stale ones."""
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

    def __init__(self, storage: Storage, exclusive: bool, command: str = "") -> None:
        self.storage = storage
        self.exclusive = exclusive
        self.id = secrets.token_hex(32)
        self.command = command
        self.started = datetime.now(timezone.utc)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _doc(self) -> bytes:
        import getpass

        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.getuid())
        return json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "user": user,
                "exclusive": self.exclusive,
                "time": self.started.isoformat(),
                "refreshed": datetime.now(timezone.utc).isoformat(),
                "command": self.command,
            }
        ).encode()

    def _conflicts(self) -> list[LockInfo]:
        return [
            lk
            for lk in list_locks(self.storage)
            if lk.id != self.id and (self.exclusive or lk.exclusive) and not lk.is_stale()
        ]

    def acquire(self) -> "Lock":
        """Take the lock; raises RepositoryLocked naming the holder on conflict."""
        how = "exclusively" if self.exclusive else ""
        conflicts = self._conflicts()
        if conflicts:
            raise RepositoryLocked(how=_how(conflicts[0]), holder=conflicts[0].describe())
        self.storage.put(layout.lock_name(self.id), self._doc())
        conflicts = self._conflicts()
        if conflicts:
            self.storage.delete(layout.lock_name(self.id))
            raise RepositoryLocked(how=_how(conflicts[0]) or how, holder=conflicts[0].describe())
        self._thread = threading.Thread(target=self._refresh_loop, name="drkit-lock-refresh", daemon=True)
        self._thread.start()
        return self

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_INTERVAL.total_seconds()):
            try:
                self.storage.put(layout.lock_name(self.id), self._doc())
            except Exception:  # noqa: BLE001 - refresh is best effort; staleness is judged by others
                pass

    def release(self) -> None:
        """Remove the lock (idempotent). If the storage refuses the delete (an account
        without delete rights), warn and leave it: it becomes stale once this process
        has ended (same host) or after STALE_AFTER, and the finished work stands."""
        self._stop.set()
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


def remove_stale_locks(storage: Storage, *, remove_all: bool = False) -> list[LockInfo]:
    """Delete stale locks (or all with *remove_all*); return what was removed."""
    removed = []
    for lk in list_locks(storage):
        if remove_all or lk.is_stale():
            storage.delete(layout.lock_name(lk.id))
            removed.append(lk)
    return removed
