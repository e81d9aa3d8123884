"""Retention: which snapshots a keep-policy keeps (restic's semantics), per source.

Snapshots are grouped by source (and host). Within a group, newest first:

- ``keep_last N``: the N newest;
- ``keep_hourly/daily/weekly/monthly/yearly N``: the newest snapshot of each of the
  N most recent hours/days/ISO weeks/months/years that have a snapshot;
- ``keep_within D``: everything within D (e.g. ``7d``, ``2w3d``, ``12h``) of the
  group's newest snapshot;
- ``keep_tags``: every snapshot carrying one of these tags.

A snapshot is kept if any rule keeps it. The newest snapshot of a group is always
kept by any non-empty policy, so a policy never empties a group.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable

from drkit.repository.snapshot import Snapshot

_DURATION = re.compile(r"(\d+)([yMwdhm])")
_UNITS = {"y": 365 * 24 * 60, "M": 30 * 24 * 60, "w": 7 * 24 * 60, "d": 24 * 60, "h": 60, "m": 1}


def parse_duration(text: str) -> timedelta:
    """'7d', '2w3d', '1y6M', '12h', '30m' -> timedelta; ValueError otherwise."""
    text = text.strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {text!r} (use e.g. 7d, 2w3d, 12h, 1y6M)")
    return timedelta(minutes=sum(int(n) * _UNITS[u] for n, u in parts))


@dataclass
class Policy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: timedelta | None = None
    tags: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.last or self.hourly or self.daily or self.weekly or self.monthly or self.yearly or self.within or self.tags)

    def count_based(self) -> bool:
        return bool(self.last or self.hourly or self.daily or self.weekly or self.monthly or self.yearly)


_BUCKETS: list[tuple[str, Callable[[datetime], tuple[int, ...]]]] = [
    ("hourly", lambda t: (t.year, t.month, t.day, t.hour)),
    ("daily", lambda t: (t.year, t.month, t.day)),
    ("weekly", lambda t: tuple(t.isocalendar()[:2])),
    ("monthly", lambda t: (t.year, t.month)),
    ("yearly", lambda t: (t.year,)),
]


@dataclass
class Decision:
    snapshot: Snapshot
    keep: bool
    reasons: list[str]


def apply_policy(snapshots: list[Snapshot], policy: Policy) -> list[Decision]:
    """Decide for every snapshot; grouped by (source, host). Pure function."""
    groups: dict[tuple[str, str], list[Snapshot]] = defaultdict(list)
    for s in snapshots:
        groups[(s.source, s.host)].append(s)
    out: list[Decision] = []
    for group in groups.values():
        group.sort(key=lambda s: (s.time, s.id), reverse=True)
        reasons: dict[str, list[str]] = {s.id: [] for s in group}
        for s in group[: policy.last]:
            reasons[s.id].append("last")
        for name, key in _BUCKETS:
            limit = getattr(policy, name)
            if not limit:
                continue
            seen: set[tuple[int, ...]] = set()
            for s in group:
                bucket = key(s.datetime)
                if bucket in seen:
                    continue
                if len(seen) >= limit:
                    break
                seen.add(bucket)
                reasons[s.id].append(name)
        if policy.within is not None and group:
            newest = group[0].datetime
            for s in group:
                if newest - s.datetime <= policy.within:
                    reasons[s.id].append("within")
        if policy.tags:
            for s in group:
                if set(s.tags) & set(policy.tags):
                    reasons[s.id].append("tag")
        for s in group:
            out.append(Decision(s, bool(reasons[s.id]), reasons[s.id]))
    out.sort(key=lambda d: (d.snapshot.source, d.snapshot.time))
    return out
