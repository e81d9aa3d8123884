"""A local, authenticated copy of a repository's loaded index.

A backup needs the whole index (every chunk it reuses is looked up in it). Reading it
means fetching, decrypting and parsing every index file: about 0.25 s per 100,000
blobs on a local disk, and every index file downloaded again from S3 or SFTP, on every
run. The cache keeps what the last load built, or what a backup left when all its
writers finished (every row it added is then in an index file it stored), and a load
reads only the index files that appeared since.

One file per repository, ``<cache directory>/index/<repository id>``::

    MAGIC | u32 header length | header JSON | rows | HMAC-SHA256

The header names the repository, the rows, the packs the rows refer to (with their
sizes), and the index files the rows came from (``files``), those found superseded and
every id a ``supersedes`` list named. ``rows`` are the rows of
:class:`~drkit.repository.index.Index` as it holds them, 48 bytes each (native byte
order, recorded). Version 1 held the same rows a column at a time (every id, then every
span, then every meta); such a file is ignored and replaced, like any other layout.

The file is read a batch of rows at a time into the index being built, and its MAC
checked at the end (the index is dropped if it fails): loading does not hold the file
beside the index.
The MAC key is derived (HKDF-SHA256) from the repository's data key, so only a holder
of the key can make a cache the repository accepts: a file changed, truncated, made
for another repository or by an older layout is ignored (and replaced).

Index files are immutable and named by the hash of their bytes, so rows read from a
file named ``X`` stay true while ``X`` is stored. What the cache cannot know is a file
that went away or a file that supersedes others (a prune, a rebuild): then the load
reads every index file again (see :meth:`drkit.repository.repo.Repository.load_index`).

Promises: :meth:`IndexCache.load` never raises for a bad or missing cache (it returns
None and logs why at debug level); :meth:`IndexCache.save` is atomic (temporary file
and rename, not fsynced: a torn file fails its MAC and is ignored) and never raises
(an unwritable directory is logged once as a warning).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import stat
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from drkit.atomicio import replacing
from drkit.repository.index import Index
from drkit.repository.indexrows import ROW_SIZE, SPILL_ROWS

log = logging.getLogger("drkit.cache")

MAGIC = b"drkit index cache\n"
VERSION = 2
_HKDF_INFO = b"drkit index cache v1"
_MAC_SIZE = 32
_REPO_ID = re.compile(r"[0-9a-f]{16,128}")


def cache_key(data_key: bytes) -> bytes:
    """The MAC key of a repository's cache files (HKDF-SHA256 of its data key)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(data_key)


@dataclass
class CachedIndex:
    """A loaded index as the cache holds it."""

    index: Index
    """Its rows and packs; ``index.files``: the index files they came from."""
    superseded: set[str]
    """Index files that were stored but superseded (their rows are not in *index*)."""
    replaced: set[str]
    """Every id a loaded file's ``supersedes`` list named."""


class IndexCache:
    """The index cache of one repository, in *directory* (see the module docstring)."""

    def __init__(self, directory: Path, repository_id: str, data_key: bytes) -> None:
        """ValueError when *repository_id* is not a plain hex id (it names the file)."""
        if not _REPO_ID.fullmatch(repository_id):
            raise ValueError("repository id is not hex")
        self.path = directory / "index" / repository_id
        self.repository_id = repository_id
        self._key = cache_key(data_key)
        self._warned = False

    def load(self) -> CachedIndex | None:
        """The cached index, or None when there is none or it is not valid here."""
        try:
            with self._open() as f:
                return self._decode(f)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.debug("index cache %s unreadable: %s", self.path, exc)
            return None
        except (ValueError, KeyError, TypeError, struct.error) as exc:
            log.debug("index cache %s ignored: %s", self.path, exc)
            return None

    def _open(self) -> BinaryIO:
        """The file, open; a symlink, a FIFO or a device in its place is refused
        (OSError or ValueError), never followed or waited on."""
        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        f = os.fdopen(fd, "rb")
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            f.close()
            raise ValueError("not a regular file")
        return f

    def _decode(self, f: BinaryIO) -> CachedIndex:
        """The index in *f*: its header, then its rows a batch at a time, then its MAC."""
        size = os.fstat(f.fileno()).st_size
        mac = hmac.new(self._key, digestmod=hashlib.sha256)

        def read(n: int) -> bytes:
            data = f.read(n)
            if len(data) != n:
                raise ValueError("the file is shorter than it says")
            mac.update(data)
            return data

        if size < len(MAGIC) + 4 + _MAC_SIZE or read(len(MAGIC)) != MAGIC:
            raise ValueError("not an index cache")
        (header_size,) = struct.unpack("<I", read(4))
        if header_size > size:
            raise ValueError("header longer than the file")
        header = json.loads(read(header_size))
        if header["version"] != VERSION or header["repository"] != self.repository_id or header["byteorder"] != sys.byteorder:
            raise ValueError("made by another layout, repository or machine")
        rows = int(header["rows"])
        if len(MAGIC) + 4 + header_size + rows * ROW_SIZE + _MAC_SIZE != size:
            raise ValueError("row count does not match the file's length")

        def batches() -> Iterator[bytes]:
            left = rows * ROW_SIZE
            while left:
                batch = read(min(left, SPILL_ROWS * ROW_SIZE))
                left -= len(batch)
                yield batch

        index = Index.from_rows(list(header["packs"]), dict(zip(header["packs"], header["sizes"], strict=True)), batches())
        if not hmac.compare_digest(mac.digest(), f.read(_MAC_SIZE)):
            index.close()
            raise ValueError("MAC does not match (changed, or made with another key)")
        index.files = set(header["files"])
        return CachedIndex(index, set(header["superseded"]), set(header["replaced"]))

    def save(self, cached: CachedIndex) -> None:
        """Replace the cache with *cached* (atomic; see the module docstring)."""
        index = cached.index
        packs = index.packs()
        rows = len(index)
        header = json.dumps({
            "version": VERSION, "repository": self.repository_id, "byteorder": sys.byteorder, "rows": rows,
            "packs": packs, "sizes": [index.pack_sizes[p] for p in packs], "files": sorted(index.files),
            "superseded": sorted(cached.superseded), "replaced": sorted(cached.replaced),
        }, separators=(",", ":")).encode()
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with replacing(self.path, fsync=False) as out:
                def write(part: bytes | memoryview) -> None:
                    out.write(part)
                    mac.update(part)

                write(MAGIC + struct.pack("<I", len(header)) + header)
                for batch in index.row_batches(rows):
                    write(batch)
                out.write(mac.digest())
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot write the index cache %s (%s): backups read every index file instead", self.path, exc)
