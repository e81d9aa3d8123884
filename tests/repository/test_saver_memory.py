"""#18: a first backup of many small files holds its packs outside the heap, in at most
two buffers (the pack filling, the one being stored), and never a second copy of a pack:
a list of sealed blobs joined at the end held a pack two or three times in the heap, and
freed 16 MiB blocks stayed resident beside the index growing with every file."""

from __future__ import annotations

import gc
import mmap
import os
import tracemalloc
from pathlib import Path

import pytest

from drkit.repository import saver as saver_module
from drkit.repository.repo import Repository
from drkit.repository.saver import BlobSaver
from drkit.storage import LocalStorage

PACK = 2 * 1024 * 1024


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    storage = LocalStorage(str(tmp_path / "repo"))
    Repository.init(storage, "pw", pack_size=PACK)
    return Repository.open(storage, "pw")


def test_small_blobs_are_packed_outside_the_heap_in_at_most_two_buffers(repo: Repository,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[mmap.mmap] = []
    most_open = 0

    def counted(size: int) -> mmap.mmap:
        nonlocal most_open
        buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
        made.append(buf)
        most_open = max(most_open, sum(not b.closed for b in made))
        return buf

    monkeypatch.setattr(saver_module, "anonymous_buffer", counted)
    blobs = [os.urandom(4096) for _ in range(2500)]  # ~10 MiB, incompressible: 5 packs
    gc.collect()
    tracemalloc.start()
    try:
        with BlobSaver(repo, max_inflight_bytes=256 * 1024) as saver:
            tickets = [saver.submit(b) for b in blobs]
            [t.id() for t in tickets]
            _, peak = tracemalloc.get_traced_memory()  # four packs stored by now
    finally:
        tracemalloc.stop()
    assert saver.stats.packs >= 4 and saver.stats.blobs_new == len(blobs)
    assert most_open <= 2, most_open
    assert all(b.closed for b in made)  # every buffer given back by the end
    # The heap holds what is in flight and the entries, not packs (before: >= 2 packs).
    assert peak < PACK, peak
