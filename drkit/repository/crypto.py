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
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:  # imported where used: only recipient-mode repositories need it
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

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
KIND_CONFIG = b"config"


def canonical_json(doc: object) -> bytes:
    """The one byte form of a JSON document that is authenticated (format v2): keys
    sorted, no spaces, UTF-8."""
    import json

    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class DecryptError(Exception):
    """An object failed authentication (wrong key, or damaged bytes)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


@dataclass(frozen=True)
class MasterKey:
    """The repository's secret material, stored wrapped in every key slot.

    In recipient mode, ``data_key`` only protects index files and pack trailers
    (what a writer needs to deduplicate); content is sealed to ``recipient``."""

    data_key: bytes
    id_key: bytes
    chunker_seed: int
    recipient: bytes | None = None
    min_version: int = 1
    """The lowest format version a config opened with this key may claim (format v2:
    2, so that a config rolled back to version 1 is refused)."""

    @classmethod
    def generate(cls) -> "MasterKey":
        return cls(
            data_key=os.urandom(32),
            id_key=os.urandom(32),
            chunker_seed=int.from_bytes(os.urandom(8), "little") >> 1,  # fits a C long
        )

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "data_key": _b64(self.data_key),
            "id_key": _b64(self.id_key),
            "chunker_seed": self.chunker_seed,
        }
        if self.recipient is not None:
            doc["recipient"] = _b64(self.recipient)
        if self.min_version > 1:
            doc["min_version"] = self.min_version
        return doc

    @classmethod
    def from_json(cls, data: dict[str, object]) -> "MasterKey":
        seed = data["chunker_seed"]
        if not isinstance(seed, (int, str)):
            raise ValueError(f"chunker_seed must be an integer, not {type(seed).__name__}")
        return cls(
            data_key=_unb64(str(data["data_key"])),
            id_key=_unb64(str(data["id_key"])),
            chunker_seed=int(seed),
            recipient=_unb64(str(data["recipient"])) if data.get("recipient") else None,
            min_version=int(str(data.get("min_version", 1))),
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
            return self._aead.decrypt(sealed[1 : 1 + NONCE_SIZE], sealed[1 + NONCE_SIZE :], associated)
        except InvalidTag:
            raise DecryptError("authentication failed") from None


class ChunkHasher:
    """Keyed BLAKE3 chunk ids. Thread-safe (stateless per call)."""

    def __init__(self, id_key: bytes) -> None:
        self._key = id_key

    def __call__(self, data: bytes | memoryview) -> bytes:
        return blake3.blake3(data, key=self._key).digest()


# -- recipient (public-key) mode ------------------------------------------------
#
# Content (blobs, manifests) is sealed to an X25519 recipient: per writer session, an
# ephemeral key pair is made; the session key is HKDF-SHA256 of the X25519 shared
# secret. The envelope is then:
#
#     scheme 0x02 | ephemeral public key (32) | nonce (12) | ciphertext || tag (16)
#
# The writer forgets the ephemeral private key when the session ends, so a backup
# host that holds only the recipient cannot open anything it stored, not even what
# it wrote itself. Only the identity (the X25519 private key) opens scheme 0x02.

SCHEME_RECIPIENT = 0x02
RECIPIENT_PREFIX = "drkit-recipient-v1:"
_HKDF_INFO = b"drkit recipient session key v1"


class IdentityMissing(Exception):
    """A scheme 0x02 object was met without the identity that opens it."""


def _session_key(shared: bytes, epk: bytes, recipient: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=epk + recipient, info=_HKDF_INFO).derive(shared)


def encode_recipient(public: bytes) -> str:
    return RECIPIENT_PREFIX + base64.urlsafe_b64encode(public).decode("ascii").rstrip("=")


def decode_recipient(text: str) -> bytes:
    """Parse a recipient string; ValueError if malformed."""
    text = text.strip()
    if not text.startswith(RECIPIENT_PREFIX):
        raise ValueError(f"a recipient starts with {RECIPIENT_PREFIX!r}")
    body = text[len(RECIPIENT_PREFIX) :]
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    if len(raw) != 32:
        raise ValueError("a recipient holds a 32-byte X25519 public key")
    return raw


class RecipientCipher:
    """Seals to a recipient; opens only with the identity (or this session's own key,
    for the verification of what it is about to upload). Thread-safe."""

    def __init__(self, recipient: bytes, identity: X25519PrivateKey | None = None) -> None:
        self.recipient = recipient
        self.identity = identity
        self._session: tuple[bytes, AESGCM, bytes] | None = None
        """(ephemeral public key, its AEAD, the AES key): one tuple, replaced whole."""
        self._opened: dict[bytes, AESGCM] = {}
        self._lock = threading.Lock()

    @classmethod
    def in_session(cls, recipient: bytes, epk: bytes, key: bytes) -> "RecipientCipher":
        """A cipher that seals in a session another process made (:meth:`session_secret`):
        a backup worker. It opens what it sealed (to verify it), nothing else."""
        cipher = cls(recipient)
        cipher._session = (epk, AESGCM(key), key)
        return cipher

    def session_secret(self) -> tuple[bytes, bytes]:
        """This session's ephemeral public key and AES key (the session is made now if
        there is none): for a backup worker process that seals in it, sent over its
        socket pair. It is gone from this process at :meth:`end_session`, and from a
        worker when it exits."""
        with self._lock:
            epk, _aead, key = self._new_session()
        return epk, key

    def _current(self) -> tuple[bytes, AESGCM, bytes]:
        session = self._session
        if session is not None:
            return session
        with self._lock:  # sealing threads must agree on one session key
            return self._new_session()

    def _new_session(self) -> tuple[bytes, AESGCM, bytes]:
        if self._session is None:
            from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
            from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

            esk = X25519PrivateKey.generate()
            epk = esk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            shared = esk.exchange(X25519PublicKey.from_public_bytes(self.recipient))
            key = _session_key(shared, epk, self.recipient)
            self._session = (epk, AESGCM(key), key)
        return self._session

    def end_session(self) -> None:
        """Forget the session key: nothing sealed so far can be opened without the identity."""
        self._session = None

    def seal(self, plaintext: bytes | memoryview, associated: bytes) -> bytes:
        epk, aead, _key = self._current()
        nonce = os.urandom(NONCE_SIZE)
        return bytes((SCHEME_RECIPIENT,)) + epk + nonce + aead.encrypt(nonce, bytes(plaintext), associated)

    def open(self, sealed: bytes | memoryview, associated: bytes) -> bytes:
        sealed = memoryview(sealed)
        if len(sealed) < 1 + 32 + OVERHEAD - 1 or sealed[0] != SCHEME_RECIPIENT:
            raise DecryptError("unknown encryption scheme or truncated object")
        epk = bytes(sealed[1:33])
        aead = self._aead_for(epk)
        body = sealed[33:]
        try:
            return aead.decrypt(body[:NONCE_SIZE], body[NONCE_SIZE:], associated)
        except InvalidTag:
            raise DecryptError("authentication failed") from None

    def _aead_for(self, epk: bytes) -> AESGCM:
        session = self._session
        if session is not None and session[0] == epk:
            return session[1]
        aead = self._opened.get(epk)
        if aead is None:
            if self.identity is None:
                raise IdentityMissing()
            from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

            shared = self.identity.exchange(X25519PublicKey.from_public_bytes(epk))
            aead = AESGCM(_session_key(shared, epk, self.recipient))
            if len(self._opened) < 4096:
                self._opened[epk] = aead
        return aead
