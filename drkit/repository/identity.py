"""X25519 identities for recipient mode, and the key slot sealed to a recipient.

An identity file (``drkit key generate-identity --output FILE``) is JSON, mode 0600::

    {"version": 1, "type": "drkit-identity", "recipient": "drkit-recipient-v1:...",
     "private": "<base64 32 bytes>"}                        # unprotected, or
    {"version": 1, "type": "drkit-identity", "recipient": "...",
     "protected": {"kdf": "scrypt", "n":.., "r":.., "p":.., "salt": "..", "data": "<envelope>"}}

A recipient-mode repository has, besides the passphrase slot the backup host uses
(which wraps only index/dedup keys and the recipient), a slot of kind ``x25519``
whose ``data`` is the master key sealed to the recipient: the identity alone opens it.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from drkit.atomicio import write_atomic
from drkit.errors import Refused, UsageError, WrongKey
from drkit.repository import keys as keyslots
from drkit.repository.crypto import (
    KIND_KEY,
    Cipher,
    DecryptError,
    MasterKey,
    RecipientCipher,
    _b64,
    _unb64,
    aad,
    canonical_json,
    decode_recipient,
    encode_recipient,
)

_IDENTITY_AAD = aad(KIND_KEY, b"identity")
_RECIPIENT_SLOT_AAD = aad(KIND_KEY, b"recipient-slot")


@dataclass(frozen=True)
class Identity:
    private: X25519PrivateKey

    @property
    def public(self) -> bytes:
        return self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def recipient(self) -> str:
        return encode_recipient(self.public)

    def __repr__(self) -> str:
        return f"Identity({self.recipient})"


def generate_identity() -> Identity:
    return Identity(X25519PrivateKey.generate())


def write_identity(path: Path, identity: Identity, passphrase: str | None) -> None:
    """Write *identity* to *path* (0600, atomically); refuses to overwrite."""
    if path.exists():
        raise Refused(f"{path} already exists", hint="choose another --output; an identity is never overwritten")
    raw = identity.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    doc: dict[str, object] = {"version": 1, "type": "drkit-identity", "recipient": identity.recipient,
                              "created": datetime.now(timezone.utc).isoformat()}
    if passphrase:
        params = keyslots.DEFAULT_KDF
        salt = os.urandom(32)
        sealed = Cipher(keyslots._derive(passphrase, salt, params)).seal(raw, _IDENTITY_AAD)
        doc["protected"] = {"kdf": "scrypt", "n": params.n, "r": params.r, "p": params.p, "salt": _b64(salt), "data": _b64(sealed)}
    else:
        doc["private"] = _b64(raw)
    try:
        write_atomic(path, json.dumps(doc, indent=1), overwrite=False)
    except FileExistsError:
        raise Refused(f"{path} already exists", hint="choose another --output; an identity is never overwritten") from None


def load_identity(path: Path, passphrase: Callable[[], str]) -> Identity:
    """Read an identity file; asks *passphrase()* only if it is protected.
    Raises UsageError (unreadable/malformed) or WrongKey (bad passphrase)."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"identity file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"identity file {path} is unreadable: {exc}") from None
    if not isinstance(doc, dict) or doc.get("type") != "drkit-identity":
        raise UsageError(f"{path} is not a drkit identity file")
    if "private" in doc:
        raw = _unb64(doc["private"])
    else:
        p = doc["protected"]
        try:
            params = keyslots.slot_params(p)
        except ValueError as exc:
            raise UsageError(f"identity file {path}: {exc}") from None
        key = keyslots._derive(passphrase(), _unb64(p["salt"]), params)
        try:
            raw = Cipher(key).open(_unb64(p["data"]), _IDENTITY_AAD)
        except DecryptError:
            raise WrongKey(hint="the identity file's passphrase comes from DRKIT_IDENTITY_PASSWORD or a prompt") from None
    return Identity(X25519PrivateKey.from_private_bytes(raw))


def read_recipient(text_or_file: str) -> bytes:
    """A recipient string, or a file holding one (first line); UsageError otherwise."""
    text = text_or_file
    if not text.strip().startswith("drkit-recipient-v1:") and Path(text).is_file():
        text = Path(text).read_text().splitlines()[0] if Path(text).read_text() else ""
    try:
        return decode_recipient(text)
    except ValueError as exc:
        raise UsageError(f"invalid recipient: {exc}", hint="use the string 'drkit key generate-identity' printed") from None


def _slot_aad(doc: dict[str, object]) -> bytes:
    """v1: a constant; v2: also every field of the slot but ``data`` (so none can be altered)."""
    if int(str(doc.get("version", 1))) < 2:
        return _RECIPIENT_SLOT_AAD
    return _RECIPIENT_SLOT_AAD + b"\x00" + canonical_json({k: v for k, v in doc.items() if k != "data"})


def make_recipient_slot(master: MasterKey) -> tuple[str, bytes]:
    """The identity slot: *master* sealed to its recipient (format v2: its fields authenticated)."""
    assert master.recipient is not None
    doc: dict[str, object] = {"version": 2 if master.min_version >= 2 else 1, "kdf": "x25519",
                              "recipient": encode_recipient(master.recipient),
                              "created": datetime.now(timezone.utc).isoformat(), "label": "identity"}
    doc["data"] = _b64(RecipientCipher(master.recipient).seal(json.dumps(master.to_json()).encode(), _slot_aad(doc)))
    return secrets.token_hex(32), json.dumps(doc, indent=1).encode()


def open_recipient_slot(doc: dict[str, object], identity: Identity) -> MasterKey | None:
    try:
        if decode_recipient(str(doc["recipient"])) != identity.public:
            return None
        plain = RecipientCipher(identity.public, identity.private).open(_unb64(str(doc["data"])), _slot_aad(doc))
    except (DecryptError, ValueError, KeyError):
        return None
    return MasterKey.from_json(json.loads(plain))
