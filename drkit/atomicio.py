"""Atomic file replacement on a local filesystem: the one way drkit writes a file in place.

Promise of every function here: a reader of *path* sees the old file or the whole new one,
never a part, and after the call returns the new file survives a crash or a power cut.

How: the bytes go to an exclusive (``O_EXCL``, ``O_NOFOLLOW``), randomly named temporary
in *path*'s own directory, created 0600; mode (and owner) are set on the open descriptor
before any rename, so the file is never visible with wider permissions than asked; the
data is fsynced, the temporary renamed over *path* (or linked, when overwriting is
refused), and the directory fsynced so the rename itself is durable.

If anything fails before the rename (an exception while the data is produced or written,
a full disk, a *verify* callback that raises, Ctrl-C), the temporary is removed and *path*
is untouched; the exception propagates unchanged (``OSError`` for the filesystem).
Temporaries are named ``{tmp_prefix}{name}.{random}{tmp_suffix}``, by default
``.NAME.RANDOM.tmp``: hidden, and never matching a pattern such as ``*.prom``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, BinaryIO

_COPY_BLOCK = 1 << 20


def fsync_dir(path: Path) -> None:
    """fsync directory *path*, so that a rename or a new name inside it is durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(path: Path, tmp_prefix: str = ".", tmp_suffix: str = ".tmp") -> Path:
    """A fresh random name for a temporary next to *path* (see the module docstring)."""
    return path.with_name(f"{tmp_prefix}{path.name}.{secrets.token_hex(8)}{tmp_suffix}")


@contextlib.contextmanager
def replacing(
    path: Path,
    *,
    mode: int = 0o600,
    uid: int | None = None,
    gid: int | None = None,
    verify: Callable[[Path], object] | None = None,
    overwrite: bool = True,
    parents: bool = False,
    fsync: bool = True,
    tmp_prefix: str = ".",
    tmp_suffix: str = ".tmp",
) -> Iterator[BinaryIO]:
    """Yield a binary file to write; when the block ends without an exception, it becomes *path*.

    *mode* and, when running as root, *uid*/*gid* are applied to the open temporary.
    *verify(temporary_path)* runs last before the rename and may raise to abort.
    ``overwrite=False`` refuses an existing *path* atomically (:class:`FileExistsError`,
    nothing written). ``fsync=False`` skips both fsyncs (atomic, not durable: for tests
    and scratch data). ``parents=True`` creates missing directories (umask modes); else
    *path*'s directory must exist.
    """
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path, tmp_prefix, tmp_suffix)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fchmod(out.fileno(), mode)
            if uid is not None and gid is not None and os.geteuid() == 0:
                os.fchown(out.fileno(), uid, gid)
            if fsync:
                os.fsync(out.fileno())
        if verify is not None:
            verify(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails with FileExistsError if *path* appeared meanwhile
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(path.parent)


def write_atomic(
    path: Path,
    data: bytes | memoryview | str,
    *,
    mode: int = 0o600,
    overwrite: bool = True,
    parents: bool = False,
    fsync: bool = True,
    tmp_prefix: str = ".",
    tmp_suffix: str = ".tmp",
) -> None:
    """Replace *path* with *data* (``str`` is written as UTF-8); options as :func:`replacing`.
    Raises OSError; *path* is then untouched."""
    payload = data.encode() if isinstance(data, str) else data
    with replacing(path, mode=mode, overwrite=overwrite, parents=parents, fsync=fsync, tmp_prefix=tmp_prefix,
                   tmp_suffix=tmp_suffix) as out:
        view, fd = memoryview(payload).cast("B"), out.fileno()
        while view:  # straight to the descriptor: no copy of a large object in a buffer
            view = view[os.write(fd, view):]


def write_atomic_from(
    path: Path,
    stream: IO[bytes],
    *,
    mode: int = 0o600,
    uid: int | None = None,
    gid: int | None = None,
    verify: Callable[[Path], object] | None = None,
    parents: bool = False,
    tmp_prefix: str = ".",
    tmp_suffix: str = ".tmp",
) -> int:
    """Replace *path* with everything *stream* yields; returns the number of bytes written.
    Options as :func:`replacing` (*verify* sees the complete temporary). Raises OSError, or
    whatever *stream* or *verify* raise; *path* is then untouched."""
    total = 0
    with replacing(path, mode=mode, uid=uid, gid=gid, verify=verify, parents=parents, tmp_prefix=tmp_prefix,
                   tmp_suffix=tmp_suffix) as out:
        while block := stream.read(_COPY_BLOCK):
            out.write(block)
            total += len(block)
    return total
