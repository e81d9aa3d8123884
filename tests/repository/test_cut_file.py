"""#18: a snapshot's tree is cut through a map of its file (cut_file), with the cuts
cut_stream makes, holding about one chunk in the heap: cut_blocks' 16 MiB read buffer
came on top of the largest index at the end of a backup of many small files."""

from __future__ import annotations

import io
import os
import random
import tempfile
import tracemalloc

import pyfastcdc
import pytest

from drkit.repository.chunker import cut_blocks, cut_file

SMALL = {"avg_size": 16 * 1024, "min_size": 8 * 1024, "max_size": 64 * 1024}


def _data(size: int) -> bytes:
    rnd = random.Random(7)
    lines = [bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(20, 200))) for _ in range(300)]
    out = bytearray()
    while len(out) < size:
        out += rnd.choice(lines) + b"\n"
    return bytes(out[:size])


@pytest.mark.parametrize("size", [0, 1, 5000, 3 * 1024 * 1024 + 17])
def test_cut_file_cuts_where_cut_stream_does(size: int) -> None:
    chunker = pyfastcdc.FastCDC(seed=3, **SMALL)
    data = _data(size)
    expected = [bytes(c.data) for c in chunker.cut_stream(io.BytesIO(data))]
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        got = list(cut_file(chunker, f.fileno()))
    assert got == expected
    assert got == list(cut_blocks(chunker, io.BytesIO(data), bytearray(2 * SMALL["max_size"])))


def test_cut_file_holds_about_one_chunk_in_the_heap() -> None:
    chunker = pyfastcdc.FastCDC(seed=3, **SMALL)
    with tempfile.TemporaryFile() as f:
        f.write(os.urandom(8 * 1024 * 1024))
        f.flush()
        tracemalloc.start()
        try:
            for _ in cut_file(chunker, f.fileno()):
                pass
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 4 * SMALL["max_size"], peak  # cut_blocks: a 16 MiB buffer
