"""Saving blobs: deduplicate, seal in worker threads, pack, upload, index.

Order of durable writes, which is what makes crashes harmless:

1. packs are uploaded (atomically) as they fill;
2. after every ``index_every_packs`` uploaded packs, and at the end, an index file
   listing them is written — so an interrupted backup's data is found and reused by
   the next run;
3. only then does the caller write the snapshot manifest.

A pack not yet listed by any index file is invisible; ``drkit prune`` removes such
orphans and ``drkit rebuild-index`` adopts them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from drkit.repository import layout
from drkit.repository.blob import BLOB_DATA, BlobError
from drkit.repository.index import MAX_BLOB_OVERHEAD, MAX_BLOB_RAW
from drkit.repository.pack import PackBuilder, PackEntry, anonymous_buffer
from drkit.repository.sealprocs import DEPTH, MIN_BATCHES, MIN_NEW_BATCHES, SealError, SealWorkers
from drkit.smallread import read_blob

if TYPE_CHECKING:  # repo.py imports this module
    from drkit.repository.repo import Repository

log = logging.getLogger("drkit.backup")

Buffer = bytes | memoryview
_MMAP_THRESHOLD = 16 * 1024 * 1024
_RSS_SOFT_LIMIT = 176 * 1024 * 1024
"""Above this resident size, free heap pages are returned to the OS after each pack."""


class _Allocator:
    """Keeps glibc's heap from hoarding the megabyte-sized buffers a backup churns
    through (read blocks, compressed and sealed chunks, packs): freed memory spread
    over one arena per thread otherwise stays resident, and peak RSS creeps up with
    the amount of data. Caps the arenas at two and gives free pages back after each
    stored pack. A no-op on other C libraries."""

    _libc: ctypes.CDLL | None = None
    _ready = False

    @classmethod
    def setup(cls) -> None:
        if cls._ready:
            return
        cls._ready = True
        if not sys.platform.startswith("linux"):
            return
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.mallopt(-8, 2)  # M_ARENA_MAX
            # Fixed where glibc's dynamic thresholds end up after the first freed 16 MiB
            # block (packs were such blocks; they now live in their own maps): chunks and
            # their sealed copies (at most 8 MiB) come from the heap and are reused, not
            # mapped and faulted in afresh each time the threshold is raised a bit.
            libc.mallopt(-3, _MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
            libc.mallopt(-1, 2 * _MMAP_THRESHOLD)  # M_TRIM_THRESHOLD
            libc.malloc_trim.argtypes = [ctypes.c_size_t]
            cls._libc = libc
        except (OSError, AttributeError):
            cls._libc = None

    @classmethod
    def trim(cls, above: int = 0) -> None:
        """Give free heap pages back when resident memory exceeds *above* bytes."""
        if cls._libc is None:
            return
        if above:
            try:
                with open("/proc/self/statm", "rb") as f:
                    resident = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, ValueError, IndexError):
                return
            if resident <= above:
                return
        cls._libc.malloc_trim(0)


@dataclass
class SaverStats:
    blobs_new: int = 0
    blobs_reused: int = 0
    bytes_new_raw: int = 0
    """Plaintext bytes of new blobs (before compression)."""
    bytes_new_sealed: int = 0
    """Sealed (compressed + encrypted) bytes of new blobs."""
    bytes_stored: int = 0
    """Bytes of packs written (what the storage received)."""
    packs: int = 0
    index_files: int = 0


_INDEX_EVERY_BLOBS = 16384
"""An index file is also written once the packs not yet indexed list this many blobs:
with small files 32 packs hold ~300,000 blobs, and their entries are held until then."""
_SERIAL_INFLIGHT_BYTES = 2 * 1024 * 1024
"""Bytes queued for sealing after :meth:`BlobSaver.settle` (the tree's blobs, about a
megabyte each: two keep both workers busy)."""
_FAST_PACK_SECONDS = 0.25
"""A pack filled faster than this keeps its buffer for the next one: faulting in a fresh
16 MiB (a few milliseconds) would cost more than 1% of the time a pack takes."""
_BATCH_BLOBS = 64
"""Small blobs go to the workers in batches of up to this many ..."""
_BATCH_BYTES = 1024 * 1024
"""... or this many bytes: one task per small file costs more in thread hand-offs than
sealing a 4 KiB blob does."""
_PROCESS_BLOB = 64 * 1024
"""Batches whose blobs average less than this (small files) go to the worker
processes; larger blobs (chunks of large files) are sealed in threads, whose C calls
then run long without the interpreter lock, and would only be copied to and fro."""
RUN_FILE_MAX = _PROCESS_BLOB - 1
"""The largest file :meth:`BlobSaver.submit_files` takes (larger ones go through
:meth:`BlobSaver.submit_file`, sealed in threads)."""


def _why_no_blob(why: str, errno: int | None) -> OSError | str:
    """A worker's answer for a file it made no blob of (see :meth:`SealWorkers.seal`):
    the OSError of its read (*why* its strerror), or EMPTY or GROWN."""
    return OSError(errno, why) if isinstance(errno, int) else why


def _read_file(ticket: BlobTicket) -> bytes | None:
    """The content of a file ticket's file, ``raw_length`` set; None (``problem`` set)
    when there is no blob to make of it."""
    assert ticket.file is not None
    path, expected, limit = ticket.file
    try:
        data = read_blob(path, expected, limit)
    except OSError as exc:
        ticket.problem = exc
        return None
    if isinstance(data, str):
        ticket.problem = data
        return None
    ticket.raw_length = len(data)
    return data


class _PackBuffers:
    """The anonymous maps packs are built in, reused from pack to pack when packs are
    stored about as fast as they fill (no page faulted in again for each pack). At most
    one waits idle; :meth:`close` gives the idle ones back to the system. Safe to use
    from several threads."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._idle: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self) -> mmap.mmap:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return anonymous_buffer(self.capacity)

    def give(self, buf: mmap.mmap | None, *, keep: bool = True) -> None:
        """Take *buf* back: kept idle for the next pack if *keep* (and none is), else closed."""
        if buf is None:
            return
        with self._lock:
            if keep and not self._idle:
                self._idle.append(buf)
                return
        _close(buf)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for buf in idle:
            _close(buf)


