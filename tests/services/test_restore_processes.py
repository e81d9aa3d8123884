"""#18: the small files of a large restore are written by worker processes
(:mod:`drkit.services.restoreprocs`). Everything a restore promises must hold there
too: exact bytes, modes and times at scale; damaged data reported per file; a file
never replaces a directory; a target that cannot be written is one clear error;
Ctrl-C stops it promptly; a worker that dies fails the restore and leaves no
temporary. Workers are real processes here (forced with ``processes=2``)."""

from __future__ import annotations

import _thread
import fcntl
import os
import signal
import stat
import struct
import time
from pathlib import Path
from typing import Any, Collection

import pytest

from drkit.errors import EXIT_PARTIAL, IntegrityError, Refused, RestoreTargetError
from drkit.repository import layout
from drkit.repository.repo import Repository
from drkit.repository.tree import FILE
from drkit import workerprocs
from drkit.services import restoreprocs
from drkit.services.restore import RestoreOptions, SnapshotReader
from drkit.services.restorefs import TMP_PREFIX, is_staging_name
from drkit.services.restoreprocs import FileWorkers, RestoreWorkerDied, worker_count
from drkit.storage import LocalStorage
from tests.cli import invoke
from tests.hostile.snapshots import small_file_tree as _tree, small_pack_repo, write_snapshot


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return small_pack_repo(tmp_path)


@pytest.fixture
def workers_seen(monkeypatch: pytest.MonkeyPatch) -> list[FileWorkers]:
    """Every FileWorkers a restore starts (to check its processes afterwards)."""
    seen: list[FileWorkers] = []
    real = FileWorkers.__init__

    def init(self: FileWorkers, *args: Any, **kwargs: Any) -> None:
        real(self, *args, **kwargs)
        seen.append(self)

    monkeypatch.setattr(FileWorkers, "__init__", init)
    return seen


def _assert_all_exited(seen: list[FileWorkers]) -> None:
    assert seen, "no worker process was started"
    for workers in seen:
        for worker in workers.pool.workers:
            assert worker.proc.poll() is not None, f"worker {worker.proc.pid} still runs"


def _no_temporaries(target: Path) -> list[str]:
    return [str(p) for p in target.rglob(f"{TMP_PREFIX}*")]


def _being_written(target: Path) -> Path:
    """Where a restore into *target* writes now: its staging directory when it has one
    (a restore into a new or empty target), else the target."""
    staging = [p for p in target.iterdir() if is_staging_name(p.name)]
    assert len(staging) <= 1, staging
    return staging[0] if staging else target


def _assert_stopped_cleanly(target: Path, contents: dict[str, bytes], seen: list[FileWorkers]) -> list[Path]:
    """After a restore that stopped early: every file there is complete, no temporary
    is left, every worker exited. Returns the files there."""
    files = list(target.rglob("f*"))
    for p in files:
        assert p.read_bytes() == contents[str(p.relative_to(target))], p  # what is there is complete
    assert _no_temporaries(target) == []
    _assert_all_exited(seen)
    return files


def test_every_file_of_a_20000_file_tree_is_restored_exactly_by_workers(
        repo: Repository, tmp_path: Path, workers_seen: list[FileWorkers]) -> None:
    entries, contents = _tree(20_000)
    snap = write_snapshot(repo, entries, contents)
    target = tmp_path / "t"
    result = SnapshotReader(repo, snap, target=target, processes=2, window_files=1500).write_entries(target)
    assert (result.files, result.dirs, result.failed) == (20_000, 400, [])
    assert result.bytes_written == sum(len(v) for v in contents.values())
    seen = 0
    for e in entries:
        st = os.stat(target / e.path)
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (e.mode if e.type == FILE else 0o750, e.mtime_ns), e.path
        if e.type == FILE:
            assert (target / e.path).read_bytes() == contents[e.path], e.path
            seen += 1
    assert seen == 20_000
    assert _no_temporaries(target) == []
    _assert_all_exited(workers_seen)


