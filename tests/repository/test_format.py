"""Unit tests of the format pieces: envelope, blobs, packs, index files, key slots."""

from __future__ import annotations

import os

import pytest

from drkit.errors import RepositoryExists, RepositoryNotFound, UsageError, WrongKey
from drkit.repository import keys as keyslots
from drkit.repository.blob import BLOB_DATA, BLOB_TREE, BlobCodec, BlobError
from drkit.repository.crypto import KIND_INDEX, ChunkHasher, Cipher, DecryptError, MasterKey, aad
from drkit.repository.index import decode_index_file, encode_index_file
from drkit.repository.pack import MAGIC, PackBuilder, PackFormatError, read_trailer
from drkit.repository.repo import Repository
from drkit.storage import LocalStorage


@pytest.fixture
def codec() -> BlobCodec:
    m = MasterKey.generate()
    return BlobCodec(Cipher(m.data_key), ChunkHasher(m.id_key), level=3)


def test_envelope_round_trip_and_binding() -> None:
    c = Cipher(os.urandom(32))
    sealed = c.seal(b"payload", aad(KIND_INDEX, b"x"))
    assert sealed[0] == 1 and len(sealed) == 1 + 12 + 7 + 16
    assert c.open(sealed, aad(KIND_INDEX, b"x")) == b"payload"
    with pytest.raises(DecryptError):
        c.open(sealed, aad(KIND_INDEX, b"y"))  # bound to its name
    with pytest.raises(DecryptError):
        Cipher(os.urandom(32)).open(sealed, aad(KIND_INDEX, b"x"))
    tampered = bytearray(sealed)
    tampered[20] ^= 1
    with pytest.raises(DecryptError):
        c.open(bytes(tampered), aad(KIND_INDEX, b"x"))


def test_chunk_ids_are_keyed() -> None:
    a, b = ChunkHasher(os.urandom(32)), ChunkHasher(os.urandom(32))
    assert a(b"same") != b(b"same") and a(b"same") == a(b"same") and len(a(b"x")) == 32


def test_blob_compression_choice(codec: BlobCodec) -> None:
    text = b"compressible line\n" * 10000
    noise = os.urandom(300_000)
    for data, flag in ((text, 1), (noise, 0), (b"", 0)):
        cid = codec.hasher(data)
        sealed = codec.encode(BLOB_DATA, cid, data)
        assert codec.decode(BLOB_DATA, cid, sealed) == data
        assert codec.cipher.open(sealed, __import__("drkit.repository.blob", fromlist=["blob_aad"]).blob_aad(BLOB_DATA, cid))[0] == flag
    assert len(codec.encode(BLOB_DATA, codec.hasher(text), text)) < len(text) // 10


def test_blob_decode_detects_wrong_type_id_and_damage(codec: BlobCodec) -> None:
    data = b"x" * 1000
    cid = codec.hasher(data)
    sealed = codec.encode(BLOB_DATA, cid, data)
    with pytest.raises(BlobError):
        codec.decode(BLOB_TREE, cid, sealed)
    with pytest.raises(BlobError):
        codec.decode(BLOB_DATA, codec.hasher(b"other"), sealed)
    bad = bytearray(sealed)
    bad[-20] ^= 0x40
    with pytest.raises(BlobError):
        codec.decode(BLOB_DATA, cid, bytes(bad))


def test_pack_trailer_round_trip_and_damage(codec: BlobCodec) -> None:
    b = PackBuilder()
    blobs = [os.urandom(1000 + i) for i in range(5)]
    for data in blobs:
        cid = codec.hasher(data)
        b.add(BLOB_DATA, cid, codec.encode(BLOB_DATA, cid, data), len(data))
    pack_id, raw = b.finish(codec.cipher)
    assert raw.startswith(MAGIC)
    entries = read_trailer(raw, codec.cipher)
    assert [codec.decode(e.blob_type, e.id, raw[e.offset : e.offset + e.length]) for e in entries] == blobs
    with pytest.raises(PackFormatError):
        read_trailer(raw[:-3], codec.cipher)
    with pytest.raises(PackFormatError):
        read_trailer(b"NOTAPACK" + raw[8:], codec.cipher)
    bad = bytearray(raw)
    bad[-30] ^= 1  # inside the sealed trailer
    with pytest.raises(PackFormatError):
        read_trailer(bytes(bad), codec.cipher)


