"""Content-defined chunking: where a stream is cut into blobs.

Chunk boundaries are part of the on-disk format in practice: the same bytes must be
cut at the same places by every drkit that writes to a repository, or deduplication
against earlier snapshots silently ends. Boundaries depend only on the repository's
chunker parameters (its ``config``), its secret gear seed (in the master key) and
the pyfastcdc release (pinned in pyproject.toml to the range the frozen vectors in
tests/repository/test_frozen_v1.py hold for).

Promises:

* :func:`make_chunker` builds FastCDC 2020 from a repository's ``chunker`` config.
* :func:`cut_blocks` yields exactly the chunks ``FastCDC.cut_stream`` would, reading
  large blocks into a reusable buffer; each chunk is its own ``bytes`` object.
* :func:`cut_file` yields the same chunks for a whole file, through a map of it.
* :func:`check_compiled` refuses the pure-Python fallback (far too slow to be usable).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator, Mapping
from typing import IO, Any

import pyfastcdc

from drkit.errors import UsageError

Chunker = pyfastcdc.FastCDC

DEFAULT_PARAMS: dict[str, Any] = {
    "algorithm": "fastcdc2020",
    "min_size": 512 * 1024,
    "avg_size": 512 * 1024,
    "max_size": 8 * 1024 * 1024,
}
"""What ``init`` records in a new repository's config (never change for existing ones)."""

BLOCK_SIZE = 16 * 1024 * 1024
"""Default read-buffer size of :func:`cut_blocks` (at least twice ``max_size`` is used)."""
_DROP_EVERY = 1024 * 1024
""":func:`cut_file` unmaps the pages behind the cut in steps of this many bytes."""


def check_compiled() -> None:
    """Raise UsageError if pyfastcdc runs its pure-Python fallback."""
    if pyfastcdc.FastCDC.__module__.startswith("pyfastcdc.py"):
        raise UsageError(
            "the compiled pyfastcdc extension is not loaded (pure-Python fallback is far too slow)",
            hint="reinstall pyfastcdc from a wheel for this Python version",
        )


def make_chunker(params: Mapping[str, Any], seed: int) -> Chunker:
    """The chunker a repository with chunker config *params* and gear *seed* uses."""
    return pyfastcdc.FastCDC(avg_size=params["avg_size"], min_size=params["min_size"], max_size=params["max_size"], seed=seed)


def new_buffer(chunker: Chunker) -> bytearray:
    """A read buffer for :func:`cut_blocks` (reusable across streams)."""
    return bytearray(max(BLOCK_SIZE, 2 * chunker.max_size))


def cut_blocks(chunker: Chunker, stream: IO[bytes], buf: bytearray | None = None) -> Iterator[bytes]:
    """Yield the content-defined chunks of *stream* (each its own bytes object).

    Reads into *buf* (reusable across calls; at least twice the chunker's max size,
    else a new one is made) and cuts inside it; a cut is final once ``max_size`` bytes
    after its start are in the buffer (or at end of stream), which is exactly what
    ``cut_stream`` sees, so the boundaries are identical. The unfinished tail moves to
    the front of the buffer. Chunks are copied out, so memory held by chunks in flight
    is their own size, not whole read buffers."""
    max_size = chunker.max_size
    avg_size = chunker.avg_size
    if buf is None or len(buf) < 2 * max_size:
        buf = new_buffer(chunker)
    block = len(buf)
    view = memoryview(buf)
    readinto = getattr(stream, "readinto", None)
    filled = 0
    eof = False
    while not eof:
        while filled < block:
            if readinto is not None:
                got = readinto(view[filled:])
            else:
                piece = stream.read(block - filled)
                got = len(piece) if piece else 0
                view[filled : filled + got] = piece or b""
            if not got:
                eof = True
                break
            filled += got
        if not filled:
            return
        pos = 0
        for chunk in chunker.cut_buf(view[:filled]):
            # Final when cut_stream (which always sees max_size bytes ahead) would cut
            # the same: max_size bytes were available, or the gear hash found a cut
            # inside the data with at least avg_size available (the scan up to that
            # cut does not depend on what follows it). Otherwise read more first.
            ahead = filled - chunk.offset
            if not (eof or ahead >= max_size or (ahead >= avg_size and chunk.length < ahead)):
                break
            yield bytes(chunk.data)
            pos = chunk.offset + chunk.length
        if pos:
            # The tail (an unfinished chunk, under max_size) moves to the front. The
            # regions never overlap (bytearray slice assignment is a memcpy): if not at
            # EOF the buffer was full, and the first chunk with fewer than max_size bytes
            # ahead starts at pos >= len(buf) - max_size >= max_size > the tail's length.
            buf[: filled - pos] = view[pos:filled]
            filled -= pos


def cut_file(chunker: Chunker, fd: int) -> Iterator[bytes]:
    """Yield the content-defined chunks of the whole file open as *fd* (each its own bytes
    object), exactly as ``cut_stream`` cuts it, through a read-only map of the file instead
    of a read buffer: pages behind the cut are unmapped as it moves on (the page cache
    keeps them), so about one chunk is resident, not :data:`BLOCK_SIZE` bytes. The file
    must not change meanwhile."""
    size = os.fstat(fd).st_size
    if not size:
        return
    # Never closed explicitly: unmapped when the chunker and the views of it are gone.
    mapped = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    dropped = 0
    for chunk in chunker.cut_buf(memoryview(mapped)):  # the whole stream: every cut is final
        yield bytes(chunk.data)
        upto = (chunk.offset + chunk.length) & ~(mmap.PAGESIZE - 1)
        if upto - dropped >= _DROP_EVERY:
            try:
                mapped.madvise(mmap.MADV_DONTNEED, dropped, upto - dropped)
            except (OSError, AttributeError):  # no madvise here: the pages stay mapped
                pass
            dropped = upto
