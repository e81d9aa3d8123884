"""Worker processes that seal the small blobs of a backup side by side.

Why: a first backup of many small files is bound by per-blob Python work under one
interpreter lock: the threads that hash, compress, encrypt and verify small blobs hold
it between short C calls, so the thread reading the files waits for it after every
``open`` and ``read`` (100,000 files: most of that thread's samples are in those two
calls). :class:`SealWorkers` moves the batches of small blobs to worker processes
(:mod:`drkit.workerprocs`): each worker hashes, compresses, seals and verifies every
blob of a batch exactly as :meth:`~drkit.repository.blob.BlobCodec.encode` does in a
thread, and returns the chunk ids and sealed bytes. Once they run, the workers also
read the small files themselves (:meth:`~drkit.repository.saver.BlobSaver.submit_file`,
with :func:`~drkit.smallread.read_whole`, as the main thread would): the walking thread
no longer opens and reads each one, and the data is not copied to the worker. The new
small files of a first backup go to them a run at a time
(:meth:`~drkit.repository.saver.BlobSaver.submit_files`); in a version-3 repository a
run's chunks are sealed in groups (:meth:`SealWorkers.seal_groups`, docs/format.md
"Grouped small files"): one compression, encryption and verification for the run
instead of one per file.
Deduplication, packing, uploads and the index stay in the main process, unchanged: a
worker writes nothing.

A worker gets the data and id keys over its socket pair; in recipient mode also the
blob key of the main process's session, so that every blob of a backup is sealed in
that one session (see :meth:`~drkit.repository.crypto.RecipientCipher.session_secret`).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Mapping

from drkit.errors import EXIT_PARTIAL, DrkitError
from drkit.repository.crypto import Cipher, RecipientCipher
from drkit.workerprocs import WorkerGone, WorkerPool, serve

if TYPE_CHECKING:
    from drkit.repository.repo import Repository

MIN_BATCHES = 64
"""Batches of small blobs (about 4,000 blobs) a backup seals in its threads before it
starts the workers: a source with fewer small files, or a backup that changed fewer
(1,000 of 100,000 files: 1.45 s without workers, 1.70 s when starting two), never
starts them (each costs about 0.15 s of CPU and 34 MiB)."""

MIN_NEW_BATCHES = 8
""":data:`MIN_BATCHES` once the backup says the rest of a source is new files (a first
backup: :meth:`~drkit.repository.saver.BlobSaver.expect_new_files`): sealing the first
4,000 of them in threads, beside the walk, cost more than starting the workers. A first
backup of 17,000 small files on 2 cores, eight alternating pairs: 2.18 -> 1.94 s
(median; faster in seven pairs); of 536 files: 0.79 -> 0.74 s, 0.81 -> 0.83 s of CPU."""


GROUP_MAX_BYTES = 1024 * 1024
"""The largest group plaintext a worker seals (format v3; never above the chunker
maximum, the bound a reader decompresses a group to): a run of small files is one
group or a few."""
GROUP_HEAD = 4
"""Bytes of a group's header before its rows (the member count)."""

DEPTH = 2
"""Batches each worker is given at once: it starts on the next as soon as it has sent
an answer, instead of waiting for a thread of the main process (which shares the
interpreter lock with the walk) to read it and send more. A first backup of 100,000
small files on 2 cores, five alternating pairs: 0.14-0.36 s (3-8%) faster than with
one in each pair (3.61-4.18 s against 3.75-4.38 s)."""


class BackupWorkerDied(DrkitError):
    """a backup worker process ended unexpectedly ({how})"""

    exit_code = EXIT_PARTIAL
    default_hint = ("run the backup again (what was stored is reused); if it happens again, look in dmesg "
                    "(out of memory?), or seal in one process: DRKIT_BACKUP_PROCESSES=0")


class SealError(DrkitError):
    """{message}"""

    exit_code = EXIT_PARTIAL
    default_hint = ("a blob did not decode back to its data right after it was sealed, so it was not stored: the "
                    "machine's memory or CPU may be faulty (run memtester or memtest86+), or drkit has a bug; the "
                    "source's last good snapshot is unchanged, run the backup again")


def seal_worker_count(env: Mapping[str, str]) -> int:
    """How many worker processes a backup may use for small files (into any storage,
    passphrase or recipient mode): ``DRKIT_BACKUP_PROCESSES`` (0 turns them off), by
    default two (none on one processor). Each holds about 25 MiB and the whole backup
    stays under 200 MiB: a first backup of 100,000 small files on 2 cores took 3.9-4.1 s
    with two workers against 5.1-5.3 s with one (161-165 MiB); into SFTP 4.3-4.4 s
    against 5.8-6.0 s (175 MiB, with two packs in flight and the SSH client beside
    them)."""
    raw = env.get("DRKIT_BACKUP_PROCESSES", "").strip()
    if raw.isdigit():
        return int(raw)
    return 0 if (os.cpu_count() or 1) < 2 else 2