def test_a_damaged_blob_fails_only_its_files_and_the_rest_is_restored(repo: Repository, tmp_path: Path) -> None:
    entries, contents = _tree(3000)
    snap = write_snapshot(repo, entries, contents)
    victim = "d0010/f00517"
    loc = repo.index.get(bytes.fromhex(next(e for e in entries if e.path == victim).chunks[0]))
    assert loc is not None
    pack = Path(repo.storage.root) / layout.pack_name(loc.pack)  # type: ignore[attr-defined]
    raw = bytearray(pack.read_bytes())
    raw[loc.offset + loc.length // 2] ^= 0x40
    pack.write_bytes(bytes(raw))
    damaged = {e.path for e in entries if e.type == FILE and e.chunks == [next(x for x in entries if x.path == victim).chunks[0]]}
    target = tmp_path / "t"
    with pytest.raises(IntegrityError) as info:
        SnapshotReader(repo, snap, target=target, processes=2).write_entries(target)
    restored = info.value.outcome
    assert sorted(restored.failed) == sorted(damaged)  # type: ignore[attr-defined]
    assert restored.files == len(contents) - len(damaged)  # type: ignore[attr-defined]
    assert restored.bytes_written == sum(len(d) for p, d in contents.items() if p not in damaged)  # type: ignore[attr-defined]
    for path, data in contents.items():
        if path in damaged:
            assert not (target / path).exists(), path
        else:
            assert (target / path).read_bytes() == data, path
    assert _no_temporaries(target) == []


def test_a_file_never_replaces_a_directory_in_a_worker(repo: Repository, tmp_path: Path) -> None:
    entries, contents = _tree(600)
    snap = write_snapshot(repo, entries, contents)
    target = tmp_path / "t"
    (target / "d0003" / "f00160" / "inside").mkdir(parents=True)
    options = RestoreOptions(target=target, force=True)
    with pytest.raises(Refused, match="refusing to replace directory d0003/f00160 by a file"):
        SnapshotReader(repo, snap, options=options, processes=2).write_entries(target)
    assert (target / "d0003" / "f00160" / "inside").is_dir()
    assert (target / "d0003" / "f00161").read_bytes() == contents["d0003/f00161"]
    assert _no_temporaries(target) == []


def _set_immutable(path: Path, on: bool) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = struct.unpack("i", fcntl.ioctl(fd, 0x80086601, b"\0" * 4))[0]  # FS_IOC_GETFLAGS
        flags = flags | 0x10 if on else flags & ~0x10  # FS_IMMUTABLE_FL
        fcntl.ioctl(fd, 0x40086602, struct.pack("i", flags))  # FS_IOC_SETFLAGS
    finally:
        os.close(fd)


def test_a_target_a_worker_cannot_write_is_one_clear_error(repo: Repository, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            workers_seen: list[FileWorkers]) -> None:
    """A directory made immutable under the restore: creating files in it fails even
    for root (EPERM), inside the worker; the main process raises it as the target's error.
    (Into a target that is not empty: a staged restore could not move the immutable
    directory into place either, see test_restore_staging.py.)"""
    entries, contents = _tree(1000)
    snap = write_snapshot(repo, entries, contents)
    target = tmp_path / "t"
    target.mkdir()
    (target / "kept").write_bytes(b"there before")
    locked: list[Path] = []
    real_run = FileWorkers.run

    def run(self: FileWorkers, pack_name: str, ordered: list[Any], stop: Any) -> int:
        if not locked:
            d = _being_written(target) / ordered[0].targets[0][0][0]
            try:
                _set_immutable(d, True)
            except OSError as exc:
                pytest.skip(f"cannot make a directory immutable here: {exc}")
            locked.append(d)
        return real_run(self, pack_name, ordered, stop)

    monkeypatch.setattr(FileWorkers, "run", run)
    try:
        with pytest.raises(RestoreTargetError) as info:
            SnapshotReader(repo, snap, options=RestoreOptions(target=target, force=True), processes=2).write_entries(target)
    finally:
        for d in locked:
            _set_immutable(d, False)
    assert "Operation not permitted" in info.value.message and info.value.hint and "may write" in info.value.hint
    _assert_stopped_cleanly(target, contents, workers_seen)


def test_ctrl_c_stops_a_restore_with_workers_promptly_leaving_only_complete_files(
        repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers_seen: list[FileWorkers]) -> None:
    entries, contents = _tree(6000)
    snap = write_snapshot(repo, entries, contents)
    target = tmp_path / "t"
    calls = {"n": 0, "at": 0.0}
    real_run = FileWorkers.run

    def run(self: FileWorkers, pack_name: str, ordered: list[Any], stop: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 8:  # (with four threads: at least four tasks finished)
            calls["at"] = time.monotonic()
            _thread.interrupt_main()
        return real_run(self, pack_name, ordered, stop)

    monkeypatch.setattr(FileWorkers, "run", run)
    with pytest.raises(KeyboardInterrupt):
        SnapshotReader(repo, snap, target=target, processes=2, window_files=500).write_entries(target)
    stopped = time.monotonic() - calls["at"]
    assert stopped < 1.0, f"took {stopped:.2f}s to stop after Ctrl-C"
    files = _assert_stopped_cleanly(target, contents, workers_seen)
    assert 0 < len(files) < len(contents) - len(contents) // 4, "the restore ran to the end"


@pytest.mark.parametrize("staged", [True, False], ids=["new-target", "forced-into-a-full-one"])
def test_a_worker_that_dies_fails_the_restore_and_leaves_nothing_half_written(
        repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers_seen: list[FileWorkers],
        staged: bool) -> None:
    """The worker of the first task dies having left a temporary, and (in a staged
    restore, where it writes straight to real names) a half-written file under the
    real name of a file of its task: neither is left in the target."""
    entries, contents = _tree(3000)
    snap = write_snapshot(repo, entries, contents)
    target = tmp_path / "t"
    if not staged:
        target.mkdir()
        (target / "kept").write_bytes(b"there before")
    left: list[Path] = []
    real_run = FileWorkers.run

    def run(self: FileWorkers, pack_name: str, ordered: list[Any], stop: Any) -> int:
        if not left:  # the first task: its worker dies, having left what it was writing
            worker = self.pool._idle.queue[0]
            parent, name = ordered[0].targets[0][:2]
            d = _being_written(target).joinpath(*parent)
            left.append(d / f"{worker.tag}1")
            left[0].write_bytes(b"half")
            if staged:
                left.append(d / name)
                left[1].write_bytes(b"half")
            os.kill(worker.proc.pid, signal.SIGKILL)
            worker.proc.wait()
        return real_run(self, pack_name, ordered, stop)

    monkeypatch.setattr(FileWorkers, "run", run)
    options = RestoreOptions(target=target, force=not staged)
    with pytest.raises(RestoreWorkerDied, match="killed by signal 9"):  # (one thread, one worker: in order)
        SnapshotReader(repo, snap, options=options, processes=1, workers=1).write_entries(target)
    assert len(left) == (2 if staged else 1)
    for path in left:
        assert not target.joinpath(path.relative_to(_being_written(target))).exists(), path
    assert [p.name for p in target.iterdir() if p.name.startswith(TMP_PREFIX)] == []
    _assert_stopped_cleanly(target, contents, workers_seen)
    if not staged:
        assert (target / "kept").read_bytes() == b"there before"


def test_workers_for_large_restores_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """From any storage, in either key mode (see the SFTP and recipient-mode tests below)."""
    env: dict[str, str] = {}
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    big = restoreprocs.MIN_FILES
    assert worker_count(big, env) == 2  # two (each holds about 32 MiB)
    assert worker_count(big - 1, env) == 0  # a small restore stays in one process
    assert worker_count(big, {"DRKIT_RESTORE_PROCESSES": "0"}) == 0
    assert worker_count(big, {"DRKIT_RESTORE_PROCESSES": "2"}) == 2
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert worker_count(big, env) == 1


def _cli_workspace(tmp_path: Path, count: int) -> tuple[Path, dict[str, bytes], Repository]:
    """A config and a repository holding a snapshot of *count* small files (source "data")."""
    cfg = tmp_path / "drkit.yaml"
    cfg.write_text(f"repository:\n  url: {tmp_path / 'repo'}\nsources:\n  - name: data\n    type: files\n"
                   f"    paths: [{tmp_path / 'data'}]\n")
    cfg.chmod(0o600)
    storage = LocalStorage(str(tmp_path / "repo"))
    Repository.init(storage, "pw")
    repo = Repository.open(storage, "pw")
    entries, contents = _tree(count)
    write_snapshot(repo, entries, contents)
    return cfg, contents, repo


def test_a_cli_restore_of_many_files_uses_workers_and_is_exact(tmp_path: Path, workers_seen: list[FileWorkers]) -> None:
    cfg, contents, _ = _cli_workspace(tmp_path, restoreprocs.MIN_FILES)
    target = tmp_path / "t"
    r = invoke("-c", cfg, "restore", "latest", "-s", "data", "--target", target,
               env={"DRKIT_PASSWORD": "pw", "DRKIT_RESTORE_PROCESSES": "2"})
    assert r.code == 0, r.text
    assert len(workers_seen) == 1 and len(workers_seen[0].pool.workers) == 2
    for path, data in contents.items():
        assert (target / path).read_bytes() == data, path
    _assert_all_exited(workers_seen)
    r = invoke("-c", cfg, "restore", "latest", "-s", "data", "--target", tmp_path / "t2",
               env={"DRKIT_PASSWORD": "pw", "DRKIT_RESTORE_PROCESSES": "0"})
    assert r.code == 0 and len(workers_seen) == 1  # turned off: no worker started


def test_a_worker_that_dies_is_one_line_and_exit_7_in_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, _, _ = _cli_workspace(tmp_path, restoreprocs.MIN_FILES)
    real_run = FileWorkers.run

    def run(self: FileWorkers, pack_name: str, ordered: list[Any], stop: Any) -> int:
        for worker in self.pool.workers:
            worker.proc.kill()
            worker.proc.wait()
        return real_run(self, pack_name, ordered, stop)

    monkeypatch.setattr(FileWorkers, "run", run)
    r = invoke("-c", cfg, "restore", "latest", "-s", "data", "--target", tmp_path / "t",
               env={"DRKIT_PASSWORD": "pw", "DRKIT_RESTORE_PROCESSES": "1"})
    assert r.code == EXIT_PARTIAL, r.text
    lines = r.err.strip().splitlines()
    assert lines[0].startswith("error: a restore worker process ended unexpectedly (pid ") and "killed by signal 9" in lines[0]
    assert lines[1].startswith("hint: run the restore again") and "DRKIT_RESTORE_PROCESSES=0" in lines[1]
    assert "Traceback" not in r.err
    assert _no_temporaries(tmp_path / "t") == []


def test_workers_that_cannot_start_leave_the_restore_to_this_process(
        repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Out of processes (EAGAIN) or memory: the restore goes on in one process, says so,
    and leaves no worker behind."""
    entries, contents = _tree(600)
    snap = write_snapshot(repo, entries, contents)
    started: list[Any] = []
    real_popen = workerprocs.subprocess.Popen

    def popen(*args: Any, **kwargs: Any) -> Any:
        if started:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(workerprocs.subprocess, "Popen", popen)
    target = tmp_path / "t"
    result = SnapshotReader(repo, snap, target=target, processes=2).write_entries(target)
    assert (result.files, result.failed) == (600, [])
    assert (target / "d0003" / "f00161").read_bytes() == contents["d0003/f00161"]
    assert "cannot start restore worker processes (Resource temporarily unavailable)" in caplog.text
    assert started and started[0].poll() is not None  # the one that started was stopped


# -- from S3/SFTP and in recipient mode: the ranges are read in this process -------------


def _random_tree(count: int) -> tuple[list[Any], dict[str, bytes]]:
    """*count* small files of incompressible content (4-12 KiB): several 1 MiB packs."""
    entries, _ = _tree(count)
    contents = {e.path: os.urandom(4096 + (i * 811) % 8192) for i, e in enumerate(entries) if e.type == FILE}
    return entries, contents


def _assert_exact(target: Path, entries: list[Any], contents: dict[str, bytes], failed: Collection[str] = ()) -> None:
    """Every file of *entries* restored with its bytes, mode and mtime, except *failed*
    (absent); no temporary left."""
    for e in entries:
        if e.type != FILE:
            continue
        p = target / e.path
        if e.path in failed:
            assert not p.exists(), e.path
        else:
            assert p.read_bytes() == contents[e.path], e.path
            st = p.stat()
            assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (e.mode, e.mtime_ns), e.path
    assert _no_temporaries(target) == []


def _sftp_repo(sshd: Any, tmp_path: Path) -> Repository:
    from drkit.storage.sftp import SftpStorage
    from tests.storage.conftest import sftp_options

    storage = SftpStorage(sshd.url(f"~/restore-{tmp_path.name}"), sftp_options(sshd))
    Repository.init(storage, "pw", pack_size=1024 * 1024)
    return Repository.open(storage, "pw")


def test_a_restore_from_sftp_is_written_by_workers_the_main_process_reads_for(
        sshd: Any, tmp_path: Path, workers_seen: list[FileWorkers], monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers never connect anywhere: each task's ranges are read over this
    process's SFTP connection and sent with it; the files come out exact."""
    repo = _sftp_repo(sshd, tmp_path)
    entries, contents = _random_tree(1500)
    snap = write_snapshot(repo, entries, contents)
    handed: list[int] = []
    real_run = FileWorkers.run

    def run(self: FileWorkers, pack_id: str, ordered: list[Any], stop: Any) -> int:
        handed.append(len(ordered))
        return real_run(self, pack_id, ordered, stop)

    monkeypatch.setattr(FileWorkers, "run", run)
    target = tmp_path / "t"
    result = SnapshotReader(repo, snap, target=target, processes=2, window_files=400).write_entries(target)
    assert (result.files, result.failed) == (1500, [])
    assert workers_seen[0]._remote is repo.storage  # read here, not by the workers
    assert len(handed) >= 4 and sum(handed) == len({c for e in entries if e.type == FILE for c in e.chunks})
    _assert_exact(target, entries, contents)
    _assert_all_exited(workers_seen)


def test_a_pack_missing_from_sftp_fails_only_its_files_in_workers(sshd: Any, tmp_path: Path,
                                                                  workers_seen: list[FileWorkers]) -> None:
    repo = _sftp_repo(sshd, tmp_path)
    entries, contents = _random_tree(600)
    snap = write_snapshot(repo, entries, contents)
    pack_of = {e.path: repo.index.get(bytes.fromhex(e.chunks[0])).pack for e in entries if e.type == FILE}  # type: ignore[union-attr]
    assert len(set(pack_of.values())) >= 3
    victim = pack_of["d0005/f00260"]
    repo.storage.delete(layout.pack_name(victim))
    lost = {path for path, pack in pack_of.items() if pack == victim}
    target = tmp_path / "t"
    with pytest.raises(IntegrityError) as info:
        SnapshotReader(repo, snap, target=target, processes=2, window_files=100).write_entries(target)
    assert set(info.value.outcome.failed) == lost  # type: ignore[attr-defined]
    _assert_exact(target, entries, contents, failed=lost)
    _assert_all_exited(workers_seen)


def test_a_recipient_mode_restore_is_written_by_workers_with_the_identity(tmp_path: Path,
                                                                          workers_seen: list[FileWorkers]) -> None:
    from drkit.repository.crypto import RecipientCipher
    from drkit.repository.identity import generate_identity

    identity = generate_identity()
    storage = LocalStorage(str(tmp_path / "repo"))
    Repository.init(storage, "pw", pack_size=1024 * 1024, recipient=identity.public)
    entries, contents = _random_tree(800)
    snap = write_snapshot(Repository.open(storage, "pw"), entries, contents)  # the backup host: no identity
    repo = Repository.open(storage, None, identity=identity)
    repo.load_index()
    assert isinstance(repo.codec.cipher, RecipientCipher)
    target = tmp_path / "t"
    result = SnapshotReader(repo, snap, target=target, processes=2, window_files=200).write_entries(target)
    assert (result.files, result.failed) == (800, [])
    assert workers_seen and workers_seen[0]._remote is None
    _assert_exact(target, entries, contents)
    _assert_all_exited(workers_seen)


def test_without_workers_the_reads_of_small_file_tasks_run_side_by_side(repo: Repository, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """In one process, tasks of small files write one at a time (the file lane), but
    their reads (from S3 or SFTP: waiting on the network) do not wait for that: two
    tasks' reads meet here, or the barrier breaks after 10 s and the restore fails."""
    import threading

    entries, contents = _tree(600)
    snap = write_snapshot(repo, entries, contents)
    inner = repo.storage
    meet = threading.Barrier(2, timeout=10)
    waited: list[str] = []
    lock = threading.Lock()

    class Remote:  # not a local directory, as S3 and SFTP
        def __getattr__(self, name: str) -> Any:
            return getattr(inner, name)

        def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
            if threading.current_thread().name.startswith("drkit-restore"):
                with lock:
                    first_two = len(waited) < 2
                    waited.append(name)
                if first_two:
                    meet.wait()
            return inner.get(name, offset, length)

    monkeypatch.setattr(repo, "storage", Remote())
    target = tmp_path / "t"
    result = SnapshotReader(repo, snap, target=target, processes=0, window_files=100).write_entries(target)
    assert (result.files, result.failed) == (600, [])
    assert len(waited) >= 2 and not meet.broken
    for path, data in contents.items():
        assert (target / path).read_bytes() == data, path


def test_a_worker_answers_for_every_file_of_its_task(repo: Repository, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker names every file it did not write (the main process counts the rest as
    written): a blob that its reads did not bring fails its files, in task order."""
    from drkit.repository.blob import BlobCodec
    from drkit.repository.crypto import ChunkHasher
    from drkit.services.packranges import BlobUse
    from drkit.services.restorefs import TargetTree

    entries, contents = _tree(40)
    write_snapshot(repo, entries, contents)
    files = list({e.chunks[0]: e for e in entries if e.type == FILE and e.chunks}.values())  # one file per blob
    by_pack: dict[str, list[Any]] = {}
    for e in files:
        loc = repo.index.get(bytes.fromhex(e.chunks[0]))
        assert loc is not None
        parts = tuple(e.path.split("/"))
        by_pack.setdefault(loc.pack, []).append((loc.offset, bytes.fromhex(e.chunks[0]), loc, parts, e))
    pack_id, blobs = max(by_pack.items(), key=lambda kv: len(kv[1]))
    blobs.sort(key=lambda b: b[0])
    task = [(cid, loc.offset, loc.length, loc.blob_type, loc.raw_length,
             [(parts[:-1], parts[-1], e.mode, e.uid, e.gid, e.mtime_ns, e.path)]) for _, cid, loc, parts, e in blobs]
    lost = task[1][0]
    real_split = restoreprocs.split_ranges

    def split_losing_one(group: list[BlobUse], data: Any) -> Any:
        return [(u, sealed) for u, sealed in real_split(group, data) if u.chunk_id != lost]

    monkeypatch.setattr(restoreprocs, "split_ranges", split_losing_one)
    target = tmp_path / "t"
    target.mkdir()
    tree = TargetTree(target)
    try:
        codec = BlobCodec(repo.codec.cipher, ChunkHasher(repo.master.id_key), repo.codec.level)
        problems, written, error = restoreprocs._run_task(repo.storage, codec, tree, pack_id, task, None)
    finally:
        tree.close()
    assert error is None
    assert problems == [(1, 1, "not written")]  # (its number over the task, failed)
    assert written == sum(len(contents[b[4].path]) for i, b in enumerate(blobs) if i != 1)
    for i, (_, _, _, _, e) in enumerate(blobs):
        assert (target / e.path).exists() == (i != 1), e.path
