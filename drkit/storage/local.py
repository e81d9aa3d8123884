"""Local directory backend (an external disk, a NAS mount, a folder).

Writes go to a temporary name in the destination folder, are fsynced, renamed into
place, and the folder is fsynced: a crash leaves the old object or the new one.
Files are created 0600 and folders 0700.
"""

from __future__ import annotations

import errno
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from drkit.atomicio import write_atomic
from drkit.errors import ObjectNotFound, StorageError, StorageFull
from drkit.storage.base import ObjectInfo, validate_name

TEMP_PREFIX = ".tmp-"


def _os_error(exc: OSError, what: str) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"{what}: {exc.strerror}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(
            f"{what}: {exc.strerror}",
            hint="check that this user may write to the repository folder",
        )
    return StorageError(f"{what}: {exc.strerror or exc}")


class LocalStorage:
    """Objects as files under a root directory."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.url = str(self.root)
        self._fsync = fsync

    def _path(self, name: str) -> Path:
        return self.root / validate_name(name)

    def put(self, name: str, data: bytes | memoryview) -> None:
        path = self._path(name)
        try:
            self._makedirs(path.parent)
            write_atomic(path, data, fsync=self._fsync, tmp_prefix=TEMP_PREFIX, tmp_suffix="")
        except OSError as exc:
            raise _os_error(exc, f"writing {name}") from exc

    def _makedirs(self, folder: Path) -> None:
        """Create *folder* and missing parents, each 0700 (mkdir(parents=True) would
        give the parents the umask's mode)."""
        if folder.is_dir():
            return
        self._makedirs(folder.parent)
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(name)
        try:
            with open(path, "rb") as f:
                if offset:
                    f.seek(offset)
                return f.read() if length is None else f.read(length)
        except FileNotFoundError:
            raise ObjectNotFound(name=name) from None
        except OSError as exc:
            raise _os_error(exc, f"reading {name}") from exc

    def stat(self, name: str) -> ObjectInfo:
        try:
            return ObjectInfo(name, self._path(name).stat().st_size)
        except FileNotFoundError:
            raise ObjectNotFound(name=name) from None
        except OSError as exc:
            raise _os_error(exc, f"stat {name}") from exc

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.root / validate_name(prefix.rstrip("/"))
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = os.path.relpath(dirpath, self.root)
            for fn in filenames:
                if fn.startswith("."):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, fn))
                except FileNotFoundError:
                    continue
                mtime = datetime.fromtimestamp(st.st_mtime, timezone.utc)
                yield ObjectInfo(f"{rel}/{fn}".replace(os.sep, "/"), st.st_size, mtime)

    def delete(self, name: str) -> None:
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _os_error(exc, f"deleting {name}") from exc

    def remove_stale_temporaries(self) -> int:
        """Delete leftover temporary files of interrupted writes; return how many."""
        removed = 0
        for dirpath, _dirs, filenames in os.walk(self.root):
            for fn in filenames:
                if fn.startswith(TEMP_PREFIX):
                    try:
                        os.unlink(os.path.join(dirpath, fn))
                        removed += 1
                    except OSError:
                        pass
        return removed

    def close(self) -> None:
        return None
