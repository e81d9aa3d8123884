"""The backup hot path: block-wise chunking and the worker-side saver.

These guard the performance rewrite's promises (same chunk boundaries as
``FastCDC.cut_stream``; dedup inside the in-flight window; every blob verified;
restore merges range reads yet fails loudly on damage). No timing here: see bench/.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pyfastcdc
import pytest

from drkit.errors import IntegrityError
from drkit.repository import layout
from drkit.repository.blob import BLOB_TREE
from drkit.repository.repo import Repository
from drkit.repository.saver import BlobSaver
from drkit.repository.sealprocs import SealError
from drkit.repository.chunker import cut_blocks
from drkit.services.backup import BackupOptions, run_backup
from drkit.services.restore import SnapshotReader
from drkit.sources.files import FilesSource
from drkit.storage import LocalStorage


class _Trickle(io.RawIOBase):
    """A stream that returns short reads of random sizes (like a pipe)."""

    def __init__(self, data: bytes, seed: int) -> None:
        self._data = data
        self._pos = 0
        self._rng = random.Random(seed)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        n = min(len(b), self._rng.randint(1, 70000), len(self._data) - self._pos)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


class _ReadOnly:
    """A stream with only read() (no readinto), returning short reads."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)
        self._rng = random.Random(3)

    def read(self, n: int = -1) -> bytes:
        return self._buf.read(min(n, self._rng.randint(1, 90000)))