def test_index_file_round_trip() -> None:
    from drkit.repository.pack import PackEntry

    packs = [("a" * 64, 123, [PackEntry(0, b"\x01" * 32, 8, 50, 40), PackEntry(1, b"\x02" * 32, 58, 10, 9)])]
    got, supersedes = decode_index_file(encode_index_file(packs, ["b" * 64]))
    assert got == packs and supersedes == ["b" * 64]
    with pytest.raises(ValueError):
        decode_index_file(b"garbage")


def test_key_slots_add_list_remove(tmp_path) -> None:
    storage = LocalStorage(tmp_path / "repo")
    repo = Repository.init(storage, "first")
    with pytest.raises(RepositoryExists):
        Repository.init(storage, "again")
    second = repo.add_key("second", label="offsite")
    assert {k["label"] for k in repo.list_keys()} == {"initial", "offsite"}
    # Both passphrases open the same master key.
    assert Repository.open(storage, "second").master.data_key == repo.master.data_key
    with pytest.raises(UsageError):
        repo.remove_key(repo.key_id)  # the slot in use
    other = Repository.open(storage, "second")
    other.remove_key(repo.key_id[:12])
    with pytest.raises(WrongKey):
        Repository.open(storage, "first")
    assert [k["id"] for k in other.list_keys()] == [second]


def test_open_missing_repository(tmp_path) -> None:
    with pytest.raises(RepositoryNotFound):
        Repository.open(LocalStorage(tmp_path / "nothing"), "pw")


def test_slot_stores_its_kdf_parameters() -> None:
    m = MasterKey.generate()
    _id, raw = keyslots.make_slot(m, "pw", params=keyslots.KdfParams(n=2**10, r=8, p=1))
    doc = keyslots.parse_slot(raw)
    assert (doc["n"], doc["r"], doc["p"]) == (1024, 8, 1)
    assert keyslots.open_slot(doc, "pw") == m
    assert keyslots.open_slot(doc, "nope") is None
    assert b"data_key" not in raw  # the master key is only stored sealed


def test_compiled_fastcdc_is_loaded() -> None:
    import pyfastcdc

    assert pyfastcdc.FastCDC.__module__.startswith("pyfastcdc.cy"), "the pure-Python fallback would be far too slow"


def test_chunk_running_from_random_data_into_zeros_is_compressed(codec: BlobCodec) -> None:
    """A volume image's chunk can start in data and end in zeros: judged by its head
    alone it would be stored raw, wasting the zeros."""
    data = os.urandom(512 * 1024) + bytes(1024 * 1024)
    packed = codec.compress(data)
    assert packed[0] == 1 and len(packed) < 600 * 1024
    noise = os.urandom(2 * 1024 * 1024)
    assert codec.compress(noise)[0] == 0


def test_recipient_mode_sealing_threads_share_one_session() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from drkit.repository.crypto import IdentityMissing, RecipientCipher

    identity = X25519PrivateKey.generate()
    public = identity.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    for _ in range(20):
        writer = RecipientCipher(public)
        with ThreadPoolExecutor(8) as pool:
            sealed = list(pool.map(lambda i, w=writer: w.seal(b"x%d" % i, b"ad"), range(8)))
        assert len({s[1:33] for s in sealed}) == 1
        for i, s in enumerate(sealed):
            assert writer.open(s, b"ad") == b"x%d" % i  # the writer verifies its own session
    writer.end_session()
    with pytest.raises(IdentityMissing):
        writer.open(sealed[0], b"ad")
    assert RecipientCipher(public, identity).open(sealed[0], b"ad") == b"x0"


