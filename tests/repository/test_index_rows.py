"""#18: the index's rows live in a temporary file, not in the heap; when that file
cannot be made or written, they stay in memory and the index is just as right."""

from __future__ import annotations

import errno
import logging
import os
import threading
import time

import pytest

import drkit.repository.indexrows as indexrows
from drkit.repository.index import Index
from drkit.repository.indexrows import ROW, ROW_SIZE, SPILL_ROWS, RowStore
from drkit.repository.pack import PackEntry


def _rows(count: int, start: int = 0) -> list[bytes]:
    return [ROW.pack(n.to_bytes(32, "big"), n, n * 7) for n in range(start, start + count)]


def test_rows_read_back_from_the_file_the_held_batches_and_the_tail() -> None:
    store = RowStore()
    rows = _rows(2 * SPILL_ROWS + 5)
    for row in rows[:SPILL_ROWS + 3]:
        store.append(row)
    store.extend(b"".join(rows[SPILL_ROWS + 3:]))
    assert len(store) == len(rows) and store.memory_bytes() == 5 * ROW_SIZE
    assert [store.read(n) for n in range(len(rows))] == rows
    assert all(store.holds(n, rows[n][:32]) and not store.holds(n, rows[n - 1][:32]) for n in range(len(rows)))
    assert b"".join(store.batches()) == b"".join(rows)
    for count in (0, 1, SPILL_ROWS, SPILL_ROWS + 1, len(rows) - 1):
        assert b"".join(store.batches(count)) == b"".join(rows[:count])


@pytest.mark.parametrize("fail_after", [0, 1])
def test_a_file_that_cannot_be_made_or_written_keeps_the_rows_in_memory(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fail_after: int) -> None:
    """No temporary directory (the file is never made), or a disk that fills after the
    first batch: the rows stay right, in memory, with one warning."""
    writes = [0]
    real_pwrite = os.pwrite

    def pwrite(fd: int, data: bytes, at: int) -> int:
        if writes[0] >= fail_after:
            raise OSError(errno.ENOSPC, "No space left on device")
        writes[0] += 1
        return real_pwrite(fd, data, at)

    monkeypatch.setattr(indexrows.os, "pwrite", pwrite)
    index = Index()
    entries = [PackEntry(n % 3, os.urandom(32), n, n + 1, n + 2) for n in range(4 * SPILL_ROWS + 9)]
    with caplog.at_level(logging.WARNING, logger="drkit.index"):
        index.add_pack("a" * 64, 10, entries)
    assert caplog.text.count("stay in memory") == 1
    assert all(index._store.holds(n, e.id) for n, e in enumerate(entries))
    assert index.memory_sizes()[0] == (4 * SPILL_ROWS - fail_after * SPILL_ROWS + 9) * ROW_SIZE
    for e in entries:
        loc = index.get(e.id)
        assert loc is not None and (loc.blob_type, loc.offset, loc.length, loc.raw_length) == (
            e.blob_type, e.offset, e.length, e.raw_length)
    assert [cid for cid, _ in index.items()] == [e.id for e in entries]


def test_readers_on_other_threads_see_every_row_while_one_thread_adds() -> None:
    """Rows move from memory to the file as batches fill; a reader never sees a row
    that is not there or a wrong one."""
    store = RowStore()
    rows = _rows(6 * SPILL_ROWS)
    stop = threading.Event()
    wrong: list[int] = []

    def read() -> None:
        while not stop.is_set():
            n = len(store)
            for k in (0, n // 2, n - 1) if n else ():
                try:
                    if store.read(k) != rows[k]:
                        wrong.append(k)
                except Exception:  # noqa: BLE001 - a row not there yet (a short read) is as wrong
                    wrong.append(k)
            time.sleep(0)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    for row in rows:
        store.append(row)
    stop.set()
    for t in readers:
        t.join()
    assert not wrong and [store.read(n) for n in range(0, len(rows), 997)] == rows[::997]


def test_closing_drops_the_file() -> None:
    store = RowStore()
    store.extend(b"".join(_rows(SPILL_ROWS)))
    assert store._file is not None and store.memory_bytes() == 0
    fd = store._fd
    store.close()
    with pytest.raises(OSError):
        os.fstat(fd)
