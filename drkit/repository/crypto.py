"""Encryption and keyed hashing of repository objects.

Every encrypted object has the same envelope::

    scheme (1 byte, 0x01 = AES-256-GCM under the master data key)
    nonce  (12 random bytes)
    ciphertext || tag (16 bytes)

The associated data binds an object to its role and name, so an attacker with write
access to storage cannot swap a blob for another, or a manifest for another::

    b"drkit\\x01" + kind + b"\\x00" + name

Chunk ids are keyed BLAKE3 (32 bytes) of the plaintext under ``id_key``: they and the
chunker's gear seed reveal nothing about content to someone without the key.
Only primitives from ``cryptography`` and ``blake3`` are used.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT_VERSION = 1
SCHEME_AESGCM = 0x01
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = 1 + NONCE_SIZE + TAG_SIZE
_AAD_PREFIX = b"drkit\x01"

KIND_BLOB = b"blob"
KIND_TRAILER = b"trailer"
KIND_INDEX = b"index"
KIND_SNAPSHOT = b"snapshot"
KIND_KEY = b"key"


class DecryptError(Exception):
    """An object failed authentication (wrong key, or damaged bytes)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


@dataclass(frozen=True)
class MasterKey:
    """The repository's secret material, stored wrapped in every key slot."""

    data_key: bytes
    id_key: bytes
    chunker_seed: int

    @classmethod
    def generate(cls) -> "MasterKey":
        return cls(
            data_key=os.urandom(32),
            id_key=os.urandom(32),
            chunker_seed=int.from_bytes(os.urandom(8), "little") >> 1,  # fits a C long
        )

    def to_json(self) -> dict[str, object]:
        return {
            "data_key": _b64(self.data_key),
            "id_key": _b64(self.id_key),
            "chunker_seed": self.chunker_seed,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> "MasterKey":
        return cls(
            data_key=_unb64(str(data["data_key"])),
            id_key=_unb64(str(data["id_key"])),
            chunker_seed=int(data["chunker_seed"]),  # type: ignore[arg-type]
        )

    def __repr__(self) -> str:
        return "MasterKey(***)"


def aad(kind: bytes, name: bytes = b"") -> bytes:
    return _AAD_PREFIX + kind + b"\x00" + name


class Cipher:
    """Seal and open objects with AES-256-GCM under one key. Thread-safe."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("AES-256-GCM needs a 32-byte key")
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes | memoryview, associated: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return bytes((SCHEME_AESGCM,)) + nonce + self._aead.encrypt(nonce, bytes(plaintext), associated)

    def open(self, sealed: bytes | memoryview, associated: bytes) -> bytes:
        """Return the plaintext; raises DecryptError if the object is not authentic."""
        sealed = memoryview(sealed)
        if len(sealed) < OVERHEAD or sealed[0] != SCHEME_AESGCM:
            raise DecryptError("unknown encryption scheme or truncated object")
        try:
            return self._aead.decrypt(bytes(sealed[1 : 1 + NONCE_SIZE]), bytes(sealed[1 + NONCE_SIZE :]), associated)
        except InvalidTag:
            raise DecryptError("authentication failed") from None


class ChunkHasher:
    """Keyed BLAKE3 chunk ids. Thread-safe (stateless per call)."""

    def __init__(self, id_key: bytes) -> None:
        self._key = id_key

    def __call__(self, data: bytes | memoryview) -> bytes:
        return blake3.blake3(data, key=self._key).digest()
