"""Snapshot manifests: what one backup of one source contains.

A manifest is zstd-compressed JSON sealed with associated data kind ``snapshot`` and
the snapshot id, stored at ``snapshots/<id>`` (id: 32 random bytes, hex). It holds the
source name and type, the run id shared by all snapshots of one ``drkit backup``,
tags, statistics, source metadata and the ordered ids of the tree blobs (see tree.py).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import zstandard

from drkit.repository.blob import bounded_decompress

MAX_MANIFEST_SIZE = 64 * 1024 * 1024
"""A manifest's JSON is never larger (the biggest real ones are a few MiB)."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """ISO 8601 -> an aware datetime (a time without a zone is taken as UTC)."""
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)


@dataclass
class Snapshot:
    id: str
    time: str
    source: str
    source_type: str
    run: str
    host: str
    tree: list[str]
    tags: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    parent: str | None = None
    stats: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    run_meta: dict[str, Any] = field(default_factory=dict)
    program_version: str = ""

    @property
    def short_id(self) -> str:
        return self.id[:8]

    @property
    def datetime(self) -> datetime:
        return parse_time(self.time)

    @property
    def status(self) -> str:
        """'empty' (no entries: nothing was read), 'partial' (items were skipped),
        'repaired' (rewritten by 'drkit repair' without lost files) or 'complete'."""
        if self.stats.get("entries", 1) == 0:
            return "empty"
        if self.meta.get("repaired"):
            return "repaired"
        if self.stats.get("errors", 0) > 0:
            return "partial"
        return "complete"

    def rewritten(self, *, tree: list[str], stats: dict[str, int], meta: dict[str, Any],
                  parent: str | None) -> "Snapshot":
        """A new snapshot (fresh id) of the same moment, source, run and host, with
        another *tree*, *stats*, *meta* and *parent* (repair and copy write these); the
        lists and dicts kept are copies."""
        return replace(self, id=secrets.token_hex(32), tree=tree, stats=stats, meta=meta, parent=parent,
                       tags=list(self.tags), paths=list(self.paths), run_meta=dict(self.run_meta))

    def encode(self) -> bytes:
        doc = {"version": 1, **asdict(self)}
        return zstandard.ZstdCompressor(level=3).compress(json.dumps(doc, separators=(",", ":")).encode())

    @classmethod
    def decode(cls, data: bytes) -> "Snapshot":
        """Parse a manifest's plaintext (at most :data:`MAX_MANIFEST_SIZE` once
        decompressed); raises ValueError."""
        try:
            doc = json.loads(bounded_decompress(data, MAX_MANIFEST_SIZE))
            doc.pop("version", None)
            known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
            return cls(**known)
        except (TypeError, ValueError, zstandard.ZstdError) as exc:
            raise ValueError(f"malformed snapshot manifest: {exc}") from None

    def summary(self) -> dict[str, Any]:
        """The fields shown by ``drkit snapshots --json``."""
        return {
            "id": self.id,
            "short_id": self.short_id,
            "time": self.time,
            "source": self.source,
            "source_type": self.source_type,
            "run": self.run,
            "host": self.host,
            "tags": self.tags,
            "paths": self.paths,
            "stats": self.stats,
            "status": self.status,
        }


def latest_usable(snaps: list[Snapshot]) -> tuple[Snapshot | None, list[Snapshot]]:
    """The newest snapshot of *snaps* (oldest first) that is not empty, and the empty
    ones newer than it that were passed over (callers say so: never silently)."""
    skipped: list[Snapshot] = []
    for snap in reversed(snaps):
        if snap.status != "empty":
            return snap, skipped
        skipped.append(snap)
    return None, skipped
