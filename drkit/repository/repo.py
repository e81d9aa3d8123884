"""The repository: format-aware access to a Storage (keys, index, blobs, snapshots, locks).

It knows nothing of K3s or of sources. Writers use :class:`~drkit.repository.saver.BlobSaver`
(packs, then index) and :meth:`Repository.save_snapshot` (last), so a crash at any point
leaves every existing snapshot restorable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

from drkit.errors import (
    DrkitError,
    IdentityRequired,
    IntegrityError,
    ObjectNotFound,
    RepositoryExists,
    RepositoryNotFound,
    SnapshotNotFound,
    StorageError,
    UsageError,
    WrongKey,
)
from drkit.readahead import run_ahead
from drkit.repository import chunker as chunker_mod
from drkit.repository import keys as keyslots
from drkit.repository import layout
from drkit.repository.blob import BLOB_GROUP, BlobCodec, BlobError, RecentGroups
from drkit.repository.crypto import (
    KIND_CONFIG,
    KIND_INDEX,
    KIND_SNAPSHOT,
    ChunkHasher,
    Cipher,
    DecryptError,
    IdentityMissing,
    MasterKey,
    RecipientCipher,
    _b64,
    _unb64,
    aad,
    canonical_json,
)
from drkit.repository.identity import Identity, make_recipient_slot, open_recipient_slot
from drkit.repository.index import BlobLocation, Index, ListedBlobs, decode_index_listing, encode_index_file
from drkit.repository.indexcache import CachedIndex, IndexCache
from drkit.repository.locks import COMMAND_LOCKS, Lock
from drkit.repository.pack import MAGIC_V2, PackEntry, PackFormatError, blob_views, read_trailer
from drkit.repository.snapshot import Snapshot, latest_usable
from drkit.storage.base import Storage

log = logging.getLogger("drkit.repository")

FORMAT_VERSION = 3
"""What ``init`` writes (see docs/format.md); :data:`READABLE_VERSIONS` are read."""
READABLE_VERSIONS = (1, 2, 3)
DEFAULT_CHUNKER = chunker_mod.DEFAULT_PARAMS
DEFAULT_PACK_SIZE = 16 * 1024 * 1024
READ_AHEAD = 2
"""Blobs :meth:`Repository.read_blobs` reads ahead (a snapshot's tree: blobs of about
1 MiB, at most 8 MiB each)."""
MANIFEST_READS = 8
"""Snapshot manifests read at once (a few hundred bytes each: from S3 or SFTP, each read
is a round trip; hundreds of snapshots are common)."""
INDEX_READS = 4
"""Index files read ahead of the one being added to the index (their stored bytes only:
each is decoded when its turn comes)."""
IndexListing = tuple[list[tuple[str, int, ListedBlobs]], list[str]]
"""An index file's packs (id, size, blobs as checked rows) and the files it supersedes."""
FUTURE_SKEW = timedelta(minutes=10)
"""A snapshot dated more than this ahead of the clock is future-dated (see services/forget.py)."""


def _put_and_read_back(storage: Storage, name: str, data: bytes) -> None:
    """Store *data* and read it back; raises StorageError unless the same bytes return."""
    storage.put(name, data)
    try:
        back: bytes | None = storage.get(name)
    except (IntegrityError, ObjectNotFound) as exc:
        back, why = None, exc.message
    else:
        why = f"{len(back or b'')} bytes came back for {len(data)} written" if len(back or b"") != len(data) else "different bytes came back"
    if back != data:
        raise StorageError(
            f"init: {storage.url} does not give back what was written to {name} ({why})",
            hint="the store, or a proxy in front of it, alters or loses objects: fix it before trusting it with backups "
            "(nothing usable was left behind)",
        )


_BOUNDS = {"min_size": (64 * 1024, 4 * 1024 * 1024), "avg_size": (64 * 1024, 4 * 1024 * 1024), "max_size": (1024 * 1024, 64 * 1024 * 1024)}
_PACK_BOUNDS = (1024 * 1024, 128 * 1024 * 1024)


