"""Format v3, grouped small files (docs/format.md, "Grouped small files (v3)"): the
small files the backup's worker processes read are sealed in groups, one blob of type
:data:`BLOB_GROUP` holding several chunks (its *members*), each member still addressed
by its own chunk id, index row and trailer entry (type 2, the group's offset and
length). Checked here: the codec's round trip and every way it must refuse a group;
that a backup into a version-3 repository stores groups (and a version-2 one none),
deduplicates through the members' ids and restores exactly; and that damage inside a
group is found by ``verify --read-data`` and never restored as wrong bytes."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import struct
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest

import drkit.repository.repo as repo_module
from drkit.errors import IntegrityError
from drkit.repository import layout
from drkit.repository.blob import (
    BLOB_DATA,
    BLOB_GROUP,
    BLOB_TREE,
    BlobCodec,
    BlobError,
    blob_aad,
    bounded_decompress,
    group_plaintext,
    group_table,
)
from drkit.repository.crypto import KIND_BLOB, ChunkHasher, Cipher, MasterKey, aad
from drkit.repository.pack import MAGIC_V2, PackEntry
from drkit.repository.repo import Repository
from drkit.repository.tree import iter_tree
from drkit.repository.saver import RUN_FILE_MAX, BlobSaver
from drkit.repository.sealprocs import GROUP_MAX_BYTES, SealWorkers
from drkit.services.backup import BackupOptions, run_backup
from drkit.services.restore import SnapshotReader
from drkit.services.restoreprocs import FileWorkers
from drkit.services.verify import verify_repository
from drkit.sources.files import FilesSource
from drkit.storage import LocalStorage
from tests.cli import CliResult, invoke
from tests.foundation.conftest import Workspace

PASSWORD = "grouped small files"
SMALL = RUN_FILE_MAX + 1
"""Files below this many bytes are small: the workers read them, in runs (64 KiB)."""


@pytest.fixture(autouse=True)
def workers_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker processes start after the first batch of small blobs (64 by default)."""
    monkeypatch.setattr("drkit.repository.saver.MIN_BATCHES", 1)
    monkeypatch.setattr("drkit.repository.saver.MIN_NEW_BATCHES", 1)


@pytest.fixture
def codec() -> BlobCodec:
    m = MasterKey.generate()
    return BlobCodec(Cipher(m.data_key), ChunkHasher(m.id_key), level=3)


def _fresh(codec: BlobCodec) -> BlobCodec:
    """A codec with the same keys and nothing opened yet (no group remembered)."""
    return BlobCodec(codec.cipher, codec.hasher, codec.level, max_size=codec.max_size)


def _members(codec: BlobCodec, *datas: bytes) -> list[tuple[bytes, bytes]]:
    return [(codec.hasher(d), d) for d in datas]


def _seal_plain(codec: BlobCodec, plain: bytes) -> bytes:
    """*plain* sealed as a group with the real cipher, whatever it holds."""
    return codec.cipher.seal(codec.compress(plain), blob_aad(BLOB_GROUP, b""))


def _open_plain(codec: BlobCodec, sealed: bytes | memoryview) -> bytes:
    """The plaintext of a sealed group, opened here (not through the codec)."""
    opened = codec.cipher.open(sealed, aad(KIND_BLOB, bytes((BLOB_GROUP,))))  # (docs/format.md: the name is 0x02 alone)
    return opened[1:] if opened[0] == 0 else bounded_decompress(memoryview(opened)[1:], 64 * 1024 * 1024)


# -- the codec -----------------------------------------------------------------


def test_members_of_every_size_decode_to_their_bytes(codec: BlobCodec) -> None:
    """Empty, one byte, random and compressible members: each decodes to its exact
    bytes through decode and decode_view, with and without raw_length, by a reader
    that has the group open already or not; the plaintext is the documented layout,
    sealed under the associated data name 0x02; incompressible members make a group
    stored raw, which decodes as well."""
    rng = random.Random(3)
    datas = [b"", b"x", rng.randbytes(3000), b"compressible line\n" * 400, rng.randbytes(5 * 1024), bytes(40_000)]
    members = _members(codec, *datas)
    sealed = codec.encode_group(members)
    plain = _open_plain(codec, sealed)
    assert plain == group_plaintext(members)
    assert struct.unpack_from("<I", plain)[0] == len(datas)
    assert plain[4:40] == members[0][0] + struct.pack("<I", 0)
    assert plain.endswith(b"".join(datas))
    assert len(sealed) < len(plain) // 2, "compressed once, as a whole"
    assert group_table(plain)[members[2][0]] == (4 + 36 * len(datas) + 1, 3000)
    assert blob_aad(BLOB_GROUP, b"") == blob_aad(BLOB_GROUP, members[2][0]) == aad(KIND_BLOB, b"\x02")
    for chunk_id, data in members:
        for raw_length in (len(data), None):
            got = codec.decode(BLOB_GROUP, chunk_id, sealed, raw_length)
            assert type(got) is bytes and got == data
            assert bytes(codec.decode_view(BLOB_GROUP, chunk_id, sealed, raw_length)) == data
            assert bytes(_fresh(codec).decode_view(BLOB_GROUP, chunk_id, memoryview(sealed), raw_length)) == data
    # Incompressible members: the group is stored raw, and still decodes.
    noise = _members(codec, os.urandom(20_000), os.urandom(30_000))
    raw_group = codec.encode_group(noise)
    assert codec.cipher.open(raw_group, blob_aad(BLOB_GROUP, b""))[0] == 0
    assert [codec.decode(BLOB_GROUP, cid, raw_group, len(d)) for cid, d in noise] == [d for _, d in noise]


