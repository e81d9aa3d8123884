"""Worker processes that write the small files of a restore side by side.

Why: restoring many small files is bound by per-file Python work under one
interpreter lock (100,000 files on tmpfs: the process's CPU time equals its wall
time; four threads gain nothing). Whole small files are independent of each other,
so :class:`FileWorkers` hands the tasks made only of them (one pack range; every file
one chunk, under 64 KiB) to worker processes, while the main process goes on
planning, makes directories and writes everything else.

A worker does for its task exactly what a thread would: the same reads
(:func:`~drkit.services.packranges.fetch_ranges`), the same checks (each blob
authenticated and compared with its keyed id), the same
:meth:`~drkit.services.restorefs.TargetTree.write_file` with its promises: nothing
outside the target; only complete files under real names; on any error the
temporary is removed. From a local repository it reads the pack ranges itself (it is
given the repository directory); from S3 or SFTP the thread that hands it the task
reads them first, over the main process's connection, and sends the sealed bytes
with the task (a worker never connects anywhere). It is given the keys that open
blobs (over its socket pair, never on its command line or in its environment: in
recipient mode the identity too) and the target as the directory fd the main
process opened (never looked up again by name). It answers with the bytes it wrote
and each file it did not write: failed (why) or refused (why); an OSError ends its task
and is raised in the main process as the same error.

A worker that dies (killed, out of memory) fails the restore with
:class:`RestoreWorkerDied`; the temporaries it may have left (named with a prefix
the main process chose for it) are removed from the directories of its task, and in a
staged restore (where it writes straight to real names, see
:meth:`~drkit.services.restorefs.TargetTree.staged`) every file of its task. A
worker ignores Ctrl-C and SIGTERM: the main process decides. It kills the workers at
once (each task that waited for one removes what it may have left, as above) and
stops as it does with threads.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, cast

from drkit.errors import EXIT_PARTIAL, DrkitError, Refused
from drkit.repository.crypto import Cipher, RecipientCipher
from drkit.services.packranges import BlobUse, read_ranges, split_ranges
from drkit.services.restorefs import TMP_PREFIX, TargetTree
from drkit.storage.observe import local_root
from drkit.workerprocs import WorkerGone, WorkerPool, serve

if TYPE_CHECKING:
    from drkit.repository.repo import Repository

log = logging.getLogger("drkit.restore")

MIN_FILES = 5000
"""Restores of fewer entries than this stay in one process (starting workers costs
about a quarter of a second of CPU each)."""

DEPTH = 2
"""Tasks each worker is given at once from a local repository: it starts on the next as
soon as it has sent an answer, instead of waiting for a thread of the main process
(which shares the interpreter lock with the planning of the next windows) to read that
answer and send more (see :data:`~drkit.repository.sealprocs.DEPTH`). 200,000 small
files, three alternating pairs: 6.11-6.34 s with one, 5.78-5.90 s with two; three gained
nothing more. From S3 or SFTP, where each task's bytes are read by the main process and
travel with it, one."""

_FAILED, _REFUSED = 1, 2
"""Why a worker did not write a file."""
_UNREAD = object()

TaskOutcome = tuple[int, int, list[tuple[tuple[Any, ...], bool, str]]]
"""What :meth:`FileWorkers.run` answers: (files written, bytes written, [(file
tuple, refused?, why) for every other file])."""


class RestoreWorkerDied(DrkitError):
    """a restore worker process ended unexpectedly ({how})"""

    exit_code = EXIT_PARTIAL
    default_hint = ("run the restore again (finished files stay: add --force to restore into the same target); if it "
                    "happens again, look in dmesg (out of memory?), or restore in one process: DRKIT_RESTORE_PROCESSES=0")


def worker_count(entries: int, env: Mapping[str, str]) -> int:
    """How many worker processes a restore of *entries* entries (from any storage,
    passphrase or recipient mode) uses: none for a small restore; else
    ``DRKIT_RESTORE_PROCESSES`` (0 turns them off), by default two (one on one
    processor): each holds about 32 MiB, and the whole restore stays under 200 MiB."""
    raw = env.get("DRKIT_RESTORE_PROCESSES", "")
    wanted = int(raw) if raw.strip().isdigit() else min(2, os.cpu_count() or 1)
    if wanted <= 0 or entries < MIN_FILES:
        return 0
    return wanted


def _cipher_setup(cipher: Cipher | RecipientCipher) -> tuple[bytes, bytes | None]:
    """What a worker needs to open blobs besides the data key: (recipient, raw identity)
    in recipient mode, else (b"", None)."""
    if isinstance(cipher, Cipher):
        return b"", None
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    identity = None if cipher.identity is None else cipher.identity.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return cipher.recipient, identity


class FileWorkers:
    """*count* worker processes for the whole-small-file tasks of one restore into
    *tree*. Thread-safe: each :meth:`run` takes an idle worker (waiting for one).
    :meth:`close` stops them (idempotent)."""

    def __init__(self, repo: "Repository", tree: TargetTree, count: int) -> None:
        """Start *count* workers (raises OSError when one cannot be started: none is
        left running)."""
        self._tree = tree
        root = local_root(repo.storage)
        self._remote = None if root is not None else repo.storage
        """The storage :meth:`run` reads pack ranges from for the workers (None: a local
        repository, which they read themselves)."""
        setup = (None if root is None else os.path.abspath(root), repo.master.data_key, repo.master.id_key,
                 *_cipher_setup(repo.codec.cipher), repo.codec.level, repo.codec.max_size, tree.as_root, tree.fresh)

        def one() -> tuple[tuple[Any, ...], str]:
            prefix = f"{TMP_PREFIX}{secrets.token_hex(6)}-"  # its temporaries' names
            return (*setup, prefix), prefix

        # From S3 or SFTP a task's bytes travel with it (up to 8 MiB): one at a time each.
        self.pool = WorkerPool(__name__, count, one, pass_fds=(tree.root_fd,), depth=DEPTH if root is not None else 1)

    def run(self, pack_id: str, ordered: list[BlobUse], stop: threading.Event) -> TaskOutcome:
        """Have a worker restore the files of *ordered* (blobs of pack *pack_id*, sorted
        by offset), each target a file tuple (parent, name, mode, uid, gid, mtime_ns,
        logical path) that its blob is written to whole. Returns (files written, bytes
        written, [(file tuple, refused?, why) for every other file]); (0, 0, []),
        doing nothing, when *stop* is set by the time a worker is free. From a remote
        repository the ranges are read here first, before a worker is taken (a pack
        that cannot be read fails the files of the task, as in a worker). Raises OSError
        as the worker met it, RestoreWorkerDied."""
        task = [(u.chunk_id, u.offset, u.length, u.blob_type, u.raw_length, u.targets) for u in ordered]
        fetched = None
        if self._remote is not None:
            if stop.is_set():
                return 0, 0, []
            reads = read_ranges(self._remote, pack_id, ordered)
            if isinstance(reads, str):
                return 0, 0, [(file, False, reads) for u in ordered for file in u.targets]
            fetched = [(len(group), bytes(data)) for group, data in reads]
        worker = self.pool.take()
        try:
            if stop.is_set():
                return 0, 0, []
            try:
                problems, written, warnings, error = self.pool.ask(worker, (pack_id, task, fetched))
            except WorkerGone as gone:
                self._clean_after(worker.tag, ordered)
                raise RestoreWorkerDied(how=str(gone)) from None
        finally:
            self.pool.give(worker)
        for line in warnings:
            log.warning("%s", line)
        if error is not None:
            raise OSError(*error)
        count = sum(len(u.targets) for u in ordered)
        if not problems:
            return count, int(written), []
        files = [file for u in ordered for file in u.targets]
        return count - len(problems), int(written), [(files[i], code == _REFUSED, why) for i, code, why in problems]

    def _clean_after(self, tag: str, ordered: list[BlobUse]) -> None:
        """Remove what a worker that died in a task may have left in the directories of
        the task: its temporaries (named with *tag*) and, in a fresh tree (where it
        writes straight to real names), every file of the task, since any may be
        half-written."""
        names: dict[tuple[str, ...], list[str]] = {}
        for u in ordered:
            for file in u.targets:  # (file tuples: see run)
                names.setdefault(file[0], []).append(cast(str, file[1]))
        for parent, in_parent in names.items():
            self._tree.remove_temporaries(parent, tag)
            if self._tree.fresh:
                self._tree.remove_new_files(parent, in_parent)

    def kill(self) -> None:
        """Stop every worker at once (Ctrl-C, an error elsewhere): a :meth:`run` waiting
        for one removes what it may have left in the directories of its task (a
        temporary never has a real name) and raises RestoreWorkerDied."""
        self.pool.kill()

    def close(self) -> None:
        """Tell every worker to stop and wait for it. Idempotent."""
        self.pool.close()


# -- the worker side ----------------------------------------------------------------


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _start(setup: Any, fds: list[int]) -> Callable[[Any], Any]:
    """A worker's set-up: the repository, the keys, the target (its fd); returns the
    function that answers each task (:func:`_run_task`'s outcome and the warnings)."""
    from drkit.repository.blob import BlobCodec
    from drkit.repository.crypto import ChunkHasher
    from drkit.storage.local import LocalStorage

    storage_root, data_key, id_key, recipient, identity, level, max_size, as_root, fresh, prefix = setup
    storage = None if storage_root is None else LocalStorage(storage_root)
    cipher: Cipher | RecipientCipher = Cipher(data_key)
    if recipient:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        cipher = RecipientCipher(recipient, None if identity is None else X25519PrivateKey.from_private_bytes(identity))
    codec = BlobCodec(cipher, ChunkHasher(id_key), level, max_size=max_size)
    tree = TargetTree(Path(f"/proc/self/fd/{fds[0]}"), as_root=as_root, root_fd=fds[0], prefix=prefix, fresh=fresh)
    warnings = _Warnings()
    logging.getLogger("drkit").addHandler(warnings)
    logging.getLogger("drkit").propagate = False

    def answer(request: Any) -> Any:
        warnings.lines = []
        problems, written, error = _run_task(storage, codec, tree, *request)
        return problems, written, warnings.lines, error

    return answer


def _run_task(storage: Any, codec: Any, tree: TargetTree, pack_id: str, task: list[Any],
              fetched: list[tuple[int, bytes]] | None) -> tuple[list[tuple[int, int, str]], int, tuple[Any, ...] | None]:
    """Restore the files of one task (see :meth:`FileWorkers.run`), its ranges read
    from *storage* or given as *fetched* (by :meth:`FileWorkers.run`): (index, code, why)
    of each file not written (numbered over the task in order; every other file was
    written), the bytes written, and the OSError that ended the task (errno, strerror,
    filename) or None."""
    from drkit.repository import layout
    from drkit.repository.blob import BlobError
    from drkit.repository.tree import FILE, Entry

    name = layout.pack_name(pack_id)
    uses = [BlobUse(chunk_id, offset, length, blob_type, raw_length)
            for chunk_id, offset, length, blob_type, raw_length, _ in task]
    problems: list[tuple[int, int, str]] = []
    entry = Entry("", FILE)  # the metadata of the file being written (write_file keeps no reference)
    written = 0
    error: tuple[Any, ...] | None = None
    reads = read_ranges(storage, pack_id, uses) if fetched is None else list(_regroup(uses, fetched))
    if isinstance(reads, str):
        return [(i, _FAILED, reads) for i in range(sum(len(files) for *_, files in task))], 0, None
    sealed_of = {id(u): sealed for group, data in reads for u, sealed in split_ranges(group, data)}
    first = 0
    for u, (*_, files) in zip(uses, task, strict=True):  # every file gets its outcome, in task order
        numbers = range(first, first + len(files))  # its files' numbers over the task
        first += len(files)
        sealed = sealed_of.get(id(u), _UNREAD)
        if error is not None or sealed is _UNREAD:
            problems.extend((k, _FAILED, "not written") for k in numbers)
            continue
        if sealed is None:
            why = f"{name}: pack is truncated (blob {u.chunk_id.hex()[:16]} is cut off)"
            problems.extend((k, _FAILED, why) for k in numbers)
            continue
        try:
            plain = codec.decode_view(u.blob_type, u.chunk_id, sealed, u.raw_length)
        except BlobError as exc:
            problems.extend((k, _FAILED, f"{name}: {exc}") for k in numbers)
            continue
        entry.size = len(plain)
        for k, (parent, file_name, mode, uid, gid, mtime_ns, _path) in enumerate(files, numbers.start):
            if error is not None:
                problems.append((k, _FAILED, "not written"))
                continue
            entry.mode, entry.uid, entry.gid, entry.mtime_ns = mode, uid, gid, mtime_ns
            try:
                tree.write_file(parent, file_name, entry, plain)
            except Refused as exc:
                problems.append((k, _REFUSED, exc.message))
                continue
            except OSError as exc:
                error = (exc.errno, exc.strerror, exc.filename)
                problems.append((k, _FAILED, "not written"))
                continue
            written += len(plain)
    return problems, written, error


def _regroup(uses: list[Any], fetched: list[tuple[int, bytes]]) -> Iterator[tuple[list[Any], memoryview]]:
    """*fetched* (see :meth:`FileWorkers.run`) as :func:`~drkit.services.packranges.fetch_ranges`
    gives it: each read with its blobs."""
    start = 0
    for count, data in fetched:
        yield uses[start : start + count], memoryview(data)
        start += count
    if start != len(uses):
        raise ValueError(f"a task of {len(uses)} blobs came with reads of {start}")


if __name__ == "__main__":
    sys.exit(serve(sys.argv, _start))