def check_parameters(config: dict[str, Any]) -> None:
    """Refuse chunker and pack parameters out of bounds (any version): an altered config
    must not make backups cut tiny chunks into one-blob packs. Raises IntegrityError."""
    chunker = config.get("chunker")
    if not isinstance(chunker, dict) or chunker.get("algorithm") != "fastcdc2020":
        raise IntegrityError(name=layout.CONFIG, detail="unknown chunker")
    for key, (low, high) in _BOUNDS.items():
        value = chunker.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise IntegrityError(name=layout.CONFIG, detail=f"chunker {key}={value!r} is out of bounds ({low}..{high})")
    if not chunker["min_size"] <= chunker["avg_size"] <= chunker["max_size"]:
        raise IntegrityError(name=layout.CONFIG, detail="chunker sizes are not ordered min <= avg <= max")
    pack_size = config.get("pack_size", DEFAULT_PACK_SIZE)
    if not isinstance(pack_size, int) or isinstance(pack_size, bool) or not _PACK_BOUNDS[0] <= pack_size <= _PACK_BOUNDS[1]:
        raise IntegrityError(name=layout.CONFIG, detail=f"pack_size={pack_size!r} is out of bounds ({_PACK_BOUNDS[0]}..{_PACK_BOUNDS[1]})")


def authenticated_config(config: dict[str, Any], cipher: Cipher) -> dict[str, Any]:
    """*config* with its ``auth`` field (format v2): every other field, sealed."""
    plain = {k: v for k, v in config.items() if k != "auth"}
    return {**plain, "auth": _b64(cipher.seal(canonical_json(plain), aad(KIND_CONFIG)))}


def verify_config(config: dict[str, Any], master: MasterKey) -> None:
    """Check a config against the master key that opened the repository (format v2):
    its ``auth`` must open and match every other field, and its version may not be
    lower than the key's ``min_version`` (a downgrade). Raises IntegrityError."""
    version = int(config.get("version", 1))
    if version < master.min_version:
        raise IntegrityError(
            name=layout.CONFIG,
            detail=f"it claims format version {version}, but this key belongs to a version-{master.min_version} repository "
            "(a downgrade: the config was replaced)",
            hint="restore the repository's real config (a copy of the storage, or 'drkit upgrade-format' from a trusted host)",
        )
    if version < 2:
        return
    try:
        plain = Cipher(master.data_key).open(_unb64(str(config["auth"])), aad(KIND_CONFIG))
    except (KeyError, ValueError, DecryptError):
        plain = None
    if plain is None or plain != canonical_json({k: v for k, v in config.items() if k != "auth"}):
        raise IntegrityError(
            name=layout.CONFIG,
            detail="its parameters are not the ones authenticated by the repository key (the config was altered)",
            hint="restore the repository's real config; nothing was read or written with the altered one",
        )


def _chunker_max(config: dict[str, Any]) -> int:
    """The chunker maximum the config names (the bound of every blob's plaintext)."""
    try:
        return int(config["chunker"]["max_size"])
    except (KeyError, TypeError, ValueError):
        return 8 * 1024 * 1024


def _not_indexed(chunk_id: bytes) -> IntegrityError:
    return IntegrityError(name=f"blob {chunk_id.hex()}", detail="not in the index")