def test_members_of_two_groups_read_alternately(codec: BlobCodec) -> None:
    """A reader that goes back and forth between two groups (and a third, and a blob
    that is no group) gets each member's own bytes every time, never the other group's,
    also when the two groups hold members of the same size."""
    rng = random.Random(7)
    first = _members(codec, *(rng.randbytes(1000) for _ in range(5)))
    second = _members(codec, *(rng.randbytes(1000) for _ in range(5)))
    third = _members(codec, *(b"third %d\n" % i * 50 for i in range(3)))
    groups = [(codec.encode_group(m), m) for m in (first, second, third)]
    lone = b"a blob of its own" * 10
    lone_id = codec.hasher(lone)
    lone_sealed = codec.encode(BLOB_DATA, lone_id, lone)
    for round_ in range(3):
        for i in range(5):
            for sealed, members in groups[:2]:
                chunk_id, data = members[i]
                assert codec.decode(BLOB_GROUP, chunk_id, sealed, len(data)) == data, (round_, i)
                assert bytes(codec.decode_view(BLOB_GROUP, chunk_id, sealed)) == data
            assert codec.decode(BLOB_DATA, lone_id, lone_sealed) == lone
            sealed, members = groups[2][0], groups[2][1]
            chunk_id, data = members[i % 3]
            assert codec.decode(BLOB_GROUP, chunk_id, sealed) == data
    # A member of one group asked of the other is not in it.
    with pytest.raises(BlobError, match="not in the group"):
        codec.decode(BLOB_GROUP, first[0][0], groups[1][0])
    assert codec.decode(BLOB_GROUP, first[0][0], groups[0][0]) == first[0][1]


def test_threads_reading_many_groups_at_once_get_their_own_members(codec: BlobCodec) -> None:
    """Six threads read the members of eight groups (of members of the same sizes), each
    in its own order, through one codec: every member read is the right one."""
    rng = random.Random(11)
    groups = []
    for _ in range(8):
        members = _members(codec, *(rng.randbytes(700) for _ in range(6)))
        groups.append((codec.encode_group(members), members))
    wrong: list[tuple[int, int]] = []

    def read(seed: int) -> None:
        order = [(g, m) for g in range(8) for m in range(6)] * 4
        random.Random(seed).shuffle(order)
        for g, m in order:
            sealed, members = groups[g]
            chunk_id, data = members[m]
            if bytes(codec.decode_view(BLOB_GROUP, chunk_id, sealed, len(data))) != data:
                wrong.append((g, m))

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(read, range(6)))
    assert not wrong


def test_the_codec_refuses_what_its_group_does_not_hold(codec: BlobCodec) -> None:
    """An id not in the group, a raw_length other than the member's size, a group
    read as a blob of type 0 or 1 (other associated data), a blob read as a group."""
    members = _members(codec, b"one" * 100, b"two" * 200, b"")
    sealed = codec.encode_group(members)
    with pytest.raises(BlobError, match="not in the group"):
        codec.decode(BLOB_GROUP, codec.hasher(b"three"), sealed)
    with pytest.raises(BlobError, match="not in the group"):
        codec.decode_view(BLOB_GROUP, codec.hasher(b"three"), sealed, 5)
    for chunk_id, data in members:
        for wrong in (len(data) + 1, len(data) - 1 if data else 1, 0 if data else 7):
            with pytest.raises(BlobError, match=f"{len(data)} bytes in its group, its index entry says {wrong}"):
                codec.decode(BLOB_GROUP, chunk_id, sealed, wrong)
            with pytest.raises(BlobError):
                codec.decode_view(BLOB_GROUP, chunk_id, sealed, wrong)
    for blob_type in (BLOB_DATA, BLOB_TREE):
        for chunk_id, data in members:
            with pytest.raises(BlobError, match="authentication failed"):
                _fresh(codec).decode(blob_type, chunk_id, sealed, len(data))
            with pytest.raises(BlobError, match="authentication failed"):
                codec.decode(blob_type, chunk_id, sealed)
    blob_id = members[0][0]
    blob = codec.encode(BLOB_DATA, blob_id, members[0][1])
    with pytest.raises(BlobError, match="authentication failed"):
        codec.decode(BLOB_GROUP, blob_id, blob)
    # (the group still reads after all that)
    assert codec.decode(BLOB_GROUP, members[1][0], sealed, 600) == b"two" * 200


