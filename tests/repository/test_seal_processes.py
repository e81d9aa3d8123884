"""#18: a backup of many small files seals its batches of small blobs in worker
processes (:mod:`drkit.repository.sealprocs`). What is stored must be what threads
store (restored byte for byte, deduplicated, verified); a worker that dies fails the
source and leaves a repository the next backup completes; none is left running."""

from __future__ import annotations

import _thread
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from drkit.repository import sealprocs
from drkit.repository.repo import Repository
from drkit.repository.sealprocs import BackupWorkerDied, SealWorkers, seal_worker_count
from drkit.services.backup import BackupOptions, run_backup
from drkit.services.restore import SnapshotReader
from drkit.services.verify import verify_repository
from drkit.sources.files import FilesSource
from drkit.storage import LocalStorage


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    storage = LocalStorage(str(tmp_path / "repo"))
    Repository.init(storage, "pw")
    return Repository.open(storage, "pw")


@pytest.fixture
def sealers_seen(monkeypatch: pytest.MonkeyPatch) -> list[SealWorkers]:
    """Every SealWorkers a backup starts; the workers start after the first batch."""
    monkeypatch.setattr("drkit.repository.saver.MIN_BATCHES", 1)
    seen: list[SealWorkers] = []
    real = SealWorkers.__init__

    def init(self: SealWorkers, *args: Any) -> None:
        real(self, *args)
        seen.append(self)

    monkeypatch.setattr(SealWorkers, "__init__", init)
    return seen


def _data(root: Path, count: int) -> dict[str, bytes]:
    contents = {}
    for i in range(count):
        d = root / f"d{i // 100:03d}"
        d.mkdir(parents=True, exist_ok=True)
        data = b"same content\n" if i % 10 == 0 else f"file {i}\n".encode() * (1 + i % 50)
        (d / f"f{i:04d}").write_bytes(data)
        contents[f"d{i // 100:03d}/f{i:04d}"] = data
    return contents


def _sealed(blobs: Any, out: Any) -> tuple[int, list[bytes]]:
    """(blobs sealed, the sealed bytes: one per blob, or per group in format v3) of a
    :meth:`SealWorkers.seal` request and its answer."""
    if isinstance(blobs, tuple):  # ("groups", files): (outcomes, [(sealed group, member numbers)])
        _outcomes, groups = out
        return sum(len(numbers) for _, numbers in groups), [group for group, _ in groups]
    sealed = [blob for chunk_id, blob, _ in out if chunk_id is not None]
    return len(sealed), sealed


def _backup(repo: Repository, data: Path, processes: str) -> Any:
    source = FilesSource("data", FilesSource.Options(paths=[str(data)]))
    return run_backup(repo, [source], BackupOptions(env={"DRKIT_BACKUP_PROCESSES": processes}))


def _restored(repo: Repository, data: Path, target: Path) -> dict[str, bytes]:
    repo.load_index()
    snap = repo.find_snapshot("latest")
    SnapshotReader(repo, snap, target=target, processes=0).write_entries(target)
    base = target / str(data).lstrip("/")
    return {str(p.relative_to(base)): p.read_bytes() for p in base.rglob("f*")}


def test_a_backup_sealed_by_workers_restores_exactly_and_deduplicates(
        repo: Repository, tmp_path: Path, sealers_seen: list[SealWorkers], monkeypatch: pytest.MonkeyPatch) -> None:
    contents = _data(tmp_path / "data", 3000)
    sealed = {"blobs": 0}
    real_seal = SealWorkers.seal

    def seal(self: SealWorkers, blobs: Any) -> Any:
        out = real_seal(self, blobs)
        sealed["blobs"] += _sealed(blobs, out)[0]
        return out

    monkeypatch.setattr(SealWorkers, "seal", seal)
    run = _backup(repo, tmp_path / "data", "2")
    assert not run.failed
    assert len(sealers_seen) == 1 and len(sealers_seen[0].pool.workers) == 2
    assert sealed["blobs"] > 2500  # (the first batch is sealed in a thread)
    assert all(w.proc.poll() is not None for w in sealers_seen[0].pool.workers)
    assert _restored(repo, tmp_path / "data", tmp_path / "t") == contents
    distinct = len(set(contents.values()))
    stored = len(repo.index)
    assert distinct <= stored <= distinct + 5  # one blob per distinct content (and the tree)
    assert verify_repository(repo, read_data=True, state_dir=tmp_path / "state").ok


