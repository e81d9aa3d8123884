"""Object names of a repository: the only place that formats storage keys.

::

    config                      plaintext JSON: format version, repository id, chunker and pack parameters
    keys/<64 hex>               key slots (see keys.py)
    data/<2 hex>/<64 hex>       packs, named by the SHA-256 of their bytes
    index/<64 hex>              index files, named by the SHA-256 of their bytes
    snapshots/<64 hex>          snapshot manifests, named by a random id
    locks/<64 hex>              lock files (plaintext JSON)
"""

from __future__ import annotations

import re

CONFIG = "config"
KEYS = "keys/"
DATA = "data/"
INDEX = "index/"
SNAPSHOTS = "snapshots/"
LOCKS = "locks/"

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _check(object_id: str) -> str:
    if not _HEX64.match(object_id):
        raise ValueError(f"invalid object id {object_id!r}")
    return object_id


def key_name(object_id: str) -> str:
    return KEYS + _check(object_id)


def pack_name(object_id: str) -> str:
    return f"{DATA}{_check(object_id)[:2]}/{object_id}"


def index_name(object_id: str) -> str:
    return INDEX + _check(object_id)


def snapshot_name(object_id: str) -> str:
    return SNAPSHOTS + _check(object_id)


def lock_name(object_id: str) -> str:
    return LOCKS + _check(object_id)


def id_of(name: str) -> str | None:
    """The object id at the end of *name*, or None if it is not a well-formed id."""
    tail = name.rsplit("/", 1)[-1]
    return tail if _HEX64.match(tail) else None