def test_a_flipped_byte_anywhere_in_a_group_is_refused(codec: BlobCodec) -> None:
    """Every byte of a sealed group (scheme, nonce, ciphertext, tag), one bit flipped
    at a time, read by a reader that has not seen that group: authentication fails."""
    members = _members(codec, b"alpha " * 50, b"beta " * 70, os.urandom(200))
    sealed = codec.encode_group(members)
    for at in range(len(sealed)):
        for bit in (0x01, 0x80):
            bad = bytearray(sealed)
            bad[at] ^= bit
            for chunk_id, data in members:
                with pytest.raises(BlobError):
                    _fresh(codec).decode(BLOB_GROUP, chunk_id, bytes(bad), len(data))
    truncated = sealed[:-1]
    with pytest.raises(BlobError):
        _fresh(codec).decode(BLOB_GROUP, members[0][0], truncated)
    # One reader asked twice refuses twice (a failure is not remembered as a group),
    # then reads the intact group.
    bad = bytearray(sealed)
    bad[len(sealed) // 2] ^= 1
    for _ in range(2):
        with pytest.raises(BlobError, match="authentication failed"):
            codec.decode(BLOB_GROUP, members[0][0], bytes(bad))
    assert codec.decode(BLOB_GROUP, members[0][0], sealed) == members[0][1]


def test_a_damaged_copy_of_a_group_read_before_is_refused(codec: BlobCodec) -> None:
    """A reader that has just read a group, then is handed a copy of it with one
    ciphertext byte flipped (bitrot between two reads of the same pack range), must
    refuse it as a reader that never saw the group does: the sealed bytes it was given
    are not authentic."""
    members = _members(codec, b"alpha " * 50, b"beta " * 70, os.urandom(200))
    sealed = codec.encode_group(members)
    bad = bytearray(sealed)
    bad[len(sealed) // 2] ^= 1
    with pytest.raises(BlobError):
        _fresh(codec).decode(BLOB_GROUP, members[0][0], bytes(bad))
    assert codec.decode(BLOB_GROUP, members[0][0], sealed) == members[0][1]
    with pytest.raises(BlobError):
        codec.decode(BLOB_GROUP, members[0][0], bytes(bad))


def test_malformed_groups_sealed_with_the_real_key_are_refused(codec: BlobCodec) -> None:
    """Authentic groups whose plaintext breaks the layout: no member, a header past the
    end, sizes that add up to less or more than the data, too short for a count; and a
    member whose bytes do not hash to the id its row gives."""
    good, other = b"good member data", b"other member data!"
    good_id, other_id = codec.hasher(good), codec.hasher(other)
    row = struct.Struct("<32sI")
    cases = {
        "count 0": struct.pack("<I", 0) + good,
        "count 0, empty": struct.pack("<I", 0),
        "header past the end": struct.pack("<I", 3) + row.pack(good_id, len(good)) + good,
        "huge count": struct.pack("<I", 0xFFFFFFFF) + row.pack(good_id, len(good)) + good,
        "sizes add up to less": struct.pack("<I", 2) + row.pack(good_id, len(good)) + row.pack(other_id, len(other) - 1)
        + good + other,
        "sizes add up to more": struct.pack("<I", 2) + row.pack(good_id, len(good)) + row.pack(other_id, len(other) + 1)
        + good + other,
        "a size past the end": struct.pack("<I", 1) + row.pack(good_id, 0xFFFFFFFF) + good,
        "shorter than the count": b"\x01\x00",
        "empty": b"",
    }
    for what, plain in cases.items():
        sealed = _seal_plain(codec, plain)
        for reader in (codec, _fresh(codec)):
            with pytest.raises(BlobError, match="^group: ") as refused:  # the group, not the member
                reader.decode(BLOB_GROUP, good_id, sealed)
            assert "authentication" not in str(refused.value), what
            with pytest.raises(BlobError):
                reader.decode_view(BLOB_GROUP, good_id, sealed, len(good))
    # The same rows and data, added up right: it reads (the cases above fail for their layout).
    fine = _seal_plain(codec, struct.pack("<I", 2) + row.pack(good_id, len(good)) + row.pack(other_id, len(other))
                       + good + other)
    assert codec.decode(BLOB_GROUP, other_id, fine, len(other)) == other
    # Rows swapped: each id's row gives the other's bytes (of the same size: the slices line up).
    same_size = b"other member dat"
    assert len(same_size) == len(good)
    same_id = codec.hasher(same_size)
    lying = _seal_plain(codec, struct.pack("<I", 2) + row.pack(same_id, len(good)) + row.pack(good_id, len(same_size))
                        + good + same_size)
    for reader in (codec, _fresh(codec)):
        for chunk_id in (good_id, same_id):
            with pytest.raises(BlobError, match="does not match"):
                reader.decode(BLOB_GROUP, chunk_id, lying, len(good))
            with pytest.raises(BlobError, match="does not match"):
                reader.decode_view(BLOB_GROUP, chunk_id, lying)
    # A wrong id for the data, beside a right one: only the wrong one fails.
    wrong = _seal_plain(codec, group_plaintext([(good_id, good), (codec.hasher(b"not this"), other)]))
    with pytest.raises(BlobError, match="does not match"):
        codec.decode(BLOB_GROUP, codec.hasher(b"not this"), wrong, len(other))
    assert codec.decode(BLOB_GROUP, good_id, wrong, len(good)) == good
    # The first row of an id is the one read.
    twice = _seal_plain(codec, group_plaintext([(good_id, good), (good_id, other)]))
    assert _fresh(codec).decode(BLOB_GROUP, good_id, twice) == good


def test_groups_are_bounded_by_the_chunker_maximum() -> None:
    """encode_group refuses a plaintext larger than the codec's max_size (the header
    counts); a reader with a smaller bound refuses a larger group before inflating it."""
    m = MasterKey.generate()
    small = BlobCodec(Cipher(m.data_key), ChunkHasher(m.id_key), level=3, max_size=64 * 1024)
    large = BlobCodec(Cipher(m.data_key), ChunkHasher(m.id_key), level=3, max_size=1024 * 1024)
    fits = _members(small, bytes(64 * 1024 - 4 - 36))
    assert small.decode(BLOB_GROUP, fits[0][0], small.encode_group(fits)) == fits[0][1]
    for members in (_members(small, bytes(64 * 1024 - 4 - 36 + 1)),
                    _members(small, bytes(40_000), b"\x01" * 30_000),
                    _members(small, os.urandom(40_000), os.urandom(30_000)),  # (stored raw)
                    _members(small, *(b"%d" % i for i in range(2000)))):  # rows alone: 72 KB
        with pytest.raises(BlobError, match=r"^group of \d+ bytes is larger than the chunker maximum of 65536"):
            small.encode_group(members)
    two = _members(large, bytes(40_000), b"\x01" * 40_000)
    sealed = large.encode_group(two)
    assert large.decode(BLOB_GROUP, two[1][0], sealed) == two[1][1]
    with pytest.raises(BlobError, match="larger than"):
        small.decode(BLOB_GROUP, two[1][0], sealed, 40_000)


# -- backups into a version-3 repository -----------------------------------------


def _put(root: Path, rel: str | bytes, data: bytes, contents: dict[str, bytes], mode: int | None = None,
         mtime_ns: int | None = None) -> Path:
    path = Path(os.fsdecode(os.fsencode(str(root)) + b"/" + (rel if isinstance(rel, bytes) else rel.encode())))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mode is not None:
        path.chmod(mode)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    contents[os.fsdecode(rel) if isinstance(rel, bytes) else rel] = data
    return path


def _small_tree(root: Path, seed: int = 5) -> dict[str, bytes]:
    """About 900 files: mostly small (text and random, a few bytes to 60 KiB),
    duplicates within a directory and across directories, an empty file, files of
    exactly 65535 bytes (the largest small file) and of 65536 and more, one of
    several chunks; awkward names; odd modes and times. Small files come first
    (in sorted order) so that the workers have started when the later directories
    are walked."""
    rng = random.Random(seed)
    contents: dict[str, bytes] = {}
    for d in range(6):
        for i in range(140):
            kind = (i * 7 + d) % 5
            if kind == 0:
                data = rng.randbytes(rng.randrange(1, 4096))
            elif kind == 1:
                data = f"line {d}/{i}\n".encode() * rng.randrange(1, 1500)
            else:
                data = f"small {d}/{i}\n".encode() * (1 + i % 30)
            _put(root, f"d{d}/f{i:04d}", data, contents, mtime_ns=1_700_000_000_000_000_000 + d * 1000 + i)
    for i in range(40):  # runs of a megabyte: more than one group each
        _put(root, f"d6/big{i:02d}", rng.randbytes(rng.randrange(40_000, RUN_FILE_MAX)), contents)
    _put(root, "d3/empty", b"", contents)
    _put(root, "d3/same-a", b"the same content", contents)
    _put(root, "d3/same-b", b"the same content", contents)
    _put(root, "d5/same-c", b"the same content", contents)
    _put(root, "d4/largest-small", rng.randbytes(RUN_FILE_MAX), contents)
    _put(root, "d4/smallest-large", rng.randbytes(SMALL), contents)
    _put(root, "d4/large", rng.randbytes(200 * 1024), contents)
    _put(root, "d4/large-copy", contents["d4/large"], contents)
    _put(root, "d4/several-chunks", rng.randbytes(2 * 1024 * 1024 + 7), contents)
    _put(root, 'd5/quote".txt', b"a quote in the name", contents)
    _put(root, "d5/back\\slash", b"a backslash in the name", contents)
    _put(root, "d5/caf\u00e9-\u540d", b"not ASCII", contents)
    _put(root, b"d5/bytes-\xff\xfe", b"a name that is not UTF-8", contents)
    _put(root, "d5/new\nline\ttab", b"control characters in the name", contents)
    _put(root, "d5/ space ", b"spaces around the name", contents)
    _put(root, "d5/setuid", b"#!/bin/sh\n", contents, mode=0o4755)
    _put(root, "d5/private", b"secret", contents, mode=0o600)
    _put(root, "d5/epoch", b"a file of 1970", contents, mtime_ns=0)
    _put(root, "d5/nanoseconds", b"an odd time", contents, mtime_ns=1_234_567_890_123_456_789)
    return contents


def _init(path: Path, monkeypatch: pytest.MonkeyPatch, version: int = 3) -> Repository:
    with monkeypatch.context() as m:
        if version != repo_module.FORMAT_VERSION:
            m.setattr(repo_module, "FORMAT_VERSION", version)
        Repository.init(LocalStorage(str(path)), PASSWORD)
    repo = Repository.open(LocalStorage(str(path)), PASSWORD)
    assert repo.version == version and repo.writes_groups == (version >= 3)
    return repo


def _backup(repo: Repository, data: Path) -> Any:
    run = run_backup(repo, [FilesSource("data", FilesSource.Options(paths=[str(data)]))],
                     BackupOptions(env={"DRKIT_BACKUP_PROCESSES": "2"}))
    assert not run.failed and not run.outcomes[0].warnings
    return run.snapshots[0]


@pytest.fixture
def worker_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many files the worker processes read in runs, and how many of those were
    sealed in groups (a backup that never started its workers would test nothing)."""
    counts = {"runs": 0, "grouped": 0}
    real_submit_files, real_seal_groups = BlobSaver.submit_files, SealWorkers.seal_groups

    def submit_files(self: BlobSaver, files: list[tuple[bytes, int, int]]) -> Any:
        counts["runs"] += len(files)
        return real_submit_files(self, files)

    def seal_groups(self: SealWorkers, files: list[tuple[bytes, int, int]]) -> Any:
        counts["grouped"] += len(files)
        return real_seal_groups(self, files)

    monkeypatch.setattr(BlobSaver, "submit_files", submit_files)
    monkeypatch.setattr(SealWorkers, "seal_groups", seal_groups)
    return counts


def _file_state(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """(content, mode, mtime) of every regular file under *root*, by relative path."""
    out = {}
    for dirpath, _dirs, files in os.walk(os.fsencode(root)):
        for name in files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            with open(path, "rb") as f:
                out[os.fsdecode(os.path.relpath(path, os.fsencode(root)))] = (f.read(), st.st_mode, st.st_mtime_ns)
    return out


def _restore(repo: Repository, snap: Any, target: Path, data: Path, processes: int) -> dict[str, tuple[bytes, int, int]]:
    SnapshotReader(repo, snap, target=target, processes=processes).write_entries(target)
    return _file_state(target / str(data).lstrip("/"))


def _trailers(repo: Repository) -> dict[str, list[PackEntry]]:
    """Every pack's trailer, read from the pack itself (checked against its name)."""
    return {pack_id: repo.pack_entries(pack_id, repo.read_pack(pack_id)) for pack_id in repo.index.packs()}


def _check_pack_layout(repo: Repository, trailers: dict[str, list[PackEntry]]) -> dict[tuple[str, int, int], list[PackEntry]]:
    """Check the packs against their trailers and the index, and return the groups
    ((pack, offset, length): the members listed): the index rows are the trailers'
    entries; each chunk is listed once in the repository; the blobs and groups of a
    pack tile it from its magic to its trailer (no unlisted bytes, no overlap but a
    group's members sharing its range); every listed member is in its group's header
    with its raw length; a group's plaintext is at most GROUP_MAX_BYTES."""
    listed = Counter(e.id for entries in trailers.values() for e in entries)
    assert max(listed.values()) == 1, "a chunk listed twice"
    assert sum(listed.values()) == len(repo.index)
    groups: dict[tuple[str, int, int], list[PackEntry]] = defaultdict(list)
    for pack_id, entries in trailers.items():
        for e in entries:
            loc = repo.index.get(e.id)
            assert loc is not None and tuple(loc) == (pack_id, e.blob_type, e.offset, e.length, e.raw_length)
            if e.blob_type == BLOB_GROUP:
                groups[(pack_id, e.offset, e.length)].append(e)
        data = (repo.storage.get(layout.pack_name(pack_id)))
        assert data.startswith(MAGIC_V2)
        trailer_len = struct.unpack_from("<I", data, len(data) - 4)[0]
        ranges = sorted({(e.offset, e.length) for e in entries})
        at = len(MAGIC_V2)
        for offset, length in ranges:
            assert offset == at, f"pack {pack_id[:8]}: a gap or an overlap at {offset}"
            at += length
        assert at == len(data) - 4 - trailer_len
    for (pack_id, offset, length), members in groups.items():
        sealed = repo.storage.get(layout.pack_name(pack_id), offset, length)
        plain = _open_plain(repo.codec, sealed)
        assert len(plain) <= GROUP_MAX_BYTES
        table = group_table(plain)
        assert struct.unpack_from("<I", plain)[0] == len(table), "a chunk twice in one group"
        for e in members:
            start, size = table[e.id]
            assert size == e.raw_length
            assert repo.hasher(plain[start : start + size]) == e.id
            assert repo.codec.decode(BLOB_GROUP, e.id, sealed, e.raw_length) == plain[start : start + size]
    return groups


def test_a_backup_into_a_version_3_repository_groups_small_files_and_restores_exactly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, worker_reads: dict[str, int]) -> None:
    """The workers read most small files in runs and seal them in groups: type-2
    entries in the trailers and the index, several members to a group, sharing its
    range; only small files' chunks in groups, never trees, large files or a chunk
    twice; a restore (threads, and worker processes) gives every file's bytes, mode
    and mtime; verify --read-data finds nothing."""
    data = tmp_path / "data"
    contents = _small_tree(data)
    want = _file_state(data)
    repo = _init(tmp_path / "repo", monkeypatch)
    snap = _backup(repo, data)
    assert worker_reads["grouped"] == worker_reads["runs"] >= 700, worker_reads
    assert snap.stats["files_new"] == len(contents)
    assert snap.stats["size"] == sum(map(len, contents.values()))

    trailers = _trailers(repo)
    groups = _check_pack_layout(repo, trailers)
    by_id = {e.id: e for entries in trailers.values() for e in entries}
    ids = {rel: repo.hasher(payload) for rel, payload in contents.items() if payload and len(payload) < 512 * 1024}
    grouped = {e.id for e in by_id.values() if e.blob_type == BLOB_GROUP}
    small_ids = {cid for rel, cid in ids.items() if len(contents[rel]) < SMALL}
    assert len(grouped) >= 0.75 * len(small_ids), (len(grouped), len(small_ids))
    assert grouped <= small_ids, "only small files' chunks in groups"
    assert len(groups) >= 3 and max(len(m) for m in groups.values()) >= 20, sorted(len(m) for m in groups.values())
    assert sum(len(m) for m in groups.values()) == len(grouped)
    sizes = [len(_open_plain(repo.codec, repo.storage.get(layout.pack_name(p), o, n))) for p, o, n in groups]
    assert GROUP_MAX_BYTES - RUN_FILE_MAX - 36 < max(sizes) <= GROUP_MAX_BYTES, "groups are filled up to the bound"
    for rel in ("d4/largest-small", "d5/new\nline\ttab", "d5/caf\u00e9-\u540d", "d5/epoch"):
        assert by_id[ids[rel]].blob_type == BLOB_GROUP, rel
    for rel in ("d4/smallest-large", "d4/large"):
        assert by_id[ids[rel]].blob_type == BLOB_DATA, rel
    assert by_id[ids["d3/same-a"]].blob_type == BLOB_GROUP
    assert ids["d3/same-a"] == ids["d5/same-c"] and ids["d4/large"] == ids["d4/large-copy"]
    tree_ids = {bytes.fromhex(t) for t in snap.tree}
    assert tree_ids and all(by_id[t].blob_type == BLOB_TREE for t in tree_ids)
    assert all(len(cid) == 32 for cid in by_id)
    assert set(by_id) >= set(ids.values())

    assert _restore(repo, snap, tmp_path / "threads", data, processes=0) == want
    lane: list[int] = []
    real_run = FileWorkers.run

    def run(self: FileWorkers, pack_id: str, ordered: list[Any], stop: Any) -> Any:
        lane.extend(u.blob_type for u in ordered)
        return real_run(self, pack_id, ordered, stop)

    monkeypatch.setattr(FileWorkers, "run", run)
    assert _restore(repo, snap, tmp_path / "processes", data, processes=2) == want
    assert lane.count(BLOB_GROUP) >= 0.75 * len(grouped), "the worker processes wrote the group members"
    fresh = Repository.open(LocalStorage(str(tmp_path / "repo")), PASSWORD)
    fresh.load_index()
    for rel in ["d0/f0003", "d4/largest-small", "d3/same-b", *(r for r in sorted(ids) if r.startswith("d5/"))]:
        assert fresh.read_blob(ids[rel]) == contents[rel], rel  # (members of one group one after another)
    report = verify_repository(fresh, read_data=True, state_dir=tmp_path / "state")
    assert report.ok and not report.problems, report.problems


def test_a_version_2_repository_gets_no_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               worker_reads: dict[str, int]) -> None:
    """The same backup into a version-2 repository: the workers read the same runs of
    small files but seal a blob for each (type 0), and it restores exactly."""
    data = tmp_path / "data"
    contents = _small_tree(data)
    want = _file_state(data)
    repo = _init(tmp_path / "repo", monkeypatch, version=2)
    snap = _backup(repo, data)
    assert worker_reads["runs"] >= 700 and worker_reads["grouped"] == 0, worker_reads
    trailers = _trailers(repo)
    assert not _check_pack_layout(repo, trailers)
    types = Counter(e.blob_type for entries in trailers.values() for e in entries)
    assert set(types) == {BLOB_DATA, BLOB_TREE}, types
    assert not any(loc.blob_type == BLOB_GROUP for _, loc in repo.index.items())
    chunks = {bytes.fromhex(c) for entry in iter_tree(repo, snap) for c in entry.chunks}
    assert {e.id for entries in trailers.values() for e in entries if e.blob_type == BLOB_DATA} == chunks
    assert len(chunks) > len({payload for payload in contents.values() if payload})  # (one file of several chunks)
    assert _restore(repo, snap, tmp_path / "target", data, processes=0) == want
    assert Repository.open(LocalStorage(str(tmp_path / "repo")), PASSWORD).version == 2