class Repository:
    """An open repository. Construct with :meth:`init` or :meth:`open`."""

    def __init__(
        self,
        storage: Storage,
        config: dict[str, Any],
        master: MasterKey,
        key_id: str,
        *,
        compression_level: int = 3,
        identity: Identity | None = None,
    ) -> None:
        self.storage = storage
        self.config = config
        self.master = master
        self.key_id = key_id
        self.identity = identity
        # Index files and pack trailers: what every writer needs to deduplicate.
        self.cipher = Cipher(master.data_key)
        # Content (blobs, manifests): the same key, or sealed to the recipient.
        self.content_cipher: Cipher | RecipientCipher = (
            RecipientCipher(master.recipient, identity.private if identity else None) if master.recipient else self.cipher
        )
        self.hasher = ChunkHasher(master.id_key)
        self.codec = BlobCodec(self.content_cipher, self.hasher, compression_level,
                               max_size=_chunker_max(config))
        self.index = Index()
        self.index_loaded = False
        self.superseded_index_files: set[str] = set()
        """Index files still stored but replaced by a loaded one (see :meth:`load_index`)."""
        self.replaced_index_files: set[str] = set()
        """Every index file id a loaded file's ``supersedes`` list names (stored or not)."""
        self.lock_retry = timedelta(0)
        """How long :meth:`lock` retries a conflicting lock (``--retry-lock``)."""
        self._held_locks: list[Lock] = []
        self._group_reads = RecentGroups()
        """Groups (format v3) fetched lately by :meth:`read_blob`: their members are
        read one after another, each a range read of the whole group otherwise."""

    # -- creation and opening -------------------------------------------------

    @staticmethod
    def exists(storage: Storage) -> bool:
        try:
            storage.stat(layout.CONFIG)
            return True
        except ObjectNotFound:
            return False

    @classmethod
    def init(
        cls,
        storage: Storage,
        passphrase: str,
        *,
        compression_level: int = 3,
        pack_size: int = DEFAULT_PACK_SIZE,
        recipient: bytes | None = None,
    ) -> Repository:
        """Create a repository; raises RepositoryExists. The config object is written
        last, so an interrupted init leaves no repository (and can be re-run). Every
        object is read back and compared with what was written: a store that alters or
        loses bodies fails init (StorageError) and what was written is removed.

        With *recipient* (recipient mode) the passphrase slot opens only what a
        backup host needs to write; content is sealed to the recipient, and a second
        slot lets the identity holder open the repository without the passphrase."""
        if cls.exists(storage):
            raise RepositoryExists(url=storage.url)
        master = MasterKey.generate()
        master = MasterKey(master.data_key, master.id_key, master.chunker_seed, recipient, min_version=FORMAT_VERSION)
        config: dict[str, Any] = {
            "version": FORMAT_VERSION,
            "id": secrets.token_hex(32),
            "created": datetime.now(timezone.utc).isoformat(),
            "chunker": DEFAULT_CHUNKER,
            "pack_size": pack_size,
            "key_mode": "recipient" if recipient else "passphrase",
        }
        check_parameters(config)
        config = authenticated_config(config, Cipher(master.data_key))
        key_id, slot = keyslots.make_slot(master, passphrase, label="initial")
        objects = [(layout.key_name(key_id), slot)]
        if recipient is not None:
            slot_id, slot = make_recipient_slot(master)
            objects.append((layout.key_name(slot_id), slot))
        objects.append((layout.CONFIG, json.dumps(config, indent=1).encode()))
        written: list[str] = []
        try:
            for name, data in objects:
                written.append(name)
                _put_and_read_back(storage, name, data)
        except StorageError:
            for name in reversed(written):  # leave no half repository (and no stray slot)
                try:
                    storage.delete(name)
                except DrkitError:
                    pass
            raise
        return cls(storage, config, master, key_id, compression_level=compression_level)

    @classmethod
    def read_config(cls, storage: Storage) -> dict[str, Any]:
        try:
            raw = storage.get(layout.CONFIG)
        except ObjectNotFound:
            raise RepositoryNotFound(url=storage.url) from None
        try:
            config = json.loads(raw)
        except ValueError:
            raise IntegrityError(name=layout.CONFIG, detail="not valid JSON") from None
        if not isinstance(config, dict):
            raise IntegrityError(name=layout.CONFIG, detail="not a JSON object")
        if config.get("version") not in READABLE_VERSIONS:
            raise UsageError(f"repository format version {config.get('version')} is not supported by this drkit")
        check_parameters(config)
        return config

    @classmethod
    def open(
        cls,
        storage: Storage,
        passphrase: str | None = None,
        *,
        compression_level: int = 3,
        identity: Identity | None = None,
    ) -> Repository:
        """Open with a passphrase, or (recipient mode) with the identity alone.
        Raises RepositoryNotFound or WrongKey."""
        chunker_mod.check_compiled()
        config = cls.read_config(storage)
        for key_id, doc in cls._slots_cheapest_first(storage):
            if identity is not None and doc.get("kdf") == "x25519":
                master = open_recipient_slot(doc, identity)
            elif passphrase is not None:
                try:
                    master = keyslots.open_slot(doc, passphrase)
                except ValueError as exc:
                    log.warning("skipping key slot %s: %s", key_id[:8], exc)
                    continue
            else:
                continue
            if master is not None:
                verify_config(config, master)
                return cls(storage, config, master, key_id, compression_level=compression_level, identity=identity)
        if identity is not None and passphrase is None:
            raise WrongKey(message="this identity does not open the repository (not its recipient)")
        raise WrongKey()

    @property
    def recipient_mode(self) -> bool:
        return self.master.recipient is not None

    @property
    def can_read_content(self) -> bool:
        """False on a backup host of a recipient-mode repository (no identity)."""
        return not self.recipient_mode or self.identity is not None

    def end_session(self) -> None:
        """Forget the writer's session key (recipient mode): from now on nothing this
        process wrote can be read back without the identity."""
        if isinstance(self.content_cipher, RecipientCipher):
            self.content_cipher.end_session()

    @classmethod
    def _slots_cheapest_first(cls, storage: Storage) -> list[tuple[str, dict[str, Any]]]:
        """Slots to try, cheapest KDF first (x25519 ones cost nothing); slots whose
        KDF parameters exceed the bounds are left out with a warning."""
        out: list[tuple[int, str, dict[str, Any]]] = []
        for key_id, doc in cls._slots(storage):
            if doc.get("kdf") != "scrypt":
                out.append((0, key_id, doc))
                continue
            try:
                out.append((keyslots.slot_params(doc).cost, key_id, doc))
            except ValueError as exc:
                log.warning("ignoring key slot %s: %s", key_id[:12], exc)
        return [(key_id, doc) for _, key_id, doc in sorted(out, key=lambda t: (t[0], t[1]))]

    @staticmethod
    def _slots(storage: Storage) -> Iterator[tuple[str, dict[str, Any]]]:
        for info in sorted(storage.list(layout.KEYS), key=lambda i: i.name):
            key_id = layout.id_of(info.name)
            if key_id is None:
                continue
            try:
                yield key_id, keyslots.parse_slot(storage.get(info.name))
            except (ValueError, ObjectNotFound):
                continue

    # -- key slots -------------------------------------------------------------

    def list_keys(self) -> list[dict[str, Any]]:
        return [
            {
                "id": key_id,
                "current": key_id == self.key_id,
                "created": doc.get("created"),
                "host": doc.get("host"),
                "user": doc.get("user"),
                "label": doc.get("label", ""),
                "kind": "identity" if doc.get("kdf") == "x25519" else "passphrase",
            }
            for key_id, doc in self._slots(self.storage)
        ]

    def add_key(self, passphrase: str, label: str = "") -> str:
        """Add a slot for *passphrase*; returns its id. Data is not re-encrypted."""
        key_id, slot = keyslots.make_slot(self._current_master(), passphrase, label=label)
        self.storage.put(layout.key_name(key_id), slot)
        return key_id

    def remove_key(self, ref: str) -> str:
        """Remove the slot whose id starts with *ref*; refuses the slot in use."""
        matches: list[str] = [k["id"] for k in self.list_keys() if k["id"].startswith(ref)]
        if len(matches) != 1:
            raise UsageError(f"{'no' if not matches else 'more than one'} key slot matches {ref!r}", hint="'drkit key list' shows the ids")
        if matches[0] == self.key_id:
            raise UsageError(
                "refusing to remove the key slot this passphrase opened",
                hint="open the repository with another passphrase to remove this one",
            )
        self.storage.delete(layout.key_name(matches[0]))
        return matches[0]

    def _current_master(self) -> MasterKey:
        """The master key as slots of this repository's version carry it."""
        m = self.master
        return MasterKey(m.data_key, m.id_key, m.chunker_seed, m.recipient, min_version=max(m.min_version, self.version))

    def upgrade_format(self, passphrase: str | None) -> list[str]:
        """Make a version-1 or version-2 repository version 3 (docs/format.md,
        "Upgrades"): the authenticated config first (older slots still open it), then
        a new slot for *passphrase* (the one that opened it) and a new identity slot in
        recipient mode, whose master key says the new version, then the slots they
        replace are removed. Packs stay as they are. Returns the ids of passphrase
        slots left at version 1 (their passphrases are not known here). Idempotent.
        The caller holds an exclusive lock."""
        if self.version < FORMAT_VERSION:
            config = authenticated_config({**self.config, "version": FORMAT_VERSION}, self.cipher)
            self.check_locks()
            _put_and_read_back(self.storage, layout.CONFIG, json.dumps(config, indent=1).encode())
            self.config = config
        master = self._current_master()
        older = self.master.min_version < master.min_version  # the slots that opened it name an older version
        replaced: list[str] = []
        for key_id, doc in self._slots(self.storage):
            stale = older or int(doc.get("version", 1)) < 2
            if doc.get("kdf") == "x25519" and master.recipient is not None and stale:
                new_id, slot = make_recipient_slot(master)
            elif key_id == self.key_id and passphrase is not None and stale:
                new_id, slot = keyslots.make_slot(master, passphrase, label=str(doc.get("label", "")))
            else:
                continue
            self.check_locks()
            _put_and_read_back(self.storage, layout.key_name(new_id), slot)
            replaced.append(key_id)
            if key_id == self.key_id:
                self.key_id = new_id
        for key_id in replaced:
            self.storage.delete(layout.key_name(key_id))
        self.master = master
        return [k for k, doc in self._slots(self.storage) if doc.get("kdf") == "scrypt" and int(doc.get("version", 1)) < 2]

    # -- chunking --------------------------------------------------------------

    def chunker(self) -> chunker_mod.Chunker:
        """This repository's chunker (its config's parameters, its secret seed)."""
        return chunker_mod.make_chunker(self.config["chunker"], self.master.chunker_seed)

    @property
    def version(self) -> int:
        """The repository's format version (1, 2 or 3)."""
        return int(self.config.get("version", 1))

    @property
    def writes_groups(self) -> bool:
        """Whether backups store small files' chunks in groups (format v3)."""
        return self.version >= 3

    @property
    def pack_version(self) -> int:
        """The pack format new packs are written in (2: trailers bound to their pack)."""
        return 2 if self.version >= 2 else 1

    @property
    def pack_size(self) -> int:
        return int(self.config.get("pack_size", DEFAULT_PACK_SIZE))

    # -- index -----------------------------------------------------------------

    def load_index(self, on_error: Callable[[str, str], None] | None = None, *, cache: IndexCache | None = None) -> None:
        """Load every index file, except those another loaded index file supersedes.

        A superseded file still present (prune could not delete it, e.g. under S3 Object
        Lock retention) may list packs deleted since: it is skipped and its id kept in
        :attr:`superseded_index_files`, so those packs are never taken for indexed data.
        A damaged file raises IntegrityError, or is passed to ``on_error(name, detail)``
        and skipped when a handler is given (its ``supersedes`` list is then unknown, so
        the files it replaced are loaded: a superset, as before that prune).

        With *cache* (and no *on_error*: a check reads every file), what the last load
        built is taken from the cache and only index files stored since are read, as
        long as every file it was built from is still stored and no new file supersedes
        others; otherwise every file is read. The result is the same index either way
        (a blob stored twice may keep the other of its two locations). The cache is then
        brought up to date (see :mod:`drkit.repository.indexcache`)."""
        names = [index_id for info in self.storage.list(layout.INDEX) if (index_id := layout.id_of(info.name)) is not None]
        if on_error is not None:
            cache = None  # a check reads every file
        if cache is not None:
            cached = cache.load()
            if cached is not None:
                before = (set(cached.index.files), set(cached.superseded))
                if self._load_with_cache(cached, names):
                    if (self.index.files, self.superseded_index_files) != before:
                        self.save_index_cache(cache)
                    return
                del cached  # not held while every file is read
        self._load_every_index_file(names, on_error)
        if cache is not None:
            self.save_index_cache(cache)

    def save_index_cache(self, cache: IndexCache) -> None:
        """Store the index as it is now in *cache*. Only for an index whose every row is
        in a stored index file named in ``index.files`` (after a load, or a run whose
        writers all finished); a name that is not stored only makes the next load read
        every file."""
        cache.save(CachedIndex(self.index, self.superseded_index_files, self.replaced_index_files))

    def index_cache(self, directory: Path) -> IndexCache | None:
        """This repository's index cache under *directory*, or None when its id cannot
        name a file (a config that is not drkit's own)."""
        try:
            return IndexCache(directory, str(self.config.get("id", "")), self.master.data_key)
        except ValueError:
            return None

    def _load_with_cache(self, cached: CachedIndex, names: list[str]) -> bool:
        """Load the cached index plus the files in *names* it does not know (one at a
        time, as :meth:`_load_every_index_file`); False, with nothing loaded (and the
        cached index to be dropped), when that cannot give what reading every file would."""
        present = set(names)
        if not cached.index.files <= present:
            log.debug("index cache: an index file it was built from is gone; reading every index file")
            return False
        index, superseded = cached.index, cached.superseded & present
        known = cached.index.files | cached.superseded
        files = set(cached.index.files)
        new = [index_id for index_id in names if index_id not in known]
        superseded.update(index_id for index_id in new if index_id in cached.replaced)
        for index_id, listing in self._index_listings([i for i in new if i not in cached.replaced]):
            try:
                packs, supersedes = listing()
            except ObjectNotFound:
                continue  # removed by a concurrent prune after listing
            if supersedes:  # (what was added to the cached index is dropped with it)
                log.debug("index cache: %s supersedes other index files; reading every index file", index_id)
                return False
            for pack_id, size, listed in packs:
                index.add_listed(pack_id, size, listed)
            del packs, listing
            files.add(index_id)
        index.files = files
        self.index = index
        self.superseded_index_files = superseded
        self.replaced_index_files = set(cached.replaced)
        self.index_loaded = True
        return True

    def _load_every_index_file(self, names: list[str], on_error: Callable[[str, str], None] | None) -> None:
        self.superseded_index_files = set()
        self.replaced_index_files = set()
        # Each file's blobs go into the index as it is read (its parsed entries are
        # dropped at once: holding every file's entries until the end cost ~200 bytes per
        # blob at peak). A file found superseded only by a later one (rare: a prune that
        # could not delete) makes a second pass over the files kept.
        self.index = Index()  # empty if a damaged file stops the load
        index = Index()
        kept: list[str] = []
        superseded: set[str] = set()
        for index_id, listing in self._index_listings(names):
            try:
                packs, supersedes = listing()
            except IntegrityError as exc:
                if on_error is None:
                    raise
                on_error(layout.index_name(index_id), exc.fields.get("detail", str(exc)))
                continue
            except ObjectNotFound:
                continue  # removed by a concurrent prune after listing
            superseded.update(supersedes)
            if index_id in superseded:
                self.superseded_index_files.add(index_id)
                continue
            for pack_id, size, listed in packs:
                index.add_listed(pack_id, size, listed)
            del packs, listing
            kept.append(index_id)
        self.replaced_index_files = set(superseded)
        late = [index_id for index_id in kept if index_id in superseded]
        if late:
            self.superseded_index_files.update(late)
            index = Index()
            for index_id, listing in self._index_listings([i for i in kept if i not in superseded]):
                try:
                    packs, _ = listing()
                except ObjectNotFound:
                    continue
                for pack_id, size, listed in packs:
                    index.add_listed(pack_id, size, listed)
                del packs, listing
                index.files.add(index_id)
        else:
            index.files.update(kept)
        self.index = index
        self.index_loaded = True

    def _index_listings(self, index_ids: list[str]) -> Iterator[tuple[str, Callable[[], IndexListing]]]:
        """Each of *index_ids* with a call that gives its :meth:`_read_index_listing`,
        in order, while the storage reads of the next :data:`INDEX_READS` files run in
        background threads (see :func:`~drkit.readahead.run_ahead`). A file is checked
        and decoded only by that call, in the calling thread: the entries of one file at
        a time are held, as when the files were read one after another."""
        def fetch(index_id: str) -> bytes:
            return self.storage.get(layout.index_name(index_id))

        for index_id, raw in run_ahead(fetch, index_ids, ahead=INDEX_READS, name="drkit-index-read"):
            yield index_id, partial(self._listing_of, index_id, raw)

    def _listing_of(self, index_id: str, raw: Future[bytes]) -> IndexListing:
        return self._decode_index_listing(index_id, raw.result())

    def read_index_file(self, index_id: str) -> tuple[list[tuple[str, int, list[PackEntry]]], list[str]]:
        """(packs with their entries, supersedes) of one index file; raises IntegrityError."""
        packs, supersedes = self._read_index_listing(index_id)
        return [(pack_id, size, listed.entries()) for pack_id, size, listed in packs], supersedes

    def _read_index_listing(self, index_id: str) -> IndexListing:
        """:meth:`read_index_file`, each pack's blobs as checked rows (what :meth:`load_index` adds)."""
        return self._decode_index_listing(index_id, self.storage.get(layout.index_name(index_id)))

    def _decode_index_listing(self, index_id: str, raw: bytes) -> IndexListing:
        """The listing of index file *index_id* from its stored bytes *raw*; raises IntegrityError."""
        name = layout.index_name(index_id)
        if hashlib.sha256(raw).hexdigest() != index_id:
            raise IntegrityError(name=name, detail="content does not match its name (SHA-256)", hint="run 'drkit rebuild-index'")
        try:
            return decode_index_listing(self.cipher.open(raw, aad(KIND_INDEX)))
        except (DecryptError, ValueError) as exc:
            raise IntegrityError(name=name, detail=str(exc), hint="run 'drkit rebuild-index'") from None

    def write_index(self, packs: list[tuple[str, int, list[PackEntry]]], supersedes: list[str] | tuple[str, ...] = ()) -> str:
        """Store an index file for *packs* (atomic); returns its id."""
        self.check_locks()
        sealed = self.cipher.seal(encode_index_file(packs, supersedes), aad(KIND_INDEX))
        index_id = hashlib.sha256(sealed).hexdigest()
        self.storage.put(layout.index_name(index_id), sealed)
        self.index.files.add(index_id)
        return index_id

    # -- packs and blobs -------------------------------------------------------

    def read_pack(self, pack_id: str) -> bytes:
        """The whole pack, checked against its name; raises IntegrityError."""
        name = layout.pack_name(pack_id)
        data = self.storage.get(name)
        if hashlib.sha256(data).hexdigest() != pack_id:
            raise IntegrityError(name=name, detail="content does not match its name (SHA-256)")
        return data

    def pack_entries(self, pack_id: str, data: bytes) -> list[PackEntry]:
        try:
            return read_trailer(data, self.cipher)
        except PackFormatError as exc:
            raise IntegrityError(name=layout.pack_name(pack_id), detail=str(exc)) from None

    def scan_packs(
        self,
        *,
        skip: Callable[[str], bool] = lambda pack_id: False,
        on_error: Callable[[str, str], None] | None = None,
        check_blobs: bool = False,
        bound_only: bool = False,
    ) -> Iterator[tuple[str, int, list[PackEntry]]]:
        """Read stored packs (checked against their names) and parse their trailers;
        yield (pack id, size, entries). With *check_blobs*, every blob the trailer lists
        must also decrypt, decompress and match its id; with *bound_only*, only v2 packs
        (trailer bound to the pack) are yielded. Damaged or vanished packs go to
        *on_error* (name, detail) and are skipped; so are packs for which *skip(pack_id)* holds."""
        for info in self.storage.list(layout.DATA):
            pack_id = layout.id_of(info.name)
            if pack_id is None or skip(pack_id):
                continue
            try:
                data = self.read_pack(pack_id)
                if bound_only and not data.startswith(MAGIC_V2):
                    continue
                entries = self.pack_entries(pack_id, data)
                if check_blobs:
                    self.check_pack_blobs(pack_id, data, entries)
            except IntegrityError as exc:
                if on_error:
                    on_error(info.name, str(exc.fields.get("detail", exc)))
                continue
            except ObjectNotFound:
                continue  # removed after listing
            yield pack_id, len(data), entries

    def check_pack_blobs(self, pack_id: str, data: bytes, entries: list[PackEntry]) -> None:
        """Decrypt, decompress and id-check every blob *entries* locate in *data*;
        raises IntegrityError naming the pack at the first bad one."""
        for e, sealed in blob_views(data, entries):
            try:
                self.codec.decode(e.blob_type, e.id, sealed)
            except BlobError as exc:
                raise IntegrityError(name=layout.pack_name(pack_id), detail=f"blob {e.id.hex()[:16]}: {exc}") from None

    def adopt_orphan_packs(self, on_error: Callable[[str, str], None] | None = None) -> int:
        """Index packs that exist but no index file lists (left by an interrupted run),
        so their data is reused instead of uploaded again. A pack is adopted only after
        every blob it lists decrypts, decompresses and matches its id: a real trailer
        copied onto other bytes is not data. Where content cannot be opened (a
        recipient-mode backup host), only v2 packs are adopted, whose trailer is bound to
        their bytes (format v2); other data is uploaded again. Damaged ones are skipped
        (and reported to *on_error*). Never deletes. Returns the number adopted."""
        readable = self.can_read_content
        if not readable and self.pack_version < 2:
            return 0
        adopted = list(
            self.scan_packs(
                skip=lambda pack_id: pack_id in self.index.pack_sizes,
                on_error=on_error,
                check_blobs=readable,
                bound_only=not readable,
            )
        )
        for pack_id, size, entries in adopted:
            self.index.add_pack(pack_id, size, entries)
        if adopted:
            self.write_index(adopted)
        return len(adopted)

    def read_blob(self, chunk_id: bytes) -> bytes:
        """Fetch, decrypt, decompress and verify one blob; raises IntegrityError."""
        loc = self._locate(chunk_id)
        return self._decode_blob(chunk_id, loc, self._sealed(loc))

    def _sealed(self, loc: BlobLocation) -> bytes:
        """The stored bytes at *loc* (a group's kept for its next members)."""
        def get() -> bytes:
            return self.storage.get(layout.pack_name(loc.pack), loc.offset, loc.length)
        if loc.blob_type != BLOB_GROUP:
            return get()
        return self._group_reads.get((loc.pack, loc.offset, loc.length), get)  # type: ignore[no-any-return]

    def read_blobs(self, chunk_ids: list[bytes], *, ahead: int = READ_AHEAD) -> Iterator[bytes]:
        """:meth:`read_blob` of each of *chunk_ids* in turn, while the storage reads of
        the next *ahead* run in background threads (from S3 or SFTP a read is mostly
        waiting: a tree read blob after blob waited for each). Everything else happens
        in the calling thread. An error is raised where its blob is reached, as
        :meth:`read_blob` raises it; closed early, it waits for the reads in flight."""
        if ahead <= 0 or len(chunk_ids) < 2:
            yield from map(self.read_blob, chunk_ids)
            return

        def read(located: tuple[bytes, BlobLocation | None]) -> bytes:
            chunk_id, loc = located
            if loc is None:
                raise _not_indexed(chunk_id)  # (raised by result() below, where it is reached)
            return self.storage.get(layout.pack_name(loc.pack), loc.offset, loc.length)

        located = ((chunk_id, self.index.get(chunk_id)) for chunk_id in chunk_ids)  # looked up in this thread
        for (chunk_id, loc), sealed in run_ahead(read, located, ahead=ahead, name="drkit-read-ahead"):
            data = sealed.result()
            assert loc is not None
            yield self._decode_blob(chunk_id, loc, data)

    def _locate(self, chunk_id: bytes) -> BlobLocation:
        loc = self.index.get(chunk_id)
        if loc is None:
            raise _not_indexed(chunk_id)
        return loc

    def _decode_blob(self, chunk_id: bytes, loc: BlobLocation, sealed: bytes) -> bytes:
        try:
            return self.codec.decode(loc.blob_type, chunk_id, sealed, loc.raw_length)
        except BlobError as exc:
            raise IntegrityError(name=layout.pack_name(loc.pack), detail=str(exc)) from None

    # -- snapshots -------------------------------------------------------------

    def save_snapshot(self, snap: Snapshot) -> None:
        self.check_locks()
        sealed = self.content_cipher.seal(snap.encode(), aad(KIND_SNAPSHOT, snap.id.encode()))
        self.storage.put(layout.snapshot_name(snap.id), sealed)

    def load_snapshot(self, snapshot_id: str) -> Snapshot:
        name = layout.snapshot_name(snapshot_id)
        raw = self.storage.get(name)
        try:
            snap = Snapshot.decode(self.content_cipher.open(raw, aad(KIND_SNAPSHOT, snapshot_id.encode())))
        except IdentityMissing:
            raise IdentityRequired() from None
        except (DecryptError, ValueError) as exc:
            raise IntegrityError(name=name, detail=str(exc), hint="'drkit forget' this snapshot id; the others are unaffected") from None
        if snap.id != snapshot_id:
            raise IntegrityError(name=name, detail="manifest id does not match its name")
        return snap

    def snapshot_ids(self) -> list[str]:
        return [i for i in (layout.id_of(o.name) for o in self.storage.list(layout.SNAPSHOTS)) if i]

    def list_snapshots(self, on_error: Callable[[str, str], None] | None = None) -> list[Snapshot]:
        """All snapshots, oldest first, their manifests read :data:`MANIFEST_READS` at a
        time. A damaged manifest raises, or goes to *on_error*; one deleted since the
        listing is left out."""
        out = []
        for snapshot_id, loaded in run_ahead(self.load_snapshot, self.snapshot_ids(), ahead=MANIFEST_READS,
                                             name="drkit-manifests"):
            try:
                out.append(loaded.result())
            except IntegrityError as exc:
                if on_error is None:
                    raise
                on_error(layout.snapshot_name(snapshot_id), exc.fields.get("detail", str(exc)))
            except ObjectNotFound:
                continue
        out.sort(key=lambda s: (s.time, s.id))
        return out

    def delete_snapshot(self, snapshot_id: str) -> None:
        self.check_locks()
        self.storage.delete(layout.snapshot_name(snapshot_id))

    def find_snapshot(self, ref: str, source: str | None = None) -> Snapshot:
        """Resolve ``latest`` or an id prefix (optionally within one source).

        ``latest`` is the newest snapshot that is neither dated in the future (more than
        :data:`FUTURE_SKEW` ahead of this host's clock: a snapshot claiming 2099 is never
        "latest") nor empty (one that read nothing); each empty one passed over is
        named in a warning."""
        snaps = [s for s in self.list_snapshots(on_error=lambda *_: None) if source is None or s.source == source]
        scope = f" for source {source!r}" if source else ""
        if ref == "latest":
            horizon = datetime.now(timezone.utc) + FUTURE_SKEW
            snap, skipped = latest_usable([s for s in snaps if s.datetime <= horizon])
            for s in skipped:
                log.warning("skipping empty snapshot %s of %s (%s): it holds nothing", s.short_id, s.source, s.time)
            if snap is None:
                raise SnapshotNotFound(ref=ref, scope=scope, hint="only empty snapshots" if skipped else None)
            return snap
        matches = [s for s in snaps if s.id.startswith(ref)]
        if len(matches) > 1:
            raise UsageError(f"snapshot id {ref!r} is ambiguous{scope}", hint="give more characters of the id")
        if not matches:
            raise SnapshotNotFound(ref=ref, scope=scope)
        return matches[0]

    # -- locks -----------------------------------------------------------------

    def lock(self, *, exclusive: bool, command: str = "") -> Lock:
        """Acquire a lock (shared or exclusive), retrying conflicts for :attr:`lock_retry`;
        raises RepositoryLocked. While it is held, writes check it (:meth:`check_locks`)."""
        lock = Lock(self.storage, exclusive, command, retry=self.lock_retry).acquire()
        self._held_locks = [lk for lk in self._held_locks if not lk.released] + [lock]
        return lock

    def lock_for(self, command: str) -> Lock:
        """The lock :data:`~drkit.repository.locks.COMMAND_LOCKS` declares for *command*."""
        return self.lock(exclusive=COMMAND_LOCKS[command], command=command)

    def check_locks(self) -> None:
        """Raise LockLost if a lock this repository holds failed to refresh: nothing more
        may be written or deleted then."""
        for lock in self._held_locks:
            if not lock.released:
                lock.check()
