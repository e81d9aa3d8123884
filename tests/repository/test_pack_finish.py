"""PackBuilder.finish hashes the pack once: its id is still the SHA-256 of every byte, and
the trailer check still runs against the bytes that leave (a digest handed to
read_trailer is used only where it belongs)."""

from __future__ import annotations

import hashlib
import os

import pytest

from drkit.repository.crypto import Cipher
from drkit.repository.pack import PackBuilder, PackFormatError, read_trailer


def build(version: int, cipher: Cipher) -> tuple[PackBuilder, str, bytes]:
    b = PackBuilder(version)
    for i in range(5):
        b.add(0, hashlib.sha256(bytes([i])).digest(), os.urandom(1000 + i * 777), 2000 + i)
    entries = list(b.entries)
    pack_id, data = b.finish(cipher)
    assert b.entries == entries
    return b, pack_id, data


@pytest.mark.parametrize("version", [1, 2])
def test_finish_names_the_pack_by_all_its_bytes_and_reads_back(version: int) -> None:
    cipher = Cipher(os.urandom(32))
    b, pack_id, data = build(version, cipher)
    assert pack_id == hashlib.sha256(data).hexdigest()
    assert read_trailer(data, cipher) == b.entries  # without any digest handed in


def test_a_head_digest_is_used_only_for_the_bytes_it_names() -> None:
    cipher = Cipher(os.urandom(32))
    b, _id, data = build(2, cipher)
    start = len(data) - 4 - int.from_bytes(data[-4:], "little")
    right = hashlib.sha256(data[:start]).digest()
    assert read_trailer(data, cipher, head_digest=(start, right)) == b.entries
    with pytest.raises(PackFormatError):  # a wrong digest for the real head: the trailer does not open
        read_trailer(data, cipher, head_digest=(start, hashlib.sha256(b"other").digest()))
    # A digest of some other prefix is ignored: the head is hashed as usual.
    assert read_trailer(data, cipher, head_digest=(start - 1, b"\0" * 32)) == b.entries
    # Bytes changed before the trailer: found when the head is hashed from the data.
    broken = bytearray(data)
    broken[20] ^= 1
    with pytest.raises(PackFormatError):
        read_trailer(bytes(broken), cipher)


class _FlippingCipher(Cipher):
    """A cipher whose trailer seals wrong (flips one plaintext bit first): authentic
    bytes that open to something other than what was meant, as a broken cipher or
    memory would give."""

    def seal(self, plaintext: bytes | memoryview, associated: bytes) -> bytes:
        flipped = bytearray(plaintext)
        flipped[-1] ^= 1
        return super().seal(bytes(flipped), associated)


class _ForgetfulCipher(Cipher):
    """A cipher whose sealed trailer does not open at all (its key changes after sealing)."""

    def seal(self, plaintext: bytes | memoryview, associated: bytes) -> bytes:
        sealed = super().seal(plaintext, associated)
        self._aead = Cipher(os.urandom(32))._aead
        return sealed


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("cipher_class", [_FlippingCipher, _ForgetfulCipher])
def test_a_trailer_that_does_not_read_back_stops_the_pack(version: int, cipher_class: type[Cipher]) -> None:
    b = PackBuilder(version)
    b.add(0, hashlib.sha256(b"x").digest(), os.urandom(500), 600)
    with pytest.raises(PackFormatError, match="does not read back"):
        b.finish(cipher_class(os.urandom(32)))


def test_a_trailer_whose_plaintext_is_cut_is_refused() -> None:
    cipher = Cipher(os.urandom(32))
    b = PackBuilder(2)
    head = b._reserve(0)[: b.size]
    from drkit.repository.crypto import KIND_TRAILER, aad

    trailer = cipher.seal(b"\x01\x00", aad(KIND_TRAILER, hashlib.sha256(head).digest()))  # shorter than its count
    data = head + trailer + len(trailer).to_bytes(4, "little")
    with pytest.raises(PackFormatError, match="wrong size"):
        read_trailer(data, cipher)