def test_a_second_backup_stores_only_the_chunks_it_has_not_got(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               worker_reads: dict[str, int]) -> None:
    """After a first backup, three files change (changed files are not read in runs:
    blobs of their own), 150 new small files come (a third with contents the repository
    has) and a directory of 130 copies of stored files: the second backup lists exactly
    the 103 new chunks, once, in new packs; every chunk of the first backup keeps its
    entry; once the workers read, every new small file is a group member; a known chunk
    read in a run sits in its group unlisted; the run of copies stores nothing; both
    snapshots restore exactly."""
    data = tmp_path / "data"
    contents = _small_tree(data)
    first_contents, first_state = dict(contents), _file_state(data)
    repo = _init(tmp_path / "repo", monkeypatch)
    first = _backup(repo, data)
    before = dict(repo.index.items())
    packs_before = set(repo.index.packs())

    changed = {"d1/f0005": b"changed content of a small file",
               "d2/f0100": b"changed " * 500,
               "d4/large": os.urandom(150 * 1024)}
    for rel, payload in changed.items():
        _put(data, rel, payload, contents)
    new_files: dict[str, bytes] = {}
    for i in range(150):  # new small files, walked after the rest
        payload = b"new file %d\n" % i * (1 + i % 40) if i % 3 else first_contents[f"d0/f{i % 140:04d}"]
        _put(data, f"z-new/n{i:03d}", payload, new_files)
    copies: dict[str, bytes] = {}
    for i in range(130):
        _put(data, f"zz-copies/c{i:03d}", first_contents[f"d2/f{i:04d}"], copies)
    contents.update(new_files | copies)
    want = _file_state(data)
    runs_before = worker_reads["runs"]
    second = _backup(repo, data)
    assert worker_reads["runs"] - runs_before >= 200, worker_reads
    assert second.stats["files_new"] == len(new_files) + len(copies) and second.stats["files_changed"] == len(changed)

    after = dict(repo.index.items())
    assert all(after[cid] == loc for cid, loc in before.items()), "a chunk of the first backup moved"
    new_data = {cid: loc for cid, loc in after.items() if cid not in before and loc.blob_type != BLOB_TREE}
    expected = {repo.hasher(p) for p in list(changed.values()) + list(new_files.values())} - set(before)
    assert set(new_data) == expected and len(expected) == 3 + 100
    assert all(repo.hasher(p) in before for p in copies.values())
    for payload in changed.values():
        assert new_data[repo.hasher(payload)].blob_type == BLOB_DATA
    walked = [(i, new_data[repo.hasher(new_files[f"z-new/n{i:03d}"])].blob_type) for i in range(150) if i % 3]
    first_grouped = next(i for i, blob_type in walked if blob_type == BLOB_GROUP)
    assert all(blob_type == BLOB_GROUP for i, blob_type in walked if i > first_grouped), walked
    assert sum(blob_type == BLOB_GROUP for _, blob_type in walked) >= 30, walked

    trailers = _trailers(repo)
    new_packs = set(trailers) - packs_before
    listed_new = {e.id for pack_id in new_packs for e in trailers[pack_id]}
    assert listed_new - {bytes.fromhex(t) for t in second.tree} == expected
    groups = _check_pack_layout(repo, trailers)
    new_groups = {key: members for key, members in groups.items() if key[0] in new_packs}
    assert {e.id for members in new_groups.values() for e in members} == {
        cid for cid, loc in new_data.items() if loc.blob_type == BLOB_GROUP}
    unlisted: set[bytes] = set()
    for (pack_id, offset, length), members in new_groups.items():
        held = set(group_table(_open_plain(repo.codec, repo.storage.get(layout.pack_name(pack_id), offset, length))))
        assert held >= {e.id for e in members}
        unlisted |= held - {e.id for e in members}
    known = {i: repo.hasher(new_files[f"z-new/n{i:03d}"]) for i in range(0, 150, 3)}
    assert set(known.values()) <= set(before)
    in_runs = {cid for i, cid in known.items() if i > first_grouped}
    assert len(in_runs) >= 15 and in_runs <= unlisted <= set(known.values()), \
        "the known chunks read in runs sit in their groups unlisted"

    assert _restore(repo, second, tmp_path / "second", data, processes=0) == want
    assert _restore(repo, first, tmp_path / "first", data, processes=2) == first_state
    assert verify_repository(repo, read_data=True, state_dir=tmp_path / "state").ok


