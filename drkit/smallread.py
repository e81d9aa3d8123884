"""Opening the files a backup reads, and reading a small one whole.

:func:`open_regular` opens every file the walk found regular without following a
symlink or waiting on a FIFO put in its place since; :func:`read_whole` reads a file
that ``lstat`` said is at most one chunk long in one ``read`` (in the main process, in a
thread or in a worker process: :mod:`drkit.repository.sealprocs`)."""

from __future__ import annotations

import errno
import os
import stat

OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
"""Never follows a symlink that replaced the file since the walk (ELOOP), never waits
for a writer on a FIFO that did."""
EMPTY = "empty"
"""Why a file read for a backup gives no blob: it was empty when read ..."""
GROWN = "grown"
"""... or it had grown past one chunk (the caller then streams it)."""


def open_regular(path: str | bytes | os.PathLike[str]) -> int:
    """A blocking file descriptor of the regular file at *path*, for a backup to read:
    a symlink, FIFO, device or directory put in its place since the walk's ``lstat``
    is neither followed nor waited on (OSError: ELOOP, or EINVAL "not a regular file
    any more"). ``O_NONBLOCK`` is cleared once the file is known to be regular: Linux
    ignores it for regular files, but a FUSE file system may not. Raises OSError as
    ``open`` does."""
    fd = os.open(path, OPEN_FLAGS)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file any more (replaced since the walk)")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_whole(path: str | bytes | os.PathLike[str], expected: int, limit: int) -> bytes | None:
    """The whole content of the file at *path*, which ``lstat`` said is *expected* bytes
    long, when it is at most *limit* bytes; None when it has grown past *limit* since
    (the caller streams it). Raises OSError (gone, unreadable, not a regular file now:
    see :func:`open_regular`)."""
    fd = open_regular(path)
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


def read_blob(path: str | bytes | os.PathLike[str], expected: int, limit: int) -> bytes | str:
    """:func:`read_whole` for a file queued to be read later (by a worker): its content,
    or why it makes no blob, :data:`EMPTY` or :data:`GROWN`. Raises OSError."""
    data = read_whole(path, expected, limit)
    return data if data else GROWN if data is None else EMPTY