def test_a_recipient_mode_backup_is_sealed_by_workers_in_one_session_only_the_identity_opens(
        tmp_path: Path, sealers_seen: list[SealWorkers], monkeypatch: pytest.MonkeyPatch) -> None:
    """The backup host holds the recipient, not the identity: its workers seal in the
    main process's session (one ephemeral key for the whole backup), and once the
    backup ends nothing it stored opens without the identity; with it, every byte
    comes back."""
    from drkit.errors import IdentityRequired
    from drkit.repository.blob import BLOB_DATA, BLOB_GROUP
    from drkit.repository.crypto import SCHEME_RECIPIENT, RecipientCipher
    from drkit.repository.identity import generate_identity

    identity = generate_identity()
    storage = LocalStorage(str(tmp_path / "repo"))
    Repository.init(storage, "pw", recipient=identity.public)
    host = Repository.open(storage, "pw")
    assert not host.can_read_content
    contents = _data(tmp_path / "data", 3000)
    sessions: list[bytes] = []
    count = {"blobs": 0}
    real_seal = SealWorkers.seal

    def seal(self: SealWorkers, blobs: Any) -> Any:
        out = real_seal(self, blobs)
        n, sealed = _sealed(blobs, out)
        count["blobs"] += n
        sessions.extend(bytes(blob[1:33]) for blob in sealed)
        assert all(blob[0] == SCHEME_RECIPIENT for blob in sealed)
        return out

    monkeypatch.setattr(SealWorkers, "seal", seal)
    run = _backup(host, tmp_path / "data", "2")
    assert not run.failed
    assert len(sealers_seen) == 1 and len(sealers_seen[0].pool.workers) == 2
    assert count["blobs"] > 2500 and len(set(sessions)) == 1  # one session, the main process's
    assert all(w.proc.poll() is not None for w in sealers_seen[0].pool.workers)
    assert isinstance(host.codec.cipher, RecipientCipher) and host.codec.cipher._session is None  # ended
    host.load_index()
    with pytest.raises(IdentityRequired):
        host.load_snapshot(host.snapshot_ids()[0])
    for kind in (BLOB_DATA, BLOB_GROUP):  # a blob a thread sealed, a group member a worker sealed
        with pytest.raises(IdentityRequired):
            host.read_blob(next(cid for cid, loc in host.index.items() if loc.blob_type == kind))
    reader = Repository.open(storage, None, identity=identity)
    assert _restored(reader, tmp_path / "data", tmp_path / "t") == contents


def test_a_worker_that_dies_fails_the_source_and_the_next_backup_completes(
        repo: Repository, tmp_path: Path, sealers_seen: list[SealWorkers], monkeypatch: pytest.MonkeyPatch) -> None:
    contents = _data(tmp_path / "data", 3000)
    real_seal = SealWorkers.seal
    calls = {"n": 0}

    def seal(self: SealWorkers, blobs: list[Any]) -> Any:
        calls["n"] += 1
        if calls["n"] == 5:
            for worker in self.pool.workers:
                os.kill(worker.proc.pid, signal.SIGKILL)
                worker.proc.wait()
        return real_seal(self, blobs)

    monkeypatch.setattr(SealWorkers, "seal", seal)
    with pytest.raises(BackupWorkerDied, match=r"a backup worker process ended unexpectedly \(pid \d+, killed by signal 9\)"):
        _backup(repo, tmp_path / "data", "1")
    assert all(w.proc.poll() is not None for s in sealers_seen for w in s.pool.workers)
    monkeypatch.setattr(SealWorkers, "seal", real_seal)
    run = _backup(repo, tmp_path / "data", "1")
    assert not run.failed
    assert _restored(repo, tmp_path / "data", tmp_path / "t") == contents
    assert verify_repository(repo, read_data=True, state_dir=tmp_path / "state").ok