# -- damage -------------------------------------------------------------------------


@contextlib.contextmanager
def _restore_errors() -> Iterator[list[str]]:
    """The lines a restore logs for the files it does not restore."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("not restored: "):
                lines.append(record.getMessage())

    handler, logger = Keep(), logging.getLogger("drkit.restore")
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def _cli(tmp_path: Path, *args: object) -> CliResult:
    """``drkit -c CONFIG ARGS`` for the repository and the data under *tmp_path*."""
    ws = Workspace(tmp_path, tmp_path / "data", tmp_path / "repo", tmp_path / "drkit.yaml")
    if not ws.config.exists():
        ws.write_config()
    return invoke("-c", ws.config, *args, env={"DRKIT_PASSWORD": PASSWORD})


def test_damage_inside_a_group_is_found_and_never_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          worker_reads: dict[str, int]) -> None:
    """``drkit verify --read-data`` passes on a version-3 repository; after one byte
    inside a group's ciphertext is flipped on disk it reports the pack (non-zero exit);
    a restore then fails every file of that group with an error naming the pack, writes
    none of them, and restores the rest exactly."""
    data = tmp_path / "data"
    contents = _small_tree(data)
    want = _file_state(data)
    repo = _init(tmp_path / "repo", monkeypatch)
    _backup(repo, data)
    assert worker_reads["grouped"] >= 700

    ok = _cli(tmp_path, "verify", "--read-data")
    assert ok.code == 0, ok.text
    trailers = _trailers(repo)
    groups = _check_pack_layout(repo, trailers)
    (pack_id, offset, length), members = max(groups.items(), key=lambda kv: len(kv[1]))
    assert len(members) >= 5
    path = tmp_path / "repo" / layout.pack_name(pack_id)
    damaged = bytearray(path.read_bytes())
    damaged[offset + length // 2] ^= 0x10  # in the ciphertext, away from the nonce and the tag
    path.chmod(0o644)
    path.write_bytes(bytes(damaged))
    assert hashlib.sha256(damaged).hexdigest() != pack_id

    bad = _cli(tmp_path, "verify", "--read-data")
    assert bad.code != 0, bad.text
    assert pack_id in bad.text, bad.text
    report = verify_repository(Repository.open(LocalStorage(str(tmp_path / "repo")), PASSWORD), read_data=True,
                               state_dir=tmp_path / "state")
    assert not report.ok and any(pack_id in p.object for p in report.problems), report.problems

    with pytest.raises(IntegrityError, match="trailer: authentication failed"):
        repo.pack_entries(pack_id, bytes(damaged))  # (a v2 trailer is bound to the pack's bytes)
    with pytest.raises(IntegrityError, match="group: authentication failed"):  # each blob checked as a backup's adoption does
        repo.check_pack_blobs(pack_id, bytes(damaged), trailers[pack_id])

    member_ids = {e.id for e in members}
    hit = {rel for rel, payload in contents.items() if payload and repo.hasher(payload) in member_ids}
    assert len(hit) >= len(members)
    for processes in (0, 2):
        reader_repo = Repository.open(LocalStorage(str(tmp_path / "repo")), PASSWORD)
        reader_repo.load_index()
        snap = reader_repo.find_snapshot("latest")
        target = tmp_path / f"target-{processes}"
        with _restore_errors() as named, \
                pytest.raises(IntegrityError, match="not restored because their data is damaged") as failed:
            SnapshotReader(reader_repo, snap, target=target, processes=processes).write_entries(target)
        assert f"{len(hit)} file(s)" in str(failed.value)
        assert len(named) == len(hit), named[:3]
        assert all(pack_id in line and "group: authentication failed" in line for line in named), named[:3]
        assert {line.split(": ")[1][len(str(data)) + 1 :] for line in named} == hit
        got = _file_state(target / str(data).lstrip("/"))
        assert not hit & set(got), f"damaged files written: {sorted(hit & set(got))[:5]}"
        assert got == {rel: state for rel, state in want.items() if rel not in hit}
    r = _cli(tmp_path, "restore", "latest", "-s", "data", "--target", tmp_path / "cli-target")
    assert r.code != 0 and pack_id in r.text, r.text
    got = _file_state(tmp_path / "cli-target" / str(data).lstrip("/"))
    assert not hit & set(got) and len(got) == len(want) - len(hit)
    some = next(iter(member_ids))
    reader_repo = Repository.open(LocalStorage(str(tmp_path / "repo")), PASSWORD)
    reader_repo.load_index()
    with pytest.raises(IntegrityError):
        reader_repo.read_blob(some)