def _close(buf: mmap.mmap) -> None:
    """Unmap *buf* now, or (while a view of it is still referenced, e.g. by the traceback
    of a failed put) once the last view is gone."""
    try:
        buf.close()
    except BufferError:
        pass


class _Batch:
    """Small blobs handed to one worker task; ``future`` completes when all are sealed."""

    __slots__ = ("future", "nbytes", "tickets")

    def __init__(self) -> None:
        self.future: Future[None] = Future()
        self.tickets: list[BlobTicket] = []
        self.nbytes = 0


class FileRun:
    """Small files handed together to a worker process to read whole, hash and seal
    (:meth:`BlobSaver.submit_files`): one task, one future and one claim under the
    saver's lock for up to :data:`_BATCH_BLOBS` files, where :meth:`BlobSaver.submit_file`
    makes a ticket of each.

    Once :meth:`done`, ``outcomes`` holds for each file, in order, (chunk id, bytes
    read, None), or (None, 0, why there is no blob: :data:`~drkit.smallread.EMPTY`,
    ``GROWN`` or the OSError of the read), as a file ticket's ``chunk_id``,
    ``raw_length`` and ``problem`` say. The sealed bytes stay with the saver, which
    packs them (and drops them) in order with the other blobs."""

    __slots__ = ("charged", "files", "future", "groups", "outcomes", "sealed")

    def __init__(self, files: list[tuple[bytes, int, int]]) -> None:
        self.files = files
        """(path, size lstat gave, largest size read whole) of each file."""
        self.charged = sum(expected for _, expected, _ in files)
        self.future: Future[None] | None = Future()
        self.outcomes: list[tuple[bytes | None, int, OSError | str | None]] = []
        self.sealed: list[bytes | None] = []
        """The sealed bytes of each file's blob this session stores (None: the repository
        or this session has it already, or there is none); cleared once packed."""
        self.groups: list[tuple[bytes, list[tuple[bytes, int]]]] | None = None
        """Format v3, instead of ``sealed``: each group this session stores, (sealed
        bytes, (chunk id, size) of each member it lists: those new to the repository);
        cleared once packed."""

    def done(self) -> bool:
        """True once the worker is finished with these files (:meth:`wait` will not wait)."""
        future = self.future  # (read once: a worker thread may clear it meanwhile)
        return future is None or future.done()

    def wait(self) -> None:
        """Wait for the worker; re-raises its error (SealError, BackupWorkerDied...)."""
        future = self.future
        if future is not None:
            future.result()


