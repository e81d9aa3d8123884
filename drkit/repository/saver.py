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

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from drkit.repository import layout
from drkit.repository.blob import BLOB_DATA
from drkit.repository.pack import PackBuilder, PackEntry


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


class BlobSaver:
    """Stores blobs of one writer session. Not thread-safe: call from one thread.

    Use as a context manager, or call :meth:`finish` (success) / :meth:`abort`.
    """

    def __init__(
        self,
        repo: "Repository",  # noqa: F821 - avoid import cycle
        *,
        workers: int = 0,
        index_every_packs: int = 32,
        uploads: int = 2,
        on_upload: Callable[[int], None] | None = None,
    ) -> None:
        self.repo = repo
        self.stats = SaverStats()
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="drkit-seal")
        self._upload_pool = ThreadPoolExecutor(uploads, thread_name_prefix="drkit-upload")
        self._max_inflight = self.workers * 3
        self._max_uploads = uploads
        self._sealing: deque[Future] = deque()
        self._uploading: deque[tuple[Future, str, int, list[PackEntry]]] = deque()
        self._pending: set[bytes] = set()
        self._builder = PackBuilder()
        self._unindexed: list[tuple[str, int, list[PackEntry]]] = []
        self._index_every = index_every_packs
        self._on_upload = on_upload
        self._closed = False

    # -- public ----------------------------------------------------------------

    def save(self, data: bytes, blob_type: int = BLOB_DATA) -> tuple[bytes, bool]:
        """Queue *data*; return (chunk id, True if new to the repository)."""
        chunk_id = self.repo.hasher(data)
        if chunk_id in self.repo.index or chunk_id in self._pending:
            self.stats.blobs_reused += 1
            return chunk_id, False
        self._pending.add(chunk_id)
        self.stats.blobs_new += 1
        self.stats.bytes_new_raw += len(data)
        self._sealing.append(self._pool.submit(self._seal, blob_type, chunk_id, data))
        if len(self._sealing) > self._max_inflight:
            self._drain(self._max_inflight // 2)
        return chunk_id, True

    def known(self, chunk_id: bytes) -> bool:
        return chunk_id in self.repo.index or chunk_id in self._pending

    def finish(self) -> None:
        """Store everything queued: last pack, uploads, final index. Idempotent."""
        if self._closed:
            return
        try:
            self._drain(0)
            if len(self._builder):
                self._flush_pack()
            self._reap_uploads(0)
            self._write_index()
        finally:
            self._shutdown()

    def abort(self) -> None:
        """Stop; index the packs already uploaded so a later run reuses them."""
        if self._closed:
            return
        for fut in self._sealing:
            fut.cancel()
        self._sealing.clear()
        try:
            while self._uploading:
                fut, pack_id, size, entries = self._uploading.popleft()
                try:
                    fut.result()
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

    def _seal(self, blob_type: int, chunk_id: bytes, data: bytes) -> tuple[int, bytes, bytes, int]:
        return blob_type, chunk_id, self.repo.codec.encode(blob_type, chunk_id, data), len(data)

    def _drain(self, limit: int) -> None:
        while len(self._sealing) > limit:
            blob_type, chunk_id, sealed, raw_length = self._sealing.popleft().result()
            self._builder.add(blob_type, chunk_id, sealed, raw_length)
            self.stats.bytes_new_sealed += len(sealed)
            if self._builder.size >= self.repo.pack_size:
                self._flush_pack()

    def _flush_pack(self) -> None:
        builder, self._builder = self._builder, PackBuilder()
        pack_id, data = builder.finish(self.repo.cipher)
        self._reap_uploads(self._max_uploads - 1)
        fut = self._upload_pool.submit(self.repo.storage.put, layout.pack_name(pack_id), data)
        self._uploading.append((fut, pack_id, len(data), builder.entries))

    def _reap_uploads(self, limit: int) -> None:
        while len(self._uploading) > limit:
            fut, pack_id, size, entries = self._uploading.popleft()
            fut.result()
            self._uploaded(pack_id, size, entries)

    def _uploaded(self, pack_id: str, size: int, entries: list[PackEntry]) -> None:
        self.repo.index.add_pack(pack_id, size, entries)
        for e in entries:
            self._pending.discard(e.id)
        self._unindexed.append((pack_id, size, entries))
        self.stats.packs += 1
        self.stats.bytes_stored += size
        if self._on_upload:
            self._on_upload(size)
        if len(self._unindexed) >= self._index_every:
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
        self._upload_pool.shutdown(wait=True, cancel_futures=True)