def test_entry_json_is_the_asdict_encoding_byte_for_byte() -> None:
    """Tree blobs deduplicate across snapshots only if an unchanged entry encodes to the same
    bytes: the fast encoder must equal the original asdict-based one for every field shape."""
    import dataclasses
    import json

    from drkit.repository.tree import DIR, FILE, SYMLINK, Entry

    def reference(e: Entry) -> str:
        data = {k: v for k, v in dataclasses.asdict(e).items() if v not in ("", 0, []) or k in ("path", "type")}
        return json.dumps(data, separators=(",", ":"), ensure_ascii=True)

    samples = [
        Entry(path="/srv/d/f", type=FILE, mode=0o640, uid=1000, gid=1000, user="u", group="g", mtime_ns=1_700_000_000_123_456_789,
              size=5, chunks=["ab" * 32, "cd" * 32], inode=42, ctime_ns=9, dev=2049),
        Entry(path="/srv/d", type=DIR, mode=0o755),
        Entry(path="l\u00e9", type=SYMLINK, mode=0o777, target="../x \"quoted\" \\ back"),
        Entry(path="state.db", type=FILE),
        Entry(path="", type=FILE, size=0, chunks=[]),
    ]
    for e in samples:
        assert e.to_json() == reference(e)
        assert Entry.from_json(e.to_json()) == e
    no_mode = Entry(path="/x", type=FILE, mode=0)  # chmod 000: written out, read back as 0
    assert no_mode.to_json() == '{"path":"/x","type":"file","mode":0}'
    assert Entry.from_json(no_mode.to_json()).mode == 0


def test_index_locations_round_trip_through_their_packed_form() -> None:
    from drkit.repository.index import Index
    from drkit.repository.pack import PackEntry

    index = Index()
    big = PackEntry(2, b"\x01" * 32, 2**32 - 1, 8 * 1024 * 1024 + 40, 2**32 - 1)  # in memory: any u32
    index.add_pack("p" * 64, 10, [PackEntry(1, b"\x00" * 32, 0, 1, 0), big])
    index.add_pack("q" * 64, 20, [PackEntry(1, b"\x00" * 32, 7, 7, 7)])  # a second copy: the first stays
    loc = index.get(b"\x01" * 32)
    assert loc is not None and (loc.pack, loc.blob_type, loc.offset, loc.length, loc.raw_length) == (
        "p" * 64, 2, 2**32 - 1, 8 * 1024 * 1024 + 40, 2**32 - 1)
    first = index.get(b"\x00" * 32)
    assert first is not None and (first.pack, first.offset, first.length, first.raw_length) == ("p" * 64, 0, 1, 0)
    assert index.entries_by_pack() == {"p" * 64: [PackEntry(1, b"\x00" * 32, 0, 1, 0), big], "q" * 64: []}
    with pytest.raises(ValueError, match="out of range"):
        index.add_pack("r" * 64, 1, [PackEntry(1, b"\x02" * 32, 2**32, 1, 1)])


@pytest.mark.parametrize("blob", [[1, "00" * 32, 2**40, 1, 1], [1, "00" * 32, -1, 1, 1], [99, "00" * 32, 0, 1, 1], [1, "00" * 31, 0, 1, 1],
                                  [1, "00" * 32, 0, 2**32 - 1, 1], [1, "00" * 32, 0, 1, 2**31]])
def test_an_index_file_with_out_of_range_numbers_is_malformed(blob: list[object]) -> None:
    """An index file is written by whoever holds the index key (in recipient mode, the
    backup host): its numbers are bounded before they are used."""
    import json

    import zstandard

    doc = {"version": 1, "supersedes": [], "packs": [{"id": "p" * 64, "size": 1, "blobs": [blob]}]}
    with pytest.raises(ValueError, match="malformed index file"):
        decode_index_file(zstandard.ZstdCompressor().compress(json.dumps(doc).encode()))