def test_two_workers_unless_turned_off_or_on_one_processor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert seal_worker_count({}) == 2  # any storage, either key mode (each holds about 25 MiB)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert seal_worker_count({}) == 2
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert seal_worker_count({}) == 0  # the main process alone
    assert seal_worker_count({"DRKIT_BACKUP_PROCESSES": "2"}) == 2
    assert seal_worker_count({"DRKIT_BACKUP_PROCESSES": "0"}) == 0


def test_a_small_backup_starts_no_worker(repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first backup starts the workers after MIN_NEW_BATCHES batches of small files, a
    later one after MIN_BATCHES batches of changed files: fewer never start them."""
    started: list[Any] = []
    real_init = SealWorkers.__init__

    def init(self: SealWorkers, *args: Any) -> None:
        started.append(args)
        real_init(self, *args)

    monkeypatch.setattr(SealWorkers, "__init__", init)
    few = 64 * (sealprocs.MIN_NEW_BATCHES - 2)  # fewer batches than a first backup's threshold
    contents = _data(tmp_path / "data", few)
    run = _backup(repo, tmp_path / "data", "2")
    assert not run.failed and started == []
    assert _restored(repo, tmp_path / "data", tmp_path / "t") == contents

    many = 64 * (sealprocs.MIN_NEW_BATCHES + 2)  # a first backup of more files (another source)
    more = _data(tmp_path / "more", many)
    source = FilesSource("more", FilesSource.Options(paths=[str(tmp_path / "more")]))
    run = run_backup(repo, [source], BackupOptions(env={"DRKIT_BACKUP_PROCESSES": "2"}))
    assert not run.failed and len(started) == 1
    started.clear()

    assert many < 64 * (sealprocs.MIN_BATCHES - 2)
    for rel in more:  # each one changed: fewer than a later backup's threshold
        more[rel] += b"changed"
        (tmp_path / "more" / rel).write_bytes(more[rel])
    run = run_backup(repo, [source], BackupOptions(env={"DRKIT_BACKUP_PROCESSES": "2"}))
    assert not run.failed and started == [], len(started)
    assert run.snapshots[0].stats["files_changed"] == many
    assert _restored(repo, tmp_path / "more", tmp_path / "t2") == more


def test_ctrl_c_during_a_backup_with_workers_stops_them_and_the_next_backup_completes(
        repo: Repository, tmp_path: Path, sealers_seen: list[SealWorkers], monkeypatch: pytest.MonkeyPatch) -> None:
    contents = _data(tmp_path / "data", 3000)
    real_seal = SealWorkers.seal
    calls = {"n": 0, "at": 0.0}

    def seal(self: SealWorkers, blobs: list[Any]) -> Any:
        calls["n"] += 1
        if calls["n"] == 6:
            calls["at"] = time.monotonic()
            _thread.interrupt_main()
        return real_seal(self, blobs)

    monkeypatch.setattr(SealWorkers, "seal", seal)
    with pytest.raises(KeyboardInterrupt):
        _backup(repo, tmp_path / "data", "2")
    assert time.monotonic() - calls["at"] < 1.0
    assert sealers_seen and all(w.proc.poll() is not None for s in sealers_seen for w in s.pool.workers)
    monkeypatch.setattr(SealWorkers, "seal", real_seal)
    assert not _backup(repo, tmp_path / "data", "2").failed
    assert _restored(repo, tmp_path / "data", tmp_path / "t") == contents
    assert verify_repository(repo, read_data=True, state_dir=tmp_path / "state").ok


def test_chunks_of_large_files_stay_in_threads(repo: Repository, tmp_path: Path, sealers_seen: list[SealWorkers],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of large-file chunks (hundreds of KiB each) are not copied to a worker:
    threads seal them with the interpreter lock released for long. (A batch that
    happens to hold only a file's short last chunk, or the trees, may go to a worker:
    how blobs fall into batches depends on timing.)"""
    data = tmp_path / "data"
    data.mkdir()
    contents = {f"big{i}": os.urandom(6 * 1024 * 1024) for i in range(3)}
    for name, blob in contents.items():
        (data / name).write_bytes(blob)
    sent: list[list[int]] = []
    real_seal = SealWorkers.seal

    def seal(self: SealWorkers, blobs: list[Any]) -> Any:
        sent.append([len(b) for _, b in blobs])
        return real_seal(self, blobs)

    monkeypatch.setattr(SealWorkers, "seal", seal)
    run = _backup(repo, data, "2")
    assert not run.failed
    assert all(sum(sizes) < 64 * 1024 * len(sizes) for sizes in sent), sent
    assert sum(map(sum, sent)) < 1024 * 1024, sent  # of 18 MiB
    repo.load_index()
    target = tmp_path / "t"
    SnapshotReader(repo, repo.find_snapshot("latest"), target=target).write_entries(target)
    assert {p.name: p.read_bytes() for p in (target / str(data).lstrip("/")).iterdir()} == contents


@pytest.mark.parametrize("processes", ["0", "2"])
def test_a_blob_that_does_not_verify_after_sealing_fails_its_source_only(
        repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: str) -> None:
    """A sealed blob that does not decode back to its data (a broken compressor, bad
    memory) fails its source with one clear error (exit 7), in a thread as in a worker
    process; the other sources are stored. Before, the threads' plain BlobError escaped
    the run: no source's snapshot was saved."""
    from drkit.errors import PartialFailure
    from drkit.repository.blob import BlobCodec

    bad, good = tmp_path / "bad", tmp_path / "good"
    bad.mkdir()
    good.mkdir()
    (bad / "f").write_bytes(b"BADRAM " * 20_000)
    (good / "g").write_bytes(b"fine " * 20_000)
    real_compress = BlobCodec.compress

    def compress(self: BlobCodec, data: Any) -> Any:
        data = bytes(data)
        return real_compress(self, data + b"!" if data.startswith(b"BADRAM") else data)

    monkeypatch.setattr(BlobCodec, "compress", compress)
    if processes != "0":  # a worker process has its own codec: its verdict is what comes back
        real_seal = SealWorkers.seal

        def seal(self: SealWorkers, blobs: list[Any]) -> Any:
            if any((bytes(b[1]) if len(b) == 2 else Path(os.fsdecode(b[1])).read_bytes()).startswith(b"BADRAM")
                   for b in blobs):
                raise sealprocs.SealError("blob 0123: sealed blob does not decode to its data")
            return real_seal(self, blobs)

        monkeypatch.setattr(SealWorkers, "seal", seal)
        monkeypatch.setattr("drkit.repository.saver._PROCESS_BLOB", 1 << 30)  # every batch to the workers
        monkeypatch.setattr("drkit.repository.saver.MIN_BATCHES", 1)
    sources = [FilesSource("bad", FilesSource.Options(paths=[str(bad)])),
               FilesSource("good", FilesSource.Options(paths=[str(good)]))]
    with pytest.raises(PartialFailure) as failed:
        run_backup(repo, sources, BackupOptions(env={"DRKIT_BACKUP_PROCESSES": processes}))
    assert failed.value.exit_code == 7
    run = failed.value.outcome
    by_name = {o.source: o for o in run.outcomes}
    error = by_name["bad"].error
    assert isinstance(error, sealprocs.SealError) and "does not decode to its data" in error.message
    assert error.hint and "memory" in error.hint
    assert by_name["good"].error is None and by_name["good"].snapshot is not None
    repo.load_index()
    assert [s.source for s in repo.list_snapshots()] == ["good"]
