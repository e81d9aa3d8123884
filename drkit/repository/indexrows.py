"""The rows of the in-memory index, most of them out of memory.

A row is 48 bytes: the 32-byte chunk id, then two native u64 (see
:class:`~drkit.repository.index.Index`). Rows are appended and never change. The
newest (fewer than :data:`SPILL_ROWS`) are held in memory; every full batch of
:data:`SPILL_ROWS` goes to an unlinked temporary file and is read back with
``pread``: the kernel's page cache holds them, not the process, so a backup or a
restore of 400,000 small files does not carry 20 MB of rows in its heap (the index
keeps only its lookup table, about 16 to 32 bytes per blob).

When the temporary file cannot be made or written (no temporary directory, a full
disk), the batches stay in memory instead: slower to nothing, larger, never wrong. That
is logged once as a warning.

Safe to read from other threads while one thread appends: a batch is in the file (or
in ``_held``) before the count that sends readers there is published, and the state
readers take is one tuple, replaced whole.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
from typing import IO, Iterator

log = logging.getLogger("drkit.index")

ROW = struct.Struct("=32sQQ")
"""id, span (offset << 32 | length), meta (pack << 36 | type << 32 | raw length)."""
ROW_SIZE = ROW.size
SPILL_ROWS = 4096
"""Rows per batch: 192 KiB."""
_BATCH = SPILL_ROWS * ROW_SIZE
BLOCK_ROWS = 64
"""Rows read from the file at once (a batch holds whole blocks)."""
_BLOCK = BLOCK_ROWS * ROW_SIZE
_CACHED_BLOCKS = 256
"""Blocks kept in memory: 768 KiB."""


class RowStore:
    """Append-only rows, numbered from 0 in the order added."""

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None
        self._fd = -1
        self._held: list[bytes] = []
        """Batches that stayed in memory, rows ``file_rows`` onwards: once one did (the
        file failed), every later one does."""
        self._state: tuple[int, int, bytearray] = (0, 0, bytearray())
        """(rows in the file, rows in the file or held, the newest rows)."""
        self._blocks: dict[int, bytes] = {}
        """Block number -> its rows, the blocks read last (blocks in the file never change)."""

    def __len__(self) -> int:
        _, done, tail = self._state
        return done + len(tail) // ROW_SIZE

    def append(self, row: bytes) -> None:
        """Add one row (48 bytes; not checked)."""
        tail = self._state[2]
        tail += row
        if len(tail) >= _BATCH:
            self._spill()

    def extend(self, rows: bytes | memoryview) -> None:
        """Add whole rows given back to back (a multiple of 48 bytes; not checked)."""
        view = memoryview(rows)
        while len(view):
            tail = self._state[2]
            take = _BATCH - len(tail)
            tail += view[:take]
            view = view[take:]
            if len(tail) >= _BATCH:
                self._spill()

    def _spill(self) -> None:
        """Move the full batch in memory to the file (or to ``_held``)."""
        file_rows, done, tail = self._state
        batch = bytes(tail)
        if not self._held and self._write(batch, file_rows * ROW_SIZE):
            self._state = (file_rows + SPILL_ROWS, done + SPILL_ROWS, bytearray())
        else:
            self._held.append(batch)
            self._state = (file_rows, done + SPILL_ROWS, bytearray())

    def _write(self, batch: bytes, at: int) -> bool:
        """Write *batch* at *at* in the file (made on first use); False, once warned,
        when that fails: from then on rows stay in memory."""
        try:
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix="drkit-index-")
                self._fd = self._file.fileno()
            view = memoryview(batch)
            while len(view):
                view = view[os.pwrite(self._fd, view, at + len(batch) - len(view)):]
            return True
        except OSError as exc:
            log.warning("cannot keep the index's rows in a temporary file (%s): they stay in memory", exc)
            return False

    def read(self, row: int) -> bytes:
        """Row number *row* (which must exist)."""
        rows, at = self.where(row)
        return bytes(rows[at : at + ROW_SIZE])

    def holds(self, row: int, chunk_id: bytes) -> bool:
        """Whether row number *row* (which must exist) is that of the 32-byte
        *chunk_id* (as ``read(row).startswith(chunk_id)``, without copying the row)."""
        rows, at = self.where(row)
        return rows.startswith(chunk_id, at)

    def where(self, row: int) -> tuple[bytes | bytearray, int]:
        """The buffer that holds row number *row* (which must exist: the newest rows, a
        held batch or a block read from the file) and the row's offset in it; read it
        at once (a later call may drop the block, or add to the newest rows)."""
        file_rows, done, tail = self._state
        if row >= done:
            return tail, (row - done) * ROW_SIZE
        if row >= file_rows:
            row -= file_rows
            return self._held[row // SPILL_ROWS], (row % SPILL_ROWS) * ROW_SIZE
        block = self._blocks.get(row // BLOCK_ROWS)
        if block is None:
            block = self._read_block(row // BLOCK_ROWS)
        return block, (row % BLOCK_ROWS) * ROW_SIZE

    def _read_block(self, number: int) -> bytes:
        """Block *number* (rows ``number * BLOCK_ROWS`` onwards) from the file, kept
        among the blocks read last (all dropped when there are too many: thread-safe
        without a lock). Lookups in the order the rows were added, as in a restore of
        the backup that added them, read one block per 64 rows: one ``pread`` per row
        made a restore's main thread wait for the interpreter lock after each (1.5 s of
        3.7 s for 100,000 small files)."""
        data = os.pread(self._fd, _BLOCK, number * _BLOCK)
        if len(data) != _BLOCK:
            raise OSError(f"the index's temporary file is short at block {number}")
        if len(self._blocks) >= _CACHED_BLOCKS:
            self._blocks.clear()
        self._blocks[number] = data
        return data

    def batches(self, count: int | None = None) -> Iterator[bytes]:
        """Rows 0 to *count* - 1 (default: every row there is now) in order, up to
        :data:`SPILL_ROWS` at a time (bytes of whole rows)."""
        file_rows, done, tail = self._state
        held = self._held[: (done - file_rows) // SPILL_ROWS]
        left = done + len(tail) // ROW_SIZE if count is None else count
        for at in range(0, file_rows * ROW_SIZE, _BATCH):
            if left <= 0:
                return
            data = os.pread(self._fd, _BATCH, at)
            if len(data) != _BATCH:
                raise OSError("the index's temporary file is short")
            yield data[: left * ROW_SIZE]
            left -= SPILL_ROWS
        for batch in held:
            if left <= 0:
                return
            yield batch[: left * ROW_SIZE]
            left -= SPILL_ROWS
        if left > 0 and tail:
            yield bytes(tail[: left * ROW_SIZE])

    def memory_bytes(self) -> int:
        """Bytes of rows this process holds (the newest rows and any held batches)."""
        return len(self._state[2]) + sum(len(b) for b in self._held)

    def close(self) -> None:
        """Drop the temporary file (it goes by itself when the store is collected)."""
        if self._file is not None:
            self._file.close()