class BlobTicket:
    """A blob queued with :meth:`BlobSaver.submit`; :meth:`id` waits for its chunk id.

    The worker fills in ``chunk_id`` (and, for a new blob, ``sealed``); the saver's
    thread moves ``sealed`` into a pack and drops it, so a ticket kept until the end
    of a large file holds 32 bytes, not the data."""

    __slots__ = ("blob_type", "charged", "chunk_id", "data", "file", "future", "new", "problem", "raw_length", "sealed",
                 "send")

    def __init__(self, blob_type: int, data: Buffer | None, chunk_id: bytes = b"") -> None:
        self.blob_type = blob_type
        self.data = data
        self.chunk_id = chunk_id
        self.sealed: bytes | None = None
        self.new = False
        self.raw_length = len(data) if data is not None else 0
        self.charged = self.raw_length
        """Bytes counted in flight for this ticket until it is drained."""
        self.file: tuple[bytes, int, int] | None = None
        """For :meth:`BlobSaver.submit_file`: (path, size lstat gave, largest size read whole)."""
        self.problem: OSError | str | None = None
        """Why a file ticket holds no blob: EMPTY, GROWN or the OSError reading it."""
        self.future: Future[None] | None = None
        self.send: Callable[[], None] | None = None
        """Set while the ticket waits in a batch not yet handed to a worker: sends it."""

    def done(self) -> bool:
        """True once the worker has finished with this blob (id() will not wait). A
        ticket of a batch that completed has no future any more."""
        future = self.future  # (read once: a worker thread may clear it meanwhile)
        return future is None or future.done()

    def id(self) -> bytes:
        """The chunk id (waits for the worker; re-raises its error)."""
        future = self.future
        if future is not None:
            if self.send is not None and not future.done():
                self.send()
            future.result()
        return self.chunk_id


