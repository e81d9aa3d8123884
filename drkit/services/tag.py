"""Tags: change a snapshot's tags by rewriting its manifest (restic's ``tag``).

A manifest is sealed with its id as associated data, so a changed manifest is a new
snapshot: it is stored under a new id first, then the old manifest is deleted (a crash
in between leaves both, never neither). The new manifest records the first id it had
in ``meta.original``.
"""

from __future__ import annotations

import secrets
from dataclasses import replace

from drkit.repository.repo import Repository
from drkit.repository.snapshot import Snapshot


def new_tags(current: list[str], *, add: list[str], remove: list[str], set_: list[str] | None) -> list[str]:
    """The tag list after --set, then --add, then --remove (order kept, no duplicates)."""
    tags = list(set_) if set_ is not None else list(current)
    tags += [t for t in add if t not in tags]
    return [t for t in dict.fromkeys(tags) if t not in remove]


def retag(repo: Repository, snap: Snapshot, tags: list[str]) -> Snapshot:
    """Store *snap* with *tags* under a new id and delete the old manifest; returns
    the new snapshot (or *snap* itself when the tags are unchanged). Call under a lock."""
    if tags == snap.tags:
        return snap
    meta = dict(snap.meta)
    meta.setdefault("original", snap.id)
    new = replace(snap, id=secrets.token_hex(32), tags=tags, meta=meta)
    repo.save_snapshot(new)
    repo.delete_snapshot(snap.id)
    return new