@pytest.mark.parametrize("size", [0, 1, 1000, 16383, 16384, 65535, 65536, 65537, 300_000])
def test_cut_blocks_matches_cut_stream(size: int) -> None:
    chunker = pyfastcdc.FastCDC(avg_size=4096, min_size=1024, max_size=16384, seed=7)
    data = random.Random(size).randbytes(size // 2) + bytes(size - size // 2)  # random, then a long zero run
    expected = [bytes(c.data) for c in chunker.cut_stream(io.BytesIO(data))]
    shared = bytearray(2 * 16384)  # the smallest legal buffer: carry logic at its limit
    for stream in (io.BytesIO(data), _Trickle(data, size), _ReadOnly(data)):
        got = list(cut_blocks(chunker, stream, shared))
        assert got == expected
        assert b"".join(got) == data


def test_cut_blocks_matches_cut_stream_randomized() -> None:
    """Many chunker settings, buffer sizes and data shapes (random, zero runs, one
    repeated byte: forced max-size cuts), all against cut_stream."""
    rng = random.Random(5)
    for _ in range(200):
        mn = rng.choice([64, 256, 1024, 2048])
        avg = rng.choice([a for a in (256, 1024, 4096, 8192) if a >= mn])
        mx = rng.choice([m for m in (1024, 4096, 16384, 65536) if m >= avg])
        chunker = pyfastcdc.FastCDC(avg_size=avg, min_size=mn, max_size=mx, seed=rng.randrange(1, 2**40))
        parts = []
        for _ in range(rng.randint(0, 6)):
            kind, n = rng.random(), rng.randint(0, 5 * mx)
            parts.append(rng.randbytes(n) if kind < 0.6 else bytes(n) if kind < 0.8 else bytes([rng.randrange(256)]) * n)
        data = b"".join(parts)
        expected = [bytes(c.data) for c in chunker.cut_stream(io.BytesIO(data))]
        buf = bytearray(rng.choice([2 * mx, 2 * mx + 1, 3 * mx, 5 * mx + 7]))
        assert list(cut_blocks(chunker, io.BytesIO(data), buf)) == expected


def test_cut_blocks_rejects_too_small_buffer_by_making_its_own() -> None:
    chunker = pyfastcdc.FastCDC(avg_size=4096, min_size=1024, max_size=16384, seed=1)
    data = os.urandom(100_000)
    tiny = bytearray(100)
    assert b"".join(cut_blocks(chunker, io.BytesIO(data), tiny)) == data
    assert tiny == bytearray(100)  # untouched


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    storage = LocalStorage(tmp_path / "repo")
    Repository.init(storage, "pw")
    r = Repository.open(storage, "pw")
    r.load_index()
    return r


def test_submit_dedups_inside_the_inflight_window(repo: Repository) -> None:
    blob = os.urandom(50_000)
    other = os.urandom(50_000)
    with BlobSaver(repo, workers=2) as saver:
        tickets = [saver.submit(b) for b in (blob, other, blob, blob, other)]
        ids = [t.id() for t in tickets]
    assert ids[0] == ids[2] == ids[3] == repo.hasher(blob)
    assert ids[1] == ids[4] == repo.hasher(other)
    assert saver.stats.blobs_new == 2 and saver.stats.blobs_reused == 3
    assert repo.read_blob(ids[0]) == blob and repo.read_blob(ids[1]) == other
    # A second session finds both in the index and stores nothing.
    with BlobSaver(repo, workers=2) as again:
        assert [again.submit(b).id() for b in (blob, other)] == [ids[0], ids[1]]
    assert again.stats.blobs_new == 0 and again.stats.packs == 0


@pytest.mark.parametrize("workers", [2, 3])
def test_batches_of_small_blobs_are_sealed_by_one_thread_fewer_than_the_workers(
        repo: Repository, workers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread that reads the files is busy too: at most workers - 1 batches of small
    blobs are sealed at once (more only fought over the GIL), and every blob still
    comes out right."""
    import threading
    import time

    running = {"now": 0, "most": 0}
    guard = threading.Lock()
    real_work_batch = BlobSaver._work_batch

    def counting_work_batch(self: BlobSaver, batch: object, *rest: object) -> None:
        real_work = self._work

        def slow_work(ticket: object) -> None:
            with guard:
                running["now"] += 1
                running["most"] = max(running["most"], running["now"])
            time.sleep(0.0005)  # long enough for the other workers to start their batches
            with guard:
                running["now"] -= 1
            real_work(ticket)  # type: ignore[arg-type]

        self._work = slow_work  # type: ignore[method-assign]
        try:
            real_work_batch(self, batch, *rest)  # type: ignore[arg-type]
        finally:
            del self._work

    monkeypatch.setattr(BlobSaver, "_work_batch", counting_work_batch)
    blobs = [os.urandom(100 + i) for i in range(600)]
    with BlobSaver(repo, workers=workers) as saver:
        tickets = [saver.submit(b) for b in blobs]
        ids = [t.id() for t in tickets]
    assert running["most"] == workers - 1
    assert ids == [repo.hasher(b) for b in blobs]
    assert all(repo.read_blob(i) == b for i, b in zip(ids, blobs, strict=True))


def test_settle_stores_a_large_open_pack_and_waits_for_uploads_before_the_tree(repo: Repository, tmp_path: Path) -> None:
    """#18: a backup's tree is cut and sealed after the data's last large pack was stored
    (not beside it: at the end of a large backup the index is at its largest); a small
    open pack stays open (no extra tiny pack per source)."""
    with BlobSaver(repo, workers=2) as saver:
        for _ in range(3):
            saver.submit(os.urandom(2 * 1024 * 1024))
        saver.settle()
        assert saver._builder is None and not saver._uploading and not saver._sealing
        assert saver.stats.packs == 1
        saver.submit(os.urandom(100_000))
        saver.settle()
        assert saver._builder is not None and len(saver._builder) == 1 and saver.stats.packs == 1
    assert saver.stats.packs == 2
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"f{i}").write_bytes(os.urandom(2 * 1024 * 1024))
    run = run_backup(repo, [FilesSource("data", FilesSource.Options(paths=[str(data)]))], BackupOptions())
    snap = run.snapshots[0]
    tree_packs = {loc.pack for loc in (repo.index.get(bytes.fromhex(t)) for t in snap.tree) if loc}
    data_packs = {loc.pack for cid, loc in repo.index.items() if loc.blob_type != BLOB_TREE}
    assert tree_packs and not tree_packs & data_packs


def test_a_blob_failing_verification_fails_the_save(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker-side seal still verifies: a compressor that corrupts is caught."""
    real = repo.codec.compress

    def corrupting(data):  # type: ignore[no-untyped-def]
        out = bytearray(real(data))
        out[-1] ^= 0xFF
        return bytes(out)

    monkeypatch.setattr(repo.codec, "compress", corrupting)
    saver = BlobSaver(repo, workers=2)
    ticket = saver.submit(b"some text that compresses " * 1000)
    with pytest.raises(SealError, match="does not|damaged|failed"):  # a DrkitError: fails the source, not the run
        ticket.id()
    saver.abort()
    assert not list(repo.storage.list(layout.DATA))  # nothing was uploaded


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_restore_round_trip_with_holes_and_shared_chunks(repo: Repository, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    rnd = os.urandom(3 * 1024 * 1024)
    (data / "a.bin").write_bytes(rnd)
    (data / "copy.bin").write_bytes(rnd)  # every chunk shared with a.bin
    (data / "sparse.bin").write_bytes(bytes(2 * 1024 * 1024) + b"tail")
    (data / "empty").write_bytes(b"")
    (data / "text.log").write_bytes(b"".join(b"line %d of a log\n" % i for i in range(200_000)))
    src = FilesSource("data", FilesSource.Options(paths=[str(data)]))
    run = run_backup(repo, [src], BackupOptions())
    target = tmp_path / "restore"
    repo.load_index()
    SnapshotReader(repo, run.snapshots[0], target=target).write_entries(target)
    assert _files(target / str(data).lstrip("/")) == _files(data)


@pytest.mark.parametrize("damage", ["flip", "short-read"])
def test_restore_fails_loudly_on_damaged_data(repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    (data / "b.txt").write_bytes(b"fine\n")
    src = FilesSource("data", FilesSource.Options(paths=[str(data)]))
    run = run_backup(repo, [src], BackupOptions())
    repo.load_index()
    [pack] = [p for p in (tmp_path / "repo" / "data").rglob("*") if p.is_file()]
    if damage == "flip":
        raw = bytearray(pack.read_bytes())
        raw[1024 * 1024] ^= 0x01  # inside a.bin's data, far from the tree blob at the end
        pack.write_bytes(bytes(raw))
    else:
        real_get = repo.storage.get

        def short_get(name: str, offset: int = 0, length: int | None = None) -> bytes:
            out = real_get(name, offset, length)
            return out[:-10] if length and length > 100_000 else out

        monkeypatch.setattr(repo.storage, "get", short_get)
    target = tmp_path / "restore"
    with pytest.raises(IntegrityError):
        SnapshotReader(repo, run.snapshots[0], target=target).write_entries(target)
    restored = target / str(data).lstrip("/")
    # Every file is either absent or byte-exact; the damaged one is absent; no temp files.
    present = {p.name: p.read_bytes() for p in restored.iterdir()}
    assert not any(name.endswith(".drkit-restore") for name in present)
    assert all(present[n] == (data / n).read_bytes() for n in present)
    assert len(present) < 2
    if damage == "flip":
        assert present == {"b.txt": b"fine\n"}


def test_progress_gets_its_total_from_a_counting_pass_beside_the_backup(tmp_path) -> None:
    """restic's scanner: a thread counts what the walk will read; the bar gets the total."""
    import threading

    from drkit.progress import ProgressSink
    from drkit.repository.repo import Repository
    from drkit.services.backup import BackupOptions, run_backup
    from drkit.sources.files import FilesOptions, FilesSource
    from drkit.storage import LocalStorage

    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.bin").write_bytes(b"a" * 300_000)
    (data / "sub" / "b.txt").write_bytes(b"b" * 1234)
    (data / "sub" / "skip.tmp").write_bytes(b"c" * 99_999)

    class Recorder(ProgressSink):
        def __init__(self) -> None:
            self.totals: list[int] = []
            self.advanced = 0
            self.got_total = threading.Event()

        def set_total(self, total: int) -> None:
            self.totals.append(total)
            self.got_total.set()

        def advance(self, n: int) -> None:
            self.advanced += n

    rec = Recorder()

    class WaitsForTheCount(FilesSource):
        def backup(self, ctx) -> None:  # the count runs at nice 19: let it finish first, for a stable test
            assert rec.got_total.wait(30)
            super().backup(ctx)

    repo = Repository.init(LocalStorage(str(tmp_path / "repo")), "pw")
    src = WaitsForTheCount("data", FilesOptions(paths=[str(data)], exclude=["*.tmp"]))
    run = run_backup(repo, [src], BackupOptions(workers=1), progress=rec)
    assert rec.totals == [301_234] == [rec.advanced]
    assert run.snapshots[0].stats["size"] == 301_234
