"""Reading a small file whole, in one ``read``: what a backup does for each file that
``lstat`` said is at most one chunk long (in the main process, in a thread or in a
worker process: :mod:`drkit.repository.sealprocs`)."""

from __future__ import annotations

import os

OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
"""Never follows a symlink that replaced the file since the walk (ELOOP)."""
EMPTY = "empty"
"""Why a file read for a backup gives no blob: it was empty when read ..."""
GROWN = "grown"
"""... or it had grown past one chunk (the caller then streams it)."""


def read_whole(path: str | bytes | os.PathLike[str], expected: int, limit: int) -> bytes | None:
    """The whole content of the file at *path*, which ``lstat`` said is *expected* bytes
    long, when it is at most *limit* bytes; None when it has grown past *limit* since
    (the caller streams it). Raises OSError (gone, unreadable, a symlink now)."""
    fd = os.open(path, OPEN_FLAGS)
    try:
        data = os.read(fd, expected + 1)
        if len(data) <= expected:
            return data
        parts = [data]
        total = len(data)
        while total <= limit:
            more = os.read(fd, limit + 1 - total)
            if not more:
                break
            parts.append(more)
            total += len(more)
        return b"".join(parts) if total <= limit else None
    finally:
        os.close(fd)