class SealWorkers:
    """*count* workers sealing batches of blobs for *repo*. Thread-safe."""

    def __init__(self, repo: "Repository", count: int) -> None:
        """Raises OSError when a worker cannot be started (none is left running)."""
        cipher = repo.codec.cipher
        # Recipient mode: the workers seal in this process's session (its key over their
        # socket pairs), so a backup is one session whatever process sealed a blob.
        session = (cipher.recipient, *cipher.session_secret()) if isinstance(cipher, RecipientCipher) else None
        setup = (repo.master.data_key, repo.master.id_key, repo.codec.level, repo.codec.max_size, session)
        self.pool = WorkerPool(__name__, count, lambda: (setup, ""), depth=DEPTH)

    def seal(self, blobs: Any) -> Any:
        """For each (blob type, data) of *blobs*, in order, (chunk id, sealed bytes,
        size), sealed and verified as :meth:`BlobCodec.encode` does. An item may name a
        small file to read whole instead of data: (blob type, path, size lstat gave,
        largest size read whole; see :func:`~drkit.smallread.read_whole`); when it makes
        no blob, its answer is (None, :data:`~drkit.smallread.EMPTY` or ``GROWN``, None), or (None,
        strerror, errno) when the read failed. (*blobs* may also be the request of
        :meth:`seal_groups`.) Raises SealError when a blob does not verify,
        BackupWorkerDied."""
        worker = self.pool.take()
        try:
            ok, payload = self.pool.ask(worker, blobs)
        except WorkerGone as gone:
            raise BackupWorkerDied(how=str(gone)) from None
        finally:
            self.pool.give(worker)
        if not ok:
            raise SealError(payload)
        return payload

    def seal_groups(self, files: list[tuple[bytes, int, int]]) -> tuple[list[tuple[Any, Any, Any]], list[tuple[bytes, list[int]]]]:
        """Read the small *files* (path, size lstat gave, largest size read whole) and
        seal their chunks in groups (format v3, :meth:`BlobCodec.encode_group`, each
        verified): (for each file, in order, (chunk id, size, None) or, when it makes
        no blob, (None, why, errno) as :meth:`seal` says; the groups, each (sealed
        bytes, the numbers of the files it holds)). A chunk seen earlier in *files* is
        not put in a group twice. Raises SealError, BackupWorkerDied."""
        return self.seal(("groups", files))  # type: ignore[no-any-return]

    def kill(self) -> None:
        self.pool.kill()

    def close(self) -> None:
        self.pool.close()


def _start(setup: Any, fds: list[int]) -> Callable[[Any], Any]:
    from drkit.repository.blob import GROUP_ROW_SIZE, BlobCodec, BlobError
    from drkit.repository.crypto import ChunkHasher
    from drkit.smallread import read_blob

    data_key, id_key, level, max_size, session = setup
    cipher = Cipher(data_key) if session is None else RecipientCipher.in_session(*session)
    codec = BlobCodec(cipher, ChunkHasher(id_key), level, max_size=max_size)
    hasher = codec.hasher
    group_max = min(GROUP_MAX_BYTES, codec.max_size)

    def read(file: Any) -> Any:
        """The content of *file* (path, size lstat gave, largest size read whole), or
        the answer for a file that makes no blob: (None, why, errno or None)."""
        try:
            data = read_blob(*file)
        except OSError as exc:
            return None, exc.strerror or str(exc), exc.errno or 0
        return (None, data, None) if isinstance(data, str) else data  # (EMPTY or GROWN)

    def groups(files: list[tuple[bytes, int, int]]) -> tuple[bool, Any]:
        out: list[tuple[Any, Any, Any]] = []
        made: list[tuple[bytes, list[int]]] = []
        members: list[tuple[bytes, bytes]] = []
        numbers: list[int] = []
        size = GROUP_HEAD
        seen: set[bytes] = set()
        try:
            for no, file in enumerate(files):
                data = read(file)
                if type(data) is tuple:  # no blob
                    out.append(data)
                    continue
                chunk_id = hasher(data)
                out.append((chunk_id, len(data), None))
                if chunk_id in seen:
                    continue
                seen.add(chunk_id)
                if members and size + GROUP_ROW_SIZE + len(data) > group_max:
                    made.append((codec.encode_group(members), numbers))
                    members, numbers, size = [], [], GROUP_HEAD
                members.append((chunk_id, data))
                numbers.append(no)
                size += GROUP_ROW_SIZE + len(data)
            if members:
                made.append((codec.encode_group(members), numbers))
        except BlobError as exc:
            return False, str(exc)
        return True, (out, made)

    def answer(blobs: Any) -> tuple[bool, Any]:
        if type(blobs) is tuple:  # ("groups", files)
            return groups(blobs[1])
        out: list[tuple[Any, Any, Any]] = []
        try:
            for blob_type, *what in blobs:
                data = what[0] if len(what) == 1 else read(what)  # (or a file to read)
                if type(data) is tuple:  # no blob
                    out.append(data)
                    continue
                chunk_id = hasher(data)
                out.append((chunk_id, codec.encode(blob_type, chunk_id, data), len(data)))
        except BlobError as exc:
            return False, str(exc)
        return True, out

    return answer


if __name__ == "__main__":
    sys.exit(serve(sys.argv, _start))