class BlobSaver:
    """Stores blobs of one writer session. Not thread-safe: call from one thread.

    Work is split so that the calling thread only cuts and queues: hashing,
    deduplication, compression, encryption and the verification of every sealed blob
    (decrypt + decompress + keyed hash) run in ``workers`` threads; assembling a pack
    (concatenation, SHA-256 name, trailer check) and storing it run in the upload
    threads. Blobs enter packs in submission order, so output is deterministic for a
    given input apart from the random nonces.

    Use as a context manager, or call :meth:`finish` (success) / :meth:`abort`.
    """

    def __init__(
        self,
        repo: Repository,
        *,
        workers: int = 0,
        index_every_packs: int = 32,
        uploads: int = 0,
        max_inflight_bytes: int = 8 * 1024 * 1024,
        on_upload: Callable[[int], None] | None = None,
        processes: int = 0,
    ) -> None:
        """*processes*: worker processes for batches of small blobs (see
        :data:`_PROCESS_BLOB`), started after
        :data:`~drkit.repository.sealprocs.MIN_BATCHES` such batches (``MIN_NEW_BATCHES``
        after :meth:`expect_new_files`; see :mod:`drkit.repository.sealprocs`); 0: threads
        only."""
        _Allocator.setup()
        self.repo = repo
        self.stats = SaverStats()
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        # One thread per batch a worker process may hold (see sealprocs.DEPTH).
        self._pool = ThreadPoolExecutor(max(self.workers, processes * DEPTH), thread_name_prefix="drkit-seal")
        self._batch_slots = threading.BoundedSemaphore(max(1, self.workers - 1))
        """Batches of small blobs sealed at once: one fewer than the workers. A batch is
        mostly Python-level work between short C calls and the thread reading the files
        is busy too; on 2 cores a second batch at once only fought over the GIL (the
        first backup of 100,000 small files took about 5% longer, with 1.5x the system
        time)."""
        if not uploads:
            # A local disk takes a pack in milliseconds: one upload at a time keeps memory
            # low. Remote stores have latency to hide: two packs in flight (measured on
            # S3 and SFTP: a third adds ~35 MiB of client buffers for little speed).
            url = str(getattr(repo.storage, "url", ""))
            uploads = 2 if "://" in url and not url.startswith("file://") else 1
        self._upload_pool = ThreadPoolExecutor(uploads, thread_name_prefix="drkit-upload")
        self._max_inflight = self.workers * 4 * _BATCH_BLOBS
        self._max_inflight_bytes = max_inflight_bytes
        self._inflight_bytes = 0
        self._max_uploads = uploads
        self._sealing: deque[BlobTicket | FileRun] = deque()
        self._sealing_blobs = 0
        """Blobs queued in ``_sealing`` (a :class:`FileRun` counts each of its files)."""
        self._batch: _Batch | None = None
        self._uploading: deque[tuple[Future[tuple[str, int]], list[PackEntry]]] = deque()
        self._pending: set[bytes] = set()
        self._lock = threading.Lock()
        # Address space for a full pack, one blob past it and a trailer of any size
        # (only what is written becomes resident).
        self._buffers = _PackBuffers(2 * self.repo.pack_size + MAX_BLOB_RAW + MAX_BLOB_OVERHEAD)
        self._builder: PackBuilder | None = None
        self._pack_started = 0.0
        self._packs_fill_fast = True
        """Whether the last pack filled within :data:`_FAST_PACK_SECONDS` (read by the upload thread)."""
        self._serial = False
        """Set by :meth:`settle`: each pack is stored before the next one is started."""
        self._unindexed: list[tuple[str, int, list[PackEntry]]] = []
        self._index_every = index_every_packs
        self._on_upload = on_upload
        self._closed = False
        self._processes = processes
        self._sealers: SealWorkers | None = None
        self._small_batches = 0
        self._min_batches = MIN_BATCHES

    # -- public ----------------------------------------------------------------

    def save(self, data: Buffer, blob_type: int = BLOB_DATA) -> tuple[bytes, bool]:
        """Queue *data*; return (chunk id, True if new to the repository).

        Hashes in the calling thread (the id is returned at once); prefer
        :meth:`submit` on hot paths."""
        chunk_id = self.repo.hasher(data)
        with self._lock:
            if chunk_id in self.repo.index or chunk_id in self._pending:
                self.stats.blobs_reused += 1
                return chunk_id, False
            self._pending.add(chunk_id)
        ticket = BlobTicket(blob_type, data, chunk_id)
        ticket.new = True
        self._enqueue(ticket)
        return chunk_id, True

    def submit(self, data: Buffer, blob_type: int = BLOB_DATA) -> BlobTicket:
        """Queue *data* for hashing, deduplication and (if new) sealing in a worker.

        *data* must not change until the ticket's id is known (a memoryview into a
        buffer that is not reused is fine). Returns at once unless too much is in
        flight; the chunk id comes from :meth:`BlobTicket.id`. Small blobs are handed to
        the workers in batches (the chunk id of one still waiting is sent for on demand)."""
        ticket = BlobTicket(blob_type, data)
        if ticket.raw_length >= _BATCH_BYTES:
            self._enqueue(ticket)
            return ticket
        self._batch_up(ticket)
        return ticket

    def _batch_up(self, ticket: BlobTicket) -> None:
        """Add *ticket* to the open batch of small blobs (sent when full)."""
        batch = self._batch
        if batch is None:
            batch = self._batch = _Batch()
        ticket.future = batch.future
        ticket.send = self._send_batch
        batch.tickets.append(ticket)
        batch.nbytes += ticket.charged
        self._track(ticket, 1)
        if len(batch.tickets) >= _BATCH_BLOBS or batch.nbytes >= _BATCH_BYTES:
            self._send_batch()
        self._bound_inflight()

    def submit_file(self, path: bytes, expected: int, limit: int) -> BlobTicket:
        """Queue the content of the small file at *path* (``lstat`` said *expected*
        bytes, 0 < *expected* <= *limit*), read whole by the worker process that hashes
        and seals it (or by a thread: see :func:`~drkit.smallread.read_whole`), so
        that the calling thread does not open and read it. Once the ticket is done,
        ``raw_length`` is what was read, or ``problem`` says why there is no blob:
        :data:`~drkit.smallread.EMPTY` (truncated since), ``GROWN`` (past *limit* since: the caller
        streams it) or the OSError of the read (the caller skips the file with a
        warning, as it would have)."""
        ticket = BlobTicket(BLOB_DATA, None)
        ticket.file = (path, expected, limit)
        ticket.charged = expected
        self._batch_up(ticket)
        return ticket

    def submit_files(self, files: list[tuple[bytes, int, int]]) -> list[FileRun]:
        """Queue small files as :meth:`submit_file` does, each (path, size lstat gave,
        largest size read whole; at most :data:`RUN_FILE_MAX` bytes), in runs
        (:class:`FileRun`) of up to :data:`_BATCH_BLOBS` files or :data:`_BATCH_BYTES`, in
        order; returns the runs. Only while :attr:`reads_files`: raises RuntimeError
        otherwise. Returns at once unless too much is in flight."""
        sealers = self._sealers
        if sealers is None:
            raise RuntimeError("submit_files needs the worker processes (see reads_files)")
        self._send_batch()  # earlier small blobs first: the workers take tasks in order
        runs: list[FileRun] = []
        at, end = 0, len(files)
        while at < end:
            stop, nbytes = at, 0
            while stop < end and stop - at < _BATCH_BLOBS and nbytes < _BATCH_BYTES:
                nbytes += files[stop][1]
                stop += 1
            run = FileRun(files[at:stop])
            at = stop
            runs.append(run)
            self._track(run, len(run.files))
            self._pool.submit(self._work_run, run, sealers)
        self._bound_inflight()
        return runs

    def expect_new_files(self) -> None:
        """Say that what follows is new files (a first backup): the worker processes
        then start after :data:`~drkit.repository.sealprocs.MIN_NEW_BATCHES` batches of
        small blobs instead of ``MIN_BATCHES``. Idempotent."""
        self._min_batches = min(self._min_batches, MIN_NEW_BATCHES)

    @property
    def reads_files(self) -> bool:
        """Whether :meth:`submit_file` hands reads to worker processes (started, and
        worth it); otherwise the caller reads small files itself."""
        return self._sealers is not None

    def known(self, chunk_id: bytes) -> bool:
        """True when the repository has the blob or this session is storing it.

        Without the lock (this runs once per unchanged file): a blob moves from pending
        to the index by being added to the index first and then leaving pending, and
        this looks in the same order, so a race can only answer False for a blob just
        stored (the file is read again, which only costs time), never True wrongly."""
        return chunk_id in self.repo.index or chunk_id in self._pending

    def settle(self, *, flush_above: int = 4 * 1024 * 1024) -> None:
        """Seal everything queued and wait for the uploads in flight; store the open pack
        too when it holds more than *flush_above* bytes. Called between a source's data
        and its tree, so the tree's blobs are not cut and sealed while a full pack and an
        upload are still held: peak memory at the end of a large backup (when the index is
        largest) drops by up to two packs. After it, each pack is stored before the next
        one starts and fewer bytes wait for sealing: the tree's read buffer (16 MiB) then
        replaces the second pack buffer instead of adding to it."""
        if self._closed:
            return
        self._drain(0, 0)
        if self._builder is not None and self._builder.size > flush_above:
            self._flush_pack()
        self._reap_uploads(0)
        self._buffers.close()
        self._serial = True
        self._max_inflight_bytes = min(self._max_inflight_bytes, _SERIAL_INFLIGHT_BYTES)
        _Allocator.trim()

    def finish(self) -> None:
        """Store everything queued: last pack, uploads, final index. Idempotent."""
        if self._closed:
            return
        try:
            self._drain(0, 0)
            if self._builder is not None and len(self._builder):
                self._flush_pack()
            self._reap_uploads(0)
            self._write_index()
        finally:
            self._shutdown()

    def abort(self) -> None:
        """Stop; index the packs already uploaded so a later run reuses them."""
        if self._closed:
            return
        if self._sealers is not None:
            self._sealers.kill()  # nothing more is sealed (a batch in flight fails: its future is dropped)
        self._batch = None  # never handed to a worker
        for ticket in self._sealing:
            future = ticket.future  # (None once its batch is done)
            if future is not None:
                future.cancel()
        self._sealing.clear()
        self._sealing_blobs = 0
        try:
            while self._uploading:
                fut, entries = self._uploading.popleft()
                try:
                    pack_id, size = fut.result()
                except Exception:  # noqa: BLE001 - a failed upload is simply not indexed
                    continue
                self._uploaded(pack_id, size, entries)
            self._write_index()
        finally:
            self._shutdown()

    def __enter__(self) -> "BlobSaver":
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()

    # -- internals -------------------------------------------------------------

    def _send_batch(self) -> None:
        """Hand the open batch of small blobs to a worker (no-op when there is none)."""
        batch, self._batch = self._batch, None
        if batch is None:
            return
        for ticket in batch.tickets:
            ticket.send = None
        sealers = None
        if self._processes and batch.nbytes < _PROCESS_BLOB * len(batch.tickets):  # small files
            self._small_batches += 1
            if self._sealers is None and self._small_batches >= self._min_batches:
                self._start_sealers()
            sealers = self._sealers
        self._pool.submit(self._work_batch, batch, sealers)

    def _start_sealers(self) -> None:
        """Start the worker processes (one warning, and threads only, if they cannot be)."""
        try:
            self._sealers = SealWorkers(self.repo, self._processes)
        except OSError as exc:
            log.warning("cannot start backup worker processes (%s): sealing in this one", exc.strerror or exc)
            self._processes = 0
            return
        # The workers wait on their own: DEPTH batches per worker in flight (the threads
        # only hand them over and wait), instead of one fewer than the threads.
        self._batch_slots = threading.BoundedSemaphore(self._processes * DEPTH)

    def _work_batch(self, batch: _Batch, sealers: SealWorkers | None) -> None:
        """In a worker: :meth:`_work` each blob of *batch* (or have *sealers* seal them
        all), then complete its future (with the first error, if any: the run fails as it
        would for one blob)."""
        try:
            with self._batch_slots:
                if sealers is not None:
                    self._work_in_process(batch, sealers)
                else:
                    for ticket in batch.tickets:
                        self._work(ticket)
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the batch
            if not batch.future.done():
                batch.future.set_exception(exc)
            return
        for ticket in batch.tickets:  # (done: asking no longer takes the future's lock, for each small file)
            ticket.future = None
        if not batch.future.done():  # cancelled by abort() meanwhile
            batch.future.set_result(None)

    def _enqueue(self, ticket: BlobTicket) -> None:
        self._send_batch()  # earlier small blobs first: the workers take tasks in order
        ticket.future = self._pool.submit(self._work, ticket)
        self._track(ticket, 1)
        self._bound_inflight()

    def _track(self, item: BlobTicket | FileRun, blobs: int) -> None:
        """Queue *item* (*blobs* blobs) behind the others, counted in flight until drained."""
        self._sealing.append(item)
        self._sealing_blobs += blobs
        self._inflight_bytes += item.charged

    def _bound_inflight(self) -> None:
        """Drain while too many blobs or bytes are in flight: only the oldest are waited
        for, so the workers never run dry meanwhile."""
        if self._sealing_blobs > self._max_inflight or self._inflight_bytes > self._max_inflight_bytes:
            self._drain(self._max_inflight, self._max_inflight_bytes)

    def _work(self, ticket: BlobTicket) -> None:
        """In a worker: hash (unless known), dedupe, seal and verify (a file ticket's
        file read first)."""
        data = ticket.data if ticket.file is None else _read_file(ticket)
        if data is None:
            return
        ticket.data = None
        if not ticket.chunk_id:
            chunk_id = ticket.chunk_id = self.repo.hasher(data)
            if not self._claim(chunk_id):
                return
            ticket.new = True
        try:
            ticket.sealed = self.repo.codec.encode(ticket.blob_type, ticket.chunk_id, data)
        except BlobError as exc:  # as a worker process reports it: the source fails, not the run
            raise SealError(str(exc)) from None

    def _claim(self, chunk_id: bytes) -> bool:
        """True when this session is to store blob *chunk_id* (it is now pending); False
        when the repository has it or this session already stores it."""
        with self._lock:
            if chunk_id in self.repo.index or chunk_id in self._pending:
                return False
            self._pending.add(chunk_id)
        return True

    def _work_in_process(self, batch: _Batch, sealers: SealWorkers) -> None:
        """:meth:`_work` for every blob of *batch*, the hashing and sealing done by a
        worker process (it seals a blob this session or the repository already has too:
        rare among small files, and dropped here as in :meth:`_work`)."""
        tickets = batch.tickets
        sealed = sealers.seal([(t.blob_type, bytes(t.data)) if t.file is None else (t.blob_type, *t.file)  # type: ignore[arg-type]
                               for t in tickets])
        for ticket, (chunk_id, blob, size) in zip(tickets, sealed, strict=True):
            ticket.data = None
            if chunk_id is None:  # a file ticket without a blob: blob says why
                ticket.problem = _why_no_blob(blob, size)
                continue
            ticket.chunk_id = chunk_id
            ticket.raw_length = size
            if self._claim(chunk_id):
                ticket.new = True
                ticket.sealed = blob

    def _work_run(self, run: FileRun, sealers: SealWorkers) -> None:
        """In a worker thread: have *sealers* read, hash and seal the files of *run*
        (in groups, format v3), claim the new blobs (one lock for the run), then
        complete its future (with the error, if any: the run fails as it would for one
        blob)."""
        try:
            with self._batch_slots:
                if self.repo.writes_groups:
                    answers, groups = sealers.seal_groups(run.files)
                else:
                    answers, groups = sealers.seal([(BLOB_DATA, *file) for file in run.files]), None
            outcomes: list[tuple[bytes | None, int, OSError | str | None]] = []
            claimed: list[bool] = []
            with self._lock:  # (as _claim, for each blob)
                index, pending = self.repo.index, self._pending
                for chunk_id, blob, size in answers:
                    if chunk_id is None:  # no blob: *blob* says why
                        outcomes.append((None, 0, _why_no_blob(blob, size)))
                        claimed.append(False)
                        continue
                    new = chunk_id not in index and chunk_id not in pending
                    if new:
                        pending.add(chunk_id)
                    outcomes.append((chunk_id, blob if groups is not None else size, None))  # (groups: (id, size, None))
                    claimed.append(new)
            run.outcomes = outcomes
            if groups is None:
                run.sealed = [blob if new else None for (_, blob, _), new in zip(answers, claimed, strict=True)]
            else:  # each group lists the members claimed above (if any)
                run.groups = [(group, [(outcomes[no][0], outcomes[no][1]) for no in numbers if claimed[no]])  # type: ignore[misc]
                              for group, numbers in groups if any(claimed[no] for no in numbers)]
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the run
            future = run.future
            if future is not None and not future.done():
                future.set_exception(exc)
            return
        future, run.future = run.future, None  # (done: asking no longer takes the future's lock)
        if future is not None and not future.done():  # cancelled by abort() meanwhile
            future.set_result(None)

    def _drain(self, limit: int, byte_limit: int) -> None:
        while self._sealing and (self._sealing_blobs > limit or self._inflight_bytes > byte_limit):
            item = self._sealing.popleft()
            self._inflight_bytes -= item.charged
            if isinstance(item, FileRun):
                self._sealing_blobs -= len(item.files)
                self._pack_run(item)
                continue
            ticket = item
            self._sealing_blobs -= 1
            future = ticket.future
            if future is not None:  # (None: its batch is done)
                if ticket.send is not None:
                    ticket.send()
                future.result()
            if ticket.problem is not None:
                continue
            if not ticket.new:
                self.stats.blobs_reused += 1
                continue
            sealed = ticket.sealed
            assert sealed is not None
            ticket.sealed = None
            self._pack(ticket.blob_type, ticket.chunk_id, sealed, ticket.raw_length)

    def _pack_run(self, run: FileRun) -> None:
        """Wait for *run* (re-raises its error), then add its new blobs to the pack, in order."""
        run.wait()
        sealed, run.sealed = run.sealed, []
        groups, run.groups = run.groups, None
        if groups is not None:  # format v3: the new blobs are the members the groups list
            listed = 0
            for group, members in groups:
                self._pack_group(group, members)
                listed += len(members)
            self.stats.blobs_reused += sum(1 for chunk_id, _, _ in run.outcomes if chunk_id is not None) - listed
            return
        for (chunk_id, size, _), blob in zip(run.outcomes, sealed, strict=True):
            if blob is not None:
                assert chunk_id is not None
                self._pack(BLOB_DATA, chunk_id, blob, size)
            elif chunk_id is not None:
                self.stats.blobs_reused += 1

    def _pack(self, blob_type: int, chunk_id: bytes, sealed: bytes, raw_length: int) -> None:
        """Add a new blob to the open pack (started if none is); hand the pack to an
        upload thread once full."""
        builder = self._open_pack()
        builder.add(blob_type, chunk_id, sealed, raw_length)
        self._added(builder, 1, raw_length, len(sealed))

    def _pack_group(self, sealed: bytes, members: list[tuple[bytes, int]]) -> None:
        """Add a group (format v3) listing *members* (chunk id, size) to the open pack,
        as :meth:`_pack` adds a blob."""
        builder = self._open_pack()
        builder.add_group(sealed, members)
        self._added(builder, len(members), sum(size for _, size in members), len(sealed))

    def _open_pack(self) -> PackBuilder:
        """The pack blobs are added to (started if none is)."""
        builder = self._builder
        if builder is None:
            builder = self._builder = PackBuilder(self.repo.pack_version, self._buffers.take())
            self._pack_started = time.monotonic()
        return builder

    def _added(self, builder: PackBuilder, blobs: int, raw: int, sealed: int) -> None:
        """Count *blobs* new blobs (*raw* bytes, *sealed* stored) just added to *builder*;
        hand the pack to an upload thread once full."""
        stats = self.stats
        stats.blobs_new += blobs
        stats.bytes_new_raw += raw
        stats.bytes_new_sealed += sealed
        if builder.size >= self.repo.pack_size:
            self._flush_pack()

    def _flush_pack(self) -> None:
        """Hand the open pack to an upload thread (the next one starts at the next blob)."""
        builder, self._builder = self._builder, None
        assert builder is not None
        self._packs_fill_fast = time.monotonic() - self._pack_started < _FAST_PACK_SECONDS
        self._reap_uploads(self._max_uploads - 1)
        fut = self._upload_pool.submit(self._store_pack, builder)
        self._uploading.append((fut, builder.entries))
        if self._serial:
            self._reap_uploads(0)

    def _store_pack(self, builder: PackBuilder) -> tuple[str, int]:
        """In an upload thread: finish the pack (name, trailer check) and store it; its
        buffer goes back for the next pack either way."""
        try:
            pack_id, data = builder.finish_view(self.repo.cipher)
            with data:
                self.repo.check_locks()
                self.repo.storage.put(layout.pack_name(pack_id), data)
                size = len(data)
        except BaseException:
            buf = builder.take_buffer()
            if buf is not None:
                _close(buf)  # not reused: a failed put's traceback may still see it
            raise
        # Kept for the next pack only while packs fill fast (large files: faulting 16 MiB
        # of fresh pages in for every pack would cost several percent). With many small
        # files a pack takes most of a second to fill and milliseconds to store: a second
        # buffer kept idle meanwhile would only add to the peak.
        self._buffers.give(builder.take_buffer(), keep=self._packs_fill_fast)
        return pack_id, size

    def _reap_uploads(self, limit: int) -> None:
        while len(self._uploading) > limit:
            fut, entries = self._uploading.popleft()
            pack_id, size = fut.result()
            self._uploaded(pack_id, size, entries)

    def _uploaded(self, pack_id: str, size: int, entries: list[PackEntry]) -> None:
        with self._lock:
            self.repo.index.add_pack(pack_id, size, entries)
            for e in entries:
                self._pending.discard(e.id)
        self._unindexed.append((pack_id, size, entries))
        self.stats.packs += 1
        self.stats.bytes_stored += size
        _Allocator.trim(above=_RSS_SOFT_LIMIT)
        if self._on_upload:
            self._on_upload(size)
        if len(self._unindexed) >= self._index_every or sum(len(e) for _, _, e in self._unindexed) >= _INDEX_EVERY_BLOBS:
            self._write_index()

    def _write_index(self) -> None:
        if not self._unindexed:
            return
        self.repo.write_index(self._unindexed)
        self.stats.index_files += 1
        self._unindexed = []

    def _shutdown(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._sealers is not None:
            self._sealers.close()
        self._upload_pool.shutdown(wait=True, cancel_futures=True)
        if self._builder is not None:  # abort: a pack never stored
            self._buffers.give(self._builder.take_buffer(), keep=False)
            self._builder = None
        self._buffers.close()
