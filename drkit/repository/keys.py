"""Passphrase key slots.

The master key is random; each passphrase wraps it in its own key slot
(``keys/<id>``), so passphrases can be added, listed, removed and rotated without
re-encrypting any data. A slot is a JSON document::

    {"version": 1, "kdf": "scrypt", "n": 65536, "r": 8, "p": 2,
     "salt": b64, "data": b64(sealed master key), "created": iso, "host": ..., "user": ..., "label": ...}

The wrapping key is ``scrypt(passphrase, salt, n, r, p, 32 bytes)``; ``data`` is the
master key JSON sealed with AES-256-GCM under it (associated data: kind ``key``; in a
version-2 slot, with the canonical JSON of every other field of the slot as the name,
so a changed cost, salt, label or date makes the slot fail to open). The KDF cost is
bounded (:func:`check_kdf`) before anything is derived.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from drkit.repository.crypto import KIND_KEY, Cipher, DecryptError, MasterKey, _b64, _unb64, aad, canonical_json


@dataclass(frozen=True)
class KdfParams:
    n: int
    r: int
    p: int


    @property
    def cost(self) -> int:
        """Work, in units of one scrypt block mix (time grows with it)."""
        return self.n * self.r * self.p

    @property
    def memory(self) -> int:
        """Bytes of memory scrypt needs (128 * r * n)."""
        return 128 * self.r * self.n


# 64 MiB of memory and ~0.3 s per try on a small machine.
DEFAULT_KDF = KdfParams(n=2**16, r=8, p=2)
# Tests only (see tests/conftest.py): fast, never for real repositories.
TEST_KDF = KdfParams(n=2**10, r=8, p=1)
# What a key slot (or an identity file) may ask for, read from storage: 16 times the
# default's memory (1 GiB) and work (about 5 s). A slot beyond is never tried.
MAX_KDF_MEMORY = 16 * DEFAULT_KDF.memory
MAX_KDF_COST = 16 * DEFAULT_KDF.cost


def slot_params(doc: dict[str, Any]) -> KdfParams:
    """The bounded KDF parameters of a scrypt slot; ValueError if malformed or beyond the bounds."""
    try:
        params = KdfParams(int(doc["n"]), int(doc["r"]), int(doc["p"]))
    except (KeyError, TypeError, ValueError):
        raise ValueError("malformed scrypt parameters") from None
    check_kdf(params)
    return params


SLOT_VERSION = 2
"""Key slots written now: their fields are authenticated (see the module docstring)."""


def check_kdf(params: KdfParams) -> None:
    """Raise ValueError unless *params* are a sane scrypt cost (n a power of two in
    2^10..2^20, r 1..32, p 1..16): a slot read from storage must not make drkit spend
    gigabytes or hours."""
    if not (2**10 <= params.n <= 2**20 and params.n & (params.n - 1) == 0):
        raise ValueError(f"scrypt n={params.n} is out of bounds")
    if not (1 <= params.r <= 32 and 1 <= params.p <= 16):
        raise ValueError(f"scrypt r={params.r}, p={params.p} are out of bounds")
    if params.memory > MAX_KDF_MEMORY or params.cost > MAX_KDF_COST:
        raise ValueError(f"scrypt n={params.n} r={params.r} p={params.p} exceed drkit's bound "
                         f"({MAX_KDF_MEMORY >> 20} MiB of memory, {MAX_KDF_COST // DEFAULT_KDF.cost}x the default work)")


def slot_aad(doc: dict[str, Any]) -> bytes:
    """The associated data of a slot's ``data``: v1 empty name; v2 every other field."""
    if int(doc.get("version", 1)) < 2:
        return aad(KIND_KEY)
    return aad(KIND_KEY, canonical_json({k: v for k, v in doc.items() if k != "data"}))


def _derive(passphrase: str, salt: bytes, params: KdfParams) -> bytes:
    check_kdf(params)
    kdf = Scrypt(salt=salt, length=32, n=params.n, r=params.r, p=params.p)
    return kdf.derive(passphrase.encode("utf-8"))


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return str(os.getuid())


def make_slot(
    master: MasterKey, passphrase: str, *, label: str = "", params: KdfParams | None = None, version: int = SLOT_VERSION
) -> tuple[str, bytes]:
    """Wrap *master* under *passphrase*; return (slot id, slot bytes). *version* 1
    writes the old, unauthenticated slot (only for tests of version-1 repositories)."""
    params = params or DEFAULT_KDF
    salt = os.urandom(32)
    wrapping = Cipher(_derive(passphrase, salt, params))
    doc: dict[str, Any] = {
        "version": version,
        "kdf": "scrypt",
        "n": params.n,
        "r": params.r,
        "p": params.p,
        "salt": _b64(salt),
        "created": datetime.now(timezone.utc).isoformat(),
        "host": socket.gethostname(),
        "user": _user(),
        "label": label,
    }
    doc["data"] = _b64(wrapping.seal(json.dumps(master.to_json()).encode(), slot_aad(doc)))
    return secrets.token_hex(32), json.dumps(doc, indent=1).encode()


def parse_slot(raw: bytes) -> dict[str, Any]:
    doc = json.loads(raw)
    if not isinstance(doc, dict) or doc.get("kdf") not in ("scrypt", "x25519"):
        raise ValueError("not a drkit key slot")
    return doc


def open_slot(doc: dict[str, Any], passphrase: str) -> MasterKey | None:
    """Return the master key if *passphrase* opens this slot, else None. Raises
    ValueError (before any work) if its KDF parameters exceed the bounds."""
    if doc.get("kdf") != "scrypt":
        return None
    params = slot_params(doc)  # ValueError beyond the bounds: never derived
    wrapping = Cipher(_derive(passphrase, _unb64(doc["salt"]), params))
    try:
        plain = wrapping.open(_unb64(doc["data"]), slot_aad(doc))
    except DecryptError:
        return None
    return MasterKey.from_json(json.loads(plain))
